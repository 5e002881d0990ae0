"""What the hardware probe reports: frozen records that serialize to the documented JSON shape."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CpuInfo:
    model: str
    physical_cores: int
    logical_cores: int
    features: tuple[str, ...]  # ISA extensions llama.cpp's CPU backend uses (AVX2, AVX512, AMX, NEON, ...)
    last_level_cache_bytes: int = 0  # 0: unknown


@dataclass(frozen=True)
class RamInfo:
    total_bytes: int
    available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int


@dataclass(frozen=True)
class GpuInfo:
    vendor: str  # nvidia | amd | intel | apple | unknown
    name: str
    kind: str  # discrete | integrated
    memory_total_bytes: int | None  # dedicated memory (an iGPU's firmware carve-out), None if unknown
    memory_free_bytes: int | None
    shared_memory_bytes: int | None  # system RAM the GPU may map (GTT, unified memory), None if none/unknown
    budget_bytes: int | None  # what a model can really use on this device, None if unknown
    source: str  # nvml | nvidia-smi | sysfs | sysctl | registry
    index: int = 0
    driver_version: str | None = None
    cuda_version: str | None = None
    power_limit_w: float | None = None
    notes: tuple[str, ...] = ()
    # an RPC worker's device: the measured link to its endpoint (round trip ms, MB/s)
    link_rtt_ms: float | None = None
    link_mbps: float | None = None


@dataclass(frozen=True)
class Hardware:
    cpu: CpuInfo
    ram: RamInfo
    gpus: tuple[GpuInfo, ...]
    backends: tuple[str, ...]
    bandwidth_gbps: dict[str, float] = field(default_factory=dict)
    disk_free_bytes: int | None = None
    disk_path: str = ""
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["disk"] = {"path": data.pop("disk_path"), "free_bytes": data.pop("disk_free_bytes")}
        return data
