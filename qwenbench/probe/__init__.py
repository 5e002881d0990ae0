"""`qwenbench probe`: what this machine has for running llama.cpp.

One small reader per source (NVML, nvidia-smi, sysfs DRM, Apple sysctl, /proc/cpuinfo,
llama-cpp-python's libraries), each tolerant of missing or odd data: an unreadable source becomes
a note, never a crash.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil

from ..paths import cache_dir
from .apple import read_apple
from .backends import missing_backend_hint, read_backends
from .bandwidth import cached_bandwidth, measure_ram_bandwidth_gbps, store_bandwidth
from .cpu import proc_root, read_cpu
from .model import CpuInfo, GpuInfo, Hardware, RamInfo
from .nvidia import read_nvidia
from .sysfs_drm import read_drm_gpus
from .windows import read_windows

__all__ = ["CpuInfo", "GpuInfo", "Hardware", "RamInfo", "probe_hardware"]


def ram_from_meminfo(text: str) -> RamInfo | None:
    """RAM and swap from /proc/meminfo text (kB figures); None without MemTotal."""
    figures = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            figures[key.strip()] = int(parts[0]) * 1024
    if "MemTotal" not in figures:
        return None
    total = figures["MemTotal"]
    # kernels before 3.14 have no MemAvailable: free and page cache are what could be had
    available = figures.get("MemAvailable", figures.get("MemFree", 0) + figures.get("Cached", 0))
    return RamInfo(total, min(available, total), figures.get("SwapTotal", 0), figures.get("SwapFree", 0))


def read_ram() -> RamInfo:
    """This machine's RAM; from QWENBENCH_PROC_ROOT's meminfo where that root is set, so a recorded machine
    replays whole (psutil reads the real /proc whatever the root)."""
    root = proc_root()
    if root != Path("/proc"):
        try:
            recorded = ram_from_meminfo((root / "meminfo").read_text(encoding="utf-8", errors="replace"))
        except OSError:
            recorded = None
        if recorded is not None:
            return recorded
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    return RamInfo(memory.total, memory.available, swap.total, swap.free)


def probe_hardware(*, bandwidth: bool = True, refresh_bandwidth: bool = False, machine_key: str = "") -> Hardware:
    """Read everything; measure RAM bandwidth once per machine (cached) unless bandwidth=False."""
    notes: list[str] = []
    cpu = read_cpu()
    ram = read_ram()
    gpus: list[GpuInfo] = []
    for reader_gpus, reader_notes in (read_nvidia(), read_drm_gpus(ram.total_bytes, ram.available_bytes),
                                      read_apple(), read_windows(ram.total_bytes, ram.available_bytes)):
        gpus.extend(reader_gpus)
        notes.extend(reader_notes)
    backends, backend_notes = read_backends()
    notes.extend(backend_notes)
    notes.extend(missing_backend_hint({g.vendor for g in gpus}, backends))
    figures: dict[str, float] = {}
    if bandwidth:
        cached = None if refresh_bandwidth else cached_bandwidth(machine_key)
        if cached:
            figures = cached
        else:
            figures = {"ram": round(measure_ram_bandwidth_gbps(cpu.physical_cores), 1)}
            if not store_bandwidth(machine_key, figures):
                notes.append(f"bandwidth figure not cached: {cache_dir()} is not writable")
    disk = cache_dir()
    while not disk.exists() and disk != disk.parent:
        disk = disk.parent
    return Hardware(cpu=cpu, ram=ram, gpus=tuple(gpus), backends=backends, bandwidth_gbps=figures,
                    disk_free_bytes=shutil.disk_usage(disk).free, disk_path=str(cache_dir()), notes=tuple(notes))
