"""llama-cpp-python's OpenAI server with RPC workers' devices registered first: its own entry point
(`python -m llama_cpp.server`) has no --rpc, but a process that registers the workers before the server loads
its model offloads to them as llama-server --rpc does. A place where models run, so it imports llama_cpp.

    python -m qwenbench.rpcserve --rpc HOST:PORT[,HOST:PORT...] --config_file FILE
"""

from __future__ import annotations

import runpy
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--rpc":
        raise SystemExit("usage: python -m qwenbench.rpcserve --rpc HOST:PORT[,...] SERVER-ARGS...")
    import llama_cpp

    from .runner import register_rpc_servers

    register_rpc_servers(llama_cpp, tuple(argv[1].split(",")))
    sys.argv = ["llama_cpp.server", *argv[2:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
