"""`worker`: this machine's devices for other machines, through llama.cpp's RPC backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from ..errors import QwenbenchError
from ..runspec import MAX_THREADS

if TYPE_CHECKING:
    pass
from .common import _bytes, _server_log_path, app, err, out


@app.command("worker")
def worker_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback unless you say so)."),
    port: int = typer.Option(50052, "--port", min=1, max=65535, help="TCP port."),
    threads: int | None = typer.Option(None, "-t", "--threads", min=1, max=MAX_THREADS,
                                       help="CPU threads for a CPU device [physical cores]."),
    cache: bool = typer.Option(False, "--cache", help="Keep uploaded tensors in a local cache, so that a model "
                                                      "sent again loads from disk (llama.cpp rpc-server -c)."),
    device: list[str] = typer.Option([], "--device", "-d", help="A device to serve, e.g. CUDA0 (repeatable) "
                                                                "[every GPU, else the CPU]."),
) -> None:
    """Serve this machine's devices to qwenbench (or llama.cpp) on other machines, through llama.cpp's RPC
    backend: their `--rpc HOST:PORT` offloads layers here. Prints the endpoint, the RPC protocol version, the
    llama.cpp build and each device's free memory; Ctrl-C or SIGTERM stops it. RPC has no authentication and no
    encryption: serve only on networks you trust."""
    from ..machine import describe_machine
    from ..paths import cache_dir
    from ..rpc import Endpoint
    from ..rpcworker import Worker
    from ..serve import LOOPBACK

    if host not in LOOPBACK:
        err.print(f"[bold red]warning:[/bold red] serving on {escape(host)}: anyone who can reach this port can run "
                  "code on these devices and read what is in them (llama.cpp RPC has no authentication or "
                  "encryption); only on a network you trust", highlight=False)
    n_threads = threads or describe_machine().n_cpu_physical
    endpoint = Endpoint(host, port)
    log_path = _server_log_path(f"worker-{port}.log")
    with log_path.open("wb") as log, Worker(endpoint, n_threads, log, cache_dir() / "rpc" if cache else None,
                                             tuple(device)) as worker:
        with err.status(escape(f"starting the RPC worker at {endpoint.address}")):
            info = worker.start()
        version = ".".join(map(str, info.probe.version))
        out.print(f"RPC worker at {endpoint.address}: protocol {version}, llama.cpp {info.llama_cpp_commit} "
                  f"(llama-cpp-python {info.llama_cpp_python_version}), {n_threads} threads", highlight=False,
                  markup=False)
        for served in info.devices:
            out.print(f"  {served['name']}: {served['description']}, {_bytes(served['free_bytes'])} free of "
                      f"{_bytes(served['total_bytes'])}", highlight=False, markup=False)
        out.print(f"use it with --rpc {endpoint.address}; Ctrl-C stops it (log: {log_path})", highlight=False,
                  markup=False)
        try:
            code = worker.wait()
        except KeyboardInterrupt:
            err.print("stopping the RPC worker")
            raise
        raise QwenbenchError(f"the RPC worker stopped on its own (code {code})", hint=f"its log: {log_path}")


