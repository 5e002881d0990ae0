"""Start an OpenAI-compatible server for a model with planned settings: llama.cpp's own `llama-server` where
the user has it, else llama-cpp-python's server; and say the exact equivalent `llama-server` command.

llama-cpp-python's server takes its settings as a typed JSON config file (ConfigFileSettings), so nothing
is lost in translating flags; it cannot keep MoE experts in RAM (no tensor overrides), so a plan that
wants that is made again without it, and the caller is told. With RPC workers, llama-server gets --rpc and
llama-cpp-python's server starts through qwenbench.rpcserve, which registers them first; either way the server
logs its buffers, and a worker that got no weights stops the server with its name (never a silent local run).
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import QwenbenchError, UsageError
from .lifetime import guarded_argv
from .llamalog import parse_buffers, workers_without_weights
from .runspec import CACHE_TYPES

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerError(QwenbenchError):
    """The server did not start or stopped answering."""


@dataclass(frozen=True)
class ServerPlan:
    """Every setting the server starts with, pinned: what was planned is what runs."""

    model_path: Path
    alias: str  # the model name clients send
    host: str
    port: int
    n_ctx: int
    n_gpu_layers: int
    n_cpu_moe: int
    n_threads: int
    n_batch: int
    n_ubatch: int
    flash_attn: bool
    type_k: str
    type_v: str
    rpc_servers: tuple[str, ...] = ()  # HOST:PORT of the RPC workers whose devices -ngl offloads to
    tensor_split: tuple[float, ...] = ()  # the offloaded layers' shares across several devices

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def llama_server_argv(self, binary: str = "llama-server") -> list[str]:
        argv = [binary, "-m", str(self.model_path), "--alias", self.alias, "--host", self.host,
                "--port", str(self.port), "-c", str(self.n_ctx), "-ngl", str(self.n_gpu_layers),
                "-t", str(self.n_threads), "-b", str(self.n_batch), "-ub", str(self.n_ubatch),
                "-fa", "on" if self.flash_attn else "off", "-ctk", self.type_k, "-ctv", self.type_v, "--jinja"]
        if self.n_cpu_moe:
            argv[argv.index("-t"):argv.index("-t")] = ["--n-cpu-moe", str(self.n_cpu_moe)]
        if self.rpc_servers:
            argv[argv.index("-t"):argv.index("-t")] = ["--rpc", ",".join(self.rpc_servers)]
        if self.tensor_split:
            argv[argv.index("-t"):argv.index("-t")] = ["-ts", ",".join(f"{share:g}" for share in self.tensor_split)]
        return argv

    def llama_cpp_python_config(self) -> dict[str, object]:
        """llama-cpp-python's ConfigFileSettings: its server settings and one model."""
        # interrupt_requests (on by default) would cut a streaming reply short whenever another request
        # arrives: concurrent users must queue, as they do on llama-server
        return {"host": self.host, "port": self.port, "interrupt_requests": False, "models": [{
            "model": str(self.model_path), "model_alias": self.alias, "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers, "n_threads": self.n_threads, "n_threads_batch": self.n_threads,
            "n_batch": self.n_batch, "n_ubatch": self.n_ubatch, "flash_attn": self.flash_attn,
            "type_k": CACHE_TYPES[self.type_k], "type_v": CACHE_TYPES[self.type_v],
            **({"tensor_split": list(self.tensor_split)} if self.tensor_split else {}),
            # with workers, llama.cpp's load log (its buffers per device) is what shows where the weights went
            "verbose": bool(self.rpc_servers)}]}


def find_llama_server() -> str | None:
    return shutil.which("llama-server")


def check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on, before loading gigabytes of model."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port", hint="use 1024-65535, e.g. --port 8080")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError):
        raise UsageError(f"--host {host!r} is not an address or a name this machine knows",
                         hint="e.g. --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except PermissionError:
            raise UsageError(f"no permission to listen on port {port}", hint="use a port above 1023") from None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"--host {host} is not an address of this machine",
                                 hint="listen on one of its own addresses, or 0.0.0.0 for all") from None
            raise UsageError(f"port {port} on {host} is already in use ({exc.strerror})",
                             hint="choose another with --port, or stop what is using it") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def start_server(plan: ServerPlan, backend: str, log: IO[bytes], config_dir: Path) -> subprocess.Popen[bytes]:
    """Start the server process (not yet ready: see wait_ready)."""
    if backend == "llama-server":
        binary = find_llama_server()
        if binary is None:
            raise UsageError("llama-server is not on PATH", hint="use --backend llama-cpp-python (the default)")
        argv = plan.llama_server_argv(binary)
    else:
        config = config_dir / f"qwenbench-server-{plan.port}.json"
        config.write_text(json.dumps(plan.llama_cpp_python_config(), indent=2))
        entry = ["qwenbench.rpcserve", "--rpc", ",".join(plan.rpc_servers)] if plan.rpc_servers else [
            "llama_cpp.server"]
        argv = [sys.executable, "-m", *entry, "--config_file", str(config)]
    # guarded: a server must not outlive qwenbench, even a qwenbench killed without a chance to stop it
    return subprocess.Popen(guarded_argv(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float, log_path: Path) -> str:
    """Poll /v1/models until the model is loaded; the model id it serves. A process that exits, or a timeout,
    is one clear error with the end of the server's log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"the server exited with code {process.returncode} while starting: "
                              f"{_log_tail(log_path)}", hint=f"its whole log: {log_path}")
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError), \
                urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
            models = json.loads(response.read()).get("data") or [{}]
            return str(models[0].get("id", ""))
        time.sleep(0.2)
    raise ServerError(f"the server did not answer on {url} within {timeout_s:.0f} s", hint=f"its log: {log_path}")


def check_placement(plan: ServerPlan, log_path: Path) -> dict[str, int]:
    """The model bytes llama.cpp put on each device, from the server's load log; a ServerError naming every RPC
    worker the plan offloads to that got none."""
    try:
        buffers = parse_buffers(log_path.read_text(errors="replace"))
    except OSError as exc:
        raise ServerError(f"cannot read the server's log {log_path}: {exc.strerror}") from None
    if plan.rpc_servers and plan.n_gpu_layers != 0:
        missing = workers_without_weights(plan.rpc_servers, buffers)
        if missing:
            raise ServerError(f"RPC worker {', '.join(missing)} got no weights: the server would run without it",
                              hint=f"check the worker and this machine's llama.cpp build; the server's log: {log_path}")
    return dict(buffers.model)


def stop_server(process: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _log_tail(log_path: Path) -> str:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-3:])[:400]
