"""A network link between two machines, emulated on loopback: a TCP proxy that delays every byte by a one-way
latency and paces it at a line rate, both ways. For benchmarks of llama.cpp's RPC over links slower than loopback
on a machine where the kernel's netem is not there (`tc qdisc ... netem`: "Specified qdisc kind is unknown").

    with LinkProxy(("127.0.0.1", 50052), one_way_ms=0.5, mbit_s=1000) as proxy:
        ...  # connect to 127.0.0.1:proxy.port

Bytes leave in the order they came, each chunk at max(its arrival, the end of the previous chunk's
serialisation) plus its own serialisation (size / rate), and arrive one_way_ms later: a queue on a wire.
The proxy's own Python overhead (tens of microseconds per chunk) adds to the latency; what qwenbench's endpoint
probe measures through it includes that, which is what a prediction should rest on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

CHUNK = 64 << 10


class LinkProxy:
    def __init__(self, target: tuple[str, int], one_way_ms: float, mbit_s: float, listen_port: int = 0) -> None:
        self.target, self.delay_s, self.bytes_per_s = target, one_way_ms / 1e3, mbit_s * 1e6 / 8
        self.port = listen_port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LinkProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the link proxy did not start")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._connect, "127.0.0.1", self.port))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _connect(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        for writer in (client_writer, server_writer):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(6, 1, 1)  # TCP_NODELAY, as llama.cpp's RPC sets it: the proxy must not batch
        await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        wire_free_at = 0.0

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    writer.close()
                    return
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while chunk := await reader.read(CHUNK):
                now = time.perf_counter()
                wire_free_at = max(now, wire_free_at) + len(chunk) / self.bytes_per_s
                queue.put_nowait((wire_free_at + self.delay_s, chunk))
        except ConnectionError:
            pass
        queue.put_nowait((0.0, b""))
        await delivering
