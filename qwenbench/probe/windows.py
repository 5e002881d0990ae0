"""GPUs on Windows from the display adapters' registry keys (`reg query`), for AMD and Intel iGPUs.

`HardwareInformation.qwMemorySize` (QWORD; older drivers: `MemorySize`, DWORD or binary) is the
dedicated memory, an iGPU's firmware carve-out; Windows lets an adapter share up to half of RAM on
top. (`Win32_VideoController.AdapterRAM` is 32-bit and saturates at 4 GB: not used.) NVIDIA
adapters are left to NVML and nvidia-smi.
"""

from __future__ import annotations

import platform
import re
import subprocess

from .model import GpuInfo

DISPLAY_CLASS_KEY = r"HKLM\SYSTEM\ControlSet001\Control\Class\{4d36e968-e325-11ce-bfc1-08002be10318}"
GIB = 1 << 30
_VALUE = re.compile(r"^\s+(\S[^\t]*?)\s+(REG_\w+)\s+(.*)$")


def _number(kind: str, raw: str) -> int | None:
    raw = raw.strip()
    try:
        if kind in ("REG_QWORD", "REG_DWORD"):
            return int(raw, 16) if raw.lower().startswith("0x") else int(raw)
        if kind == "REG_BINARY":
            return int.from_bytes(bytes.fromhex(raw), "little") if raw else None
    except ValueError:
        return None
    return None


def parse_reg_query(text: str) -> list[dict[str, str | int | None]]:
    """One dict per adapter subkey (\\0000, \\0001, ...) with its description, provider and memory size."""
    adapters: list[dict[str, str | int | None]] = []
    current: dict[str, str | int | None] | None = None
    for line in text.splitlines():
        if line.startswith("HKEY_"):
            current = {"key": line.strip()} if re.search(r"\\\d{4}$", line.strip()) else None
            if current is not None:
                adapters.append(current)
            continue
        match = _VALUE.match(line)
        if current is None or not match:
            continue
        name, kind, raw = match.groups()
        if name == "DriverDesc":
            current["name"] = raw.strip()
        elif name == "ProviderName":
            current["provider"] = raw.strip()
        elif name == "HardwareInformation.qwMemorySize":
            current["dedicated"] = _number(kind, raw)
        elif name == "HardwareInformation.MemorySize":
            # the 32-bit value stands in only for drivers without the 64-bit one
            current.setdefault("dedicated", _number(kind, raw))
    return [a for a in adapters if a.get("name")]


def _vendor(adapter: dict[str, str | int | None]) -> str:
    text = f"{adapter.get('name', '')} {adapter.get('provider', '')}".lower()
    for vendor, marker in (("nvidia", "nvidia"), ("amd", "advanced micro devices"), ("amd", "radeon"),
                           ("intel", "intel")):
        if marker in text:
            return vendor
    return "unknown"


def windows_gpus(adapters: list[dict[str, str | int | None]], ram_total: int,
                 ram_available: int) -> tuple[list[GpuInfo], list[str]]:
    gpus: list[GpuInfo] = []
    notes: list[str] = []
    for adapter in adapters:
        vendor = _vendor(adapter)
        name = str(adapter["name"])
        if vendor == "nvidia" or "basic display" in name.lower() or "remote" in name.lower():
            continue
        dedicated = adapter.get("dedicated")
        dedicated = dedicated if isinstance(dedicated, int) else None
        lowered = name.lower()
        intel_igpu = vendor == "intel" and "arc(tm) a" not in lowered and " b5" not in lowered
        amd_apu = re.search(r"radeon\(tm\) graphics|radeon \d{3}m\b|radeon\(tm\) \d{3}m\b", lowered) is not None
        small_carve_out = dedicated is not None and dedicated <= 2 * GIB
        integrated = intel_igpu or amd_apu or small_carve_out
        shared = max(ram_total // 2, 64 << 20)
        if integrated:
            budget = (dedicated or 0) + min(shared, ram_available)
            gpus.append(GpuInfo(vendor, name, "integrated", dedicated, None, shared, budget, "registry", len(gpus),
                                notes=("Windows iGPU: firmware carve-out plus up to half of RAM shared",)))
        else:
            gpus.append(GpuInfo(vendor, name, "discrete", dedicated, None, shared, dedicated, "registry", len(gpus),
                                notes=("free memory is not in the registry; the budget is the card's size",)))
        if dedicated is None:
            notes.append(f"{name}: no memory size in the registry")
    return gpus, notes


def read_windows(ram_total: int, ram_available: int) -> tuple[list[GpuInfo], list[str]]:
    if platform.system() != "Windows":
        return [], []
    try:
        result = subprocess.run(["reg", "query", DISPLAY_CLASS_KEY, "/s"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], [f"reg query failed: {exc}"]
    return windows_gpus(parse_reg_query(result.stdout), ram_total, ram_available)
