"""llama.cpp RPC endpoints: what a user writes (`HOST:PORT[@12GiB],...`) and a check of each before llama.cpp sees it.

llama.cpp's RPC client aborts the whole process when a server refuses the connection or speaks another
protocol version (ggml-rpc.cpp: GGML_ABORT in rpc_dispatcher::start), so every endpoint is probed here first,
over the same wire protocol, with plain sockets: the HELLO handshake (protocol version), the device count
and each device's free and total memory, the round-trip time of a small command, and the throughput of one
tensor upload into a scratch buffer on the worker (freed after). Stdlib only; no llama.cpp needed.
"""

from __future__ import annotations

import re
import socket
import statistics
import struct
import time
from dataclasses import dataclass, replace

from .errors import QwenbenchError, UsageError
from .probe.model import GpuInfo, Hardware
from .serve import LOOPBACK

# ggml-rpc.h of the llama.cpp this package is built with: the client accepts a server of the same major
# version and a minor version no newer than its own
RPC_PROTO_VERSION = (7, 0, 0)
DEFAULT_PORT = 50052
_CONN_CAPS_SIZE = 24
_CMD_ALLOC_BUFFER, _CMD_BUFFER_GET_BASE, _CMD_FREE_BUFFER = 0, 3, 4
_CMD_SET_TENSOR, _CMD_GET_DEVICE_MEMORY, _CMD_HELLO, _CMD_DEVICE_COUNT = 6, 11, 14, 15
_GGML_TYPE_F32 = 0
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class RpcError(QwenbenchError):
    """An RPC endpoint that cannot be used: the message names it."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    memory_cap_bytes: int | None = None  # the most qwenbench may place there (a machine also in use)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class RpcDevice:
    index: int
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class EndpointProbe:
    """What one worker said and how fast the link to it is."""

    endpoint: Endpoint
    version: tuple[int, int, int]
    devices: tuple[RpcDevice, ...]
    rtt_ms: float  # median round trip of a tiny command
    upload_mbps: float  # MB/s of one tensor upload, the way weights travel at load

    @property
    def link(self) -> tuple[str, float, float]:
        """(HOST:PORT, round trip ms, upload MB/s): what a row records of the link."""
        return self.endpoint.address, self.rtt_ms, self.upload_mbps

    @property
    def free_bytes(self) -> int:
        free = sum(d.free_bytes for d in self.devices)
        cap = self.endpoint.memory_cap_bytes
        return min(free, cap) if cap is not None else free


def parse_size(text: str) -> int:
    """'12GiB', '12G', '512MiB', '4096' (bytes) -> bytes. Binary units: what free memory is reported in."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"not a size: {text!r}", hint="write it as 12GiB, 512MiB or a number of bytes")
    number, unit = float(match.group(1)), (match.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(number * _UNITS[unit])


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """`HOST:PORT[@SIZE],...` -> endpoints, in the order llama.cpp will number their devices (RPC0, RPC1...)."""
    endpoints = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        address, _, cap = item.partition("@")
        host, sep, port_text = address.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"not an RPC endpoint: {item!r}",
                             hint=f"write HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}, optionally @12GiB to cap "
                                  "what is placed there; several separated by commas")
        endpoints.append(Endpoint(host, int(port_text), parse_size(cap) if cap else None))
    if not endpoints:
        raise UsageError("--rpc names no endpoint", hint=f"e.g. --rpc 127.0.0.1:{DEFAULT_PORT}")
    if len({e.address for e in endpoints}) != len(endpoints):
        raise UsageError(f"an RPC endpoint is named twice in {text!r}", hint="name each worker once")
    return tuple(endpoints)


