"""`qwenbench worker`: this machine's devices served to llama.cpp RPC clients, from a child process.

The parent starts `python -m qwenbench.rpcworker`, which loads this install's llama.cpp, says which devices it
serves and blocks in ggml_backend_rpc_start_server (tools/rpc's server, the same llama.cpp build as every
client of this install). The parent waits until the endpoint answers the protocol's HELLO, reports what it
serves, and stops the child when it is stopped itself (a child never outlives us: lifetime.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .lifetime import die_with_parent, guarded_argv
from .rpc import Endpoint, EndpointProbe, RpcError, probe_endpoint
from .serve import check_port

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WorkerInfo:
    """A worker that answers: what it serves and as which build."""

    endpoint: Endpoint
    probe: EndpointProbe
    devices: tuple[dict[str, Any], ...]  # name, description, free_bytes, total_bytes of each device served
    llama_cpp_commit: str
    llama_cpp_python_version: str
    n_threads: int
    pid: int


class Worker:
    """A running RPC worker child: start(), then wait() or stop()."""

    def __init__(self, endpoint: Endpoint, n_threads: int, log: IO[bytes], cache_dir: Path | None = None,
                 device_names: tuple[str, ...] = ()) -> None:
        self.endpoint, self.n_threads, self.log = endpoint, n_threads, log
        self.cache_dir, self.device_names = cache_dir, device_names
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> WorkerInfo:
        check_port(self.endpoint.host, self.endpoint.port)  # else the probe below could reach whoever holds it
        argv = [sys.executable, "-m", "qwenbench.rpcworker", "--endpoint", self.endpoint.address,
                "--threads", str(self.n_threads)]
        if self.cache_dir is not None:
            argv += ["--cache-dir", str(self.cache_dir)]
        for name in self.device_names:
            argv += ["--device", name]
        self.process = subprocess.Popen(guarded_argv(argv), stdout=subprocess.PIPE, stderr=self.log,
                                        stdin=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        event = json.loads(self.process.stdout.readline() or '{"event": "error", "message": "it exited"}')
        if event["event"] != "serving":
            self.stop()
            raise RpcError(f"the RPC worker did not start: {event.get('message', event)}",
                           hint="see the worker's log")
        probe = self._wait_until_answering()
        return WorkerInfo(self.endpoint, probe, tuple(event["devices"]), event["llama_cpp_commit"],
                          event["llama_cpp_python_version"], self.n_threads, self.process.pid)

    def _wait_until_answering(self) -> EndpointProbe:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RpcError(f"the RPC worker could not listen on {self.endpoint.address}",
                               hint="is the port in use (another worker?) or the address not this machine's?")
            try:
                return probe_endpoint(self.endpoint, timeout_s=2.0, upload_bytes=1 << 20)
            except RpcError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m qwenbench.rpcworker")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--cache-dir")
    parser.add_argument("--device", action="append", default=[])
    args = parser.parse_args()
    die_with_parent(os.getppid())
    # the protocol line goes to the parent; what llama.cpp prints (its server's banner too) to the log
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from . import runner

    llama_cpp = runner.load_llama_cpp()
    try:
        names = runner.serving_devices(llama_cpp, tuple(args.device))
    except runner.BenchmarkAbort as error:
        protocol.write(json.dumps({"event": "error", "message": str(error)}) + "\n")
        return 3
    served = [d for d in runner.devices(llama_cpp) if d["name"] in names]
    version = getattr(llama_cpp, "__version__", "unknown")
    protocol.write(json.dumps({"event": "serving", "devices": served, "llama_cpp_python_version": version,
                               "llama_cpp_commit": runner.KNOWN_LLAMA_CPP_COMMITS.get(version, "unknown")}) + "\n")
    protocol.flush()
    if args.cache_dir:
        Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    try:
        runner.serve_rpc(llama_cpp, args.endpoint, args.threads, args.cache_dir, tuple(names))
    except runner.BenchmarkAbort as error:
        print(f"qwenbench worker: {error}", file=sys.stderr)
    return 3  # the server returns only when it could not listen or accept


if __name__ == "__main__":
    sys.exit(main())
