"""Who ran a benchmark: the machine identity recorded on every result row."""

from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from .probe import Hardware, probe_hardware


@dataclass(frozen=True)
class MachineInfo:
    machine_id: str
    hostname: str
    cpu_model: str
    n_cpu_physical: int
    n_cpu_logical: int
    ram_total_bytes: int
    gpu_names: tuple[str, ...]
    hardware: Hardware


def machine_id() -> str:
    """A stable, anonymous id: a hash of the OS machine id (or the hostname where there is none)."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            raw = Path(candidate).read_text().strip()
        except OSError:
            continue
        if raw:
            return hashlib.sha256(raw.encode()).hexdigest()[:16]
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16]


def safe_hostname() -> str:
    """The hostname, reduced to characters safe in a file name (results/<hostname>.csv)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "machine"


def describe_machine(*, bandwidth: bool = False) -> MachineInfo:
    identity = machine_id()
    hardware = probe_hardware(bandwidth=bandwidth, machine_key=identity)
    return MachineInfo(
        machine_id=identity,
        hostname=safe_hostname(),
        cpu_model=hardware.cpu.model,
        n_cpu_physical=hardware.cpu.physical_cores,
        n_cpu_logical=hardware.cpu.logical_cores,
        ram_total_bytes=hardware.ram.total_bytes,
        gpu_names=tuple(gpu.name for gpu in hardware.gpus),
        hardware=hardware,
    )