class _Connection:
    """One client session with an RPC server, speaking ggml-rpc's framing: a command byte, a u64 size, the
    payload; replies are a u64 size and the payload."""

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        try:
            self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
        except ConnectionRefusedError as error:
            raise RpcError(f"RPC worker {endpoint.address}: connection refused",
                           hint="start one there with `qwenbench worker --host HOST --port PORT`") from error
        except TimeoutError as error:
            raise RpcError(f"RPC worker {endpoint.address}: no answer within {timeout_s:.0f} s",
                           hint="check the address, the port and any firewall between the machines") from error
        except OSError as error:
            raise RpcError(f"RPC worker {endpoint.address}: cannot connect ({error.strerror or error})",
                           hint="check the host name and that the machine is reachable") from error
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def send(self, command: int, payload: bytes = b"") -> None:
        self.sock.sendall(struct.pack("<BQ", command, len(payload)) + payload)

    def receive(self, size: int) -> bytes:
        header = self._read(8)
        (reply_size,) = struct.unpack("<Q", header)
        if reply_size != size:
            raise RpcError(f"RPC worker {self.endpoint.address}: a reply of {reply_size} bytes where {size} "
                           "were expected", hint="is it a llama.cpp RPC server of the same build?")
        return self._read(size)

    def call(self, command: int, payload: bytes, reply_size: int) -> bytes:
        self.send(command, payload)
        return self.receive(reply_size)

    def _read(self, size: int) -> bytes:
        chunks, left = [], size
        try:
            while left:
                chunk = self.sock.recv(left)
                if not chunk:
                    raise RpcError(f"RPC worker {self.endpoint.address} closed the connection",
                                   hint="its log says why: a protocol it does not speak, or it is serving "
                                        "another client (a worker serves one at a time)")
                chunks.append(chunk)
                left -= len(chunk)
        except TimeoutError as error:
            raise RpcError(f"RPC worker {self.endpoint.address}: no reply",
                           hint="a worker serves one client at a time: is another run using it?") from error
        return b"".join(chunks)


def _tensor_header(buffer: int, data: int, n_bytes: int) -> bytes:
    """A serialized rpc_tensor (ggml-rpc.cpp, packed): an F32 vector of n_bytes at data in buffer."""
    n = n_bytes // 4
    ne = (n, 1, 1, 1)
    nb = (4, n_bytes, n_bytes, n_bytes)
    return (struct.pack("<QIQ", 0, _GGML_TYPE_F32, buffer) + struct.pack("<4I", *ne) + struct.pack("<4I", *nb)
            + struct.pack("<I", 0) + bytes(64) + struct.pack("<i", 0) + bytes(8 * 10)
            + struct.pack("<QQQ", 0, 0, data) + bytes(64) + struct.pack("<i", 0))


def probe_endpoint(endpoint: Endpoint, timeout_s: float = 5.0, upload_bytes: int = 8 << 20,
                   round_trips: int = 5) -> EndpointProbe:
    """Connect, check the protocol version, read each device's memory, time round trips and one upload.
    Raises RpcError naming the endpoint for each way this can fail."""
    connection = _Connection(endpoint, timeout_s)
    try:
        version = _hello(connection)
        (count,) = struct.unpack("<I", connection.call(_CMD_DEVICE_COUNT, b"", 4))
        devices = []
        for index in range(count):
            free, total = struct.unpack("<QQ", connection.call(_CMD_GET_DEVICE_MEMORY, struct.pack("<I", index), 16))
            devices.append(RpcDevice(index, free, total))
        if not devices:
            raise RpcError(f"RPC worker {endpoint.address} serves no device", hint="see the worker's log")
        trips = []
        for _ in range(round_trips):
            start = time.perf_counter()
            connection.call(_CMD_GET_DEVICE_MEMORY, struct.pack("<I", 0), 16)
            trips.append(time.perf_counter() - start)
        rtt = statistics.median(trips)
        buffer, size = struct.unpack("<QQ", connection.call(_CMD_ALLOC_BUFFER, struct.pack("<IQ", 0, upload_bytes), 16))
        if not buffer or size < upload_bytes:
            raise RpcError(f"RPC worker {endpoint.address} could not allocate {upload_bytes >> 20} MiB",
                           hint="it is out of memory")
        try:
            (base,) = struct.unpack("<Q", connection.call(_CMD_BUFFER_GET_BASE, struct.pack("<Q", buffer), 8))
            payload = _tensor_header(buffer, base, upload_bytes) + bytes(1) + struct.pack("<Q", 0) + bytes(upload_bytes)
            start = time.perf_counter()
            connection.send(_CMD_SET_TENSOR, payload)
            # SET_TENSOR has no reply: the next command's reply comes once the worker has stored the data
            connection.call(_CMD_GET_DEVICE_MEMORY, struct.pack("<I", 0), 16)
            upload_s = max(time.perf_counter() - start - rtt, 1e-6)
        finally:
            connection.send(_CMD_FREE_BUFFER, struct.pack("<Q", buffer))
            connection.call(_CMD_GET_DEVICE_MEMORY, struct.pack("<I", 0), 16)
    finally:
        connection.close()
    return EndpointProbe(endpoint, version, tuple(devices), rtt * 1e3, upload_bytes / upload_s / 1e6)


