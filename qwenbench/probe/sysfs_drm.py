"""AMD and Intel GPUs on Linux, from /sys/class/drm/card*/device (root injectable for tests).

amdgpu reports VRAM and GTT (system RAM the GPU may map) in bytes. An APU has a small VRAM
carve-out plus GTT, and both draw on the machine's RAM, so its usable budget is one shared pool.
Intel's drivers publish no memory sizes: an Intel iGPU shares system RAM.
"""

from __future__ import annotations

import os
from pathlib import Path

from .model import GpuInfo

AMD, INTEL, NVIDIA = "0x1002", "0x8086", "0x10de"
GIB = 1 << 30
# AMD APU graphics (PCI device ids): Raven/Picasso, Renoir/Cezanne/Lucienne, Van Gogh, Rembrandt,
# Mendocino, Raphael/Granite Ridge iGPU, Phoenix/Hawk Point, Strix Point, Strix Halo, Krackan.
AMD_APU_DEVICE_IDS = {"0x15dd", "0x15d8", "0x1636", "0x1638", "0x164c", "0x163f", "0x1681", "0x15e7", "0x1506",
                      "0x164e", "0x15bf", "0x15c8", "0x1900", "0x150e", "0x1586", "0x1114"}
# Intel discrete Arc (Alchemist 0x56xx, Battlemage 0xe20x); every other Intel display device is integrated
INTEL_DISCRETE_PREFIXES = ("0x56", "0xe20")
# Vulkan drivers cap an Intel iGPU's heap at about 3/4 of RAM
INTEL_SHARED_FRACTION = 0.75


def sysfs_root() -> Path:
    return Path(os.environ.get("QWENBENCH_SYSFS_ROOT", "/sys"))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path, notes: list[str]) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        notes.append(f"{path}: unreadable value {text[:40]!r}")
        return None


def _cards(root: Path) -> list[Path]:
    drm = root / "class" / "drm"
    if not drm.is_dir():
        return []
    # card0, card1 ... (not connectors such as card0-DP-1), one entry per physical device
    cards, seen = [], set()
    for card in sorted(drm.glob("card[0-9]*"), key=lambda p: int("".join(c for c in p.name if c.isdigit()) or 0)):
        if "-" in card.name:
            continue
        device = (card / "device").resolve()
        if device in seen:
            continue
        seen.add(device)
        cards.append(card)
    return cards


def _amd(device: Path, index: int, ram_total: int, ram_available: int) -> GpuInfo:
    notes: list[str] = []
    vram_total = _read_int(device / "mem_info_vram_total", notes)
    vram_used = _read_int(device / "mem_info_vram_used", notes)
    gtt_total = _read_int(device / "mem_info_gtt_total", notes)
    gtt_used = _read_int(device / "mem_info_gtt_used", notes)
    device_id = (_read(device / "device") or "").lower()
    name = _read(device / "product_name") or f"AMD GPU {device_id or '?'}"
    vram_free = vram_total - vram_used if vram_total is not None and vram_used is not None else None
    integrated = device_id in AMD_APU_DEVICE_IDS or (vram_total is not None and vram_total <= 2 * GIB)
    if vram_total is None:
        notes.append("amdgpu reports no VRAM size")
    if integrated:
        gtt_free = gtt_total - (gtt_used or 0) if gtt_total is not None else None
        # one pool: the carve-out plus what GTT may still map, never more than the RAM that is free
        shared = min(gtt_free, ram_available) if gtt_free is not None else ram_available
        budget = (vram_free or 0) + shared
        notes.append("APU: GPU and CPU share system RAM; the budget is one pool")
        return GpuInfo("amd", name, "integrated", vram_total, vram_free, gtt_total, budget, "sysfs", index,
                       notes=tuple(notes))
    return GpuInfo("amd", name, "discrete", vram_total, vram_free, gtt_total, vram_free, "sysfs", index,
                   notes=tuple(notes))


def _intel(device: Path, index: int, ram_total: int, ram_available: int) -> GpuInfo:
    device_id = (_read(device / "device") or "").lower()
    name = _read(device / "product_name") or f"Intel GPU {device_id or '?'}"
    if device_id.startswith(INTEL_DISCRETE_PREFIXES):
        return GpuInfo("intel", name, "discrete", None, None, None, None, "sysfs", index,
                       notes=("Intel Arc: the driver publishes no memory size here",))
    shared = int(ram_total * INTEL_SHARED_FRACTION)
    return GpuInfo("intel", name, "integrated", 0, 0, shared, min(shared, ram_available), "sysfs", index,
                   notes=("iGPU: shares system RAM (about 3/4 of it through Vulkan)",))


def read_drm_gpus(ram_total: int, ram_available: int, root: Path | None = None) -> tuple[list[GpuInfo], list[str]]:
    """AMD and Intel GPUs (NVIDIA cards are left to NVML and nvidia-smi)."""
    gpus: list[GpuInfo] = []
    notes: list[str] = []
    for card in _cards(root or sysfs_root()):
        device = card / "device"
        vendor = (_read(device / "vendor") or "").lower()
        if vendor == AMD:
            gpus.append(_amd(device, len(gpus), ram_total, ram_available))
        elif vendor == INTEL:
            gpus.append(_intel(device, len(gpus), ram_total, ram_available))
        elif vendor and vendor != NVIDIA:
            notes.append(f"{card.name}: display device of unknown vendor {vendor}")
    return gpus, notes