def offload_devices(probes: list[EndpointProbe]) -> tuple[GpuInfo, ...]:
    """Each worker's devices as offload devices for the planner, in llama.cpp's order. A worker
    on loopback holds its buffers in this machine's RAM, so its devices count as sharing it (as an iGPU does)."""
    found = []
    index = 0
    for probe in probes:
        loopback = probe.endpoint.host in LOOPBACK
        share = len(probe.devices)
        # ggml-rpc names a device by its index on its own worker: RPC0[A], RPC0[B], RPC1[B], ...
        for number, device in enumerate(probe.devices):
            budget = device.free_bytes
            if probe.endpoint.memory_cap_bytes is not None:
                budget = min(budget, probe.endpoint.memory_cap_bytes // share)
            found.append(GpuInfo(vendor="rpc", name=f"RPC{number}[{probe.endpoint.address}]",
                                 kind="integrated" if loopback else "discrete", memory_total_bytes=device.total_bytes,
                                 memory_free_bytes=device.free_bytes, shared_memory_bytes=None, budget_bytes=budget,
                                 source="rpc", index=index, link_rtt_ms=probe.rtt_ms, link_mbps=probe.upload_mbps))
            index += 1
    return tuple(found)


def unanswering(addresses: tuple[str, ...], timeout_s: float = 2.0) -> list[str]:
    """The workers among these that no longer complete a handshake (after a run that failed: which one died)."""
    dead = []
    for address in addresses:
        try:
            _handshake(parse_endpoints(address)[0], timeout_s)
        except RpcError:
            dead.append(address)
    return dead


def _handshake(endpoint: Endpoint, timeout_s: float) -> None:
    connection = _Connection(endpoint, timeout_s)
    try:
        _hello(connection)
    finally:
        connection.close()


def _hello(connection: _Connection) -> tuple[int, int, int]:
    """The protocol's opening HELLO: the server's version, refused unless this llama.cpp's client accepts it."""
    reply = connection.call(_CMD_HELLO, bytes(_CONN_CAPS_SIZE), 4 + _CONN_CAPS_SIZE)
    version = (reply[0], reply[1], reply[2])
    if version[0] != RPC_PROTO_VERSION[0] or version[1] > RPC_PROTO_VERSION[1]:
        raise RpcError(f"RPC worker {connection.endpoint.address} speaks protocol {'.'.join(map(str, version))}, "
                       f"this llama.cpp {'.'.join(map(str, RPC_PROTO_VERSION))}",
                       hint="run the worker from the same qwenbench install (llama.cpp build) as the client")
    return version


def hardware_with_workers(hardware: Hardware, endpoints: tuple[Endpoint, ...]) -> tuple[Hardware, list[EndpointProbe]]:
    """The machine as the planner sees it with these workers: their devices first, as llama.cpp orders them. Each
    endpoint is probed (RpcError names the one that fails); a build without RPC is refused first."""
    if not endpoints:
        return hardware, []
    if "RPC" not in hardware.backends:
        raise UsageError("this llama-cpp-python was built without RPC",
                         hint="reinstall it with `make install` (which builds it with -DGGML_RPC=ON)")
    probes = [probe_endpoint(endpoint) for endpoint in endpoints]
    return replace(hardware, gpus=(*offload_devices(probes), *hardware.gpus)), probes
