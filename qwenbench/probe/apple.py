"""Apple Silicon: unified memory, and the share of it Metal lets a process keep resident."""

from __future__ import annotations

import platform
import subprocess

from .model import GpuInfo

GIB = 1 << 30


def metal_budget(ram_total: int, wired_limit_mb: int | None) -> tuple[int, str]:
    """Metal's working-set limit: the iogpu.wired_limit_mb override, else the macOS default as observed.

    No API reports the default from Python without Metal; observed: 2/3 of RAM up to 32 GB, 3/4 from
    36 GB, about 84% on a 128 GB machine.
    """
    if wired_limit_mb:
        return wired_limit_mb << 20, "set by iogpu.wired_limit_mb"
    if ram_total <= 32 * GIB:
        fraction = 2 / 3
    elif ram_total < 128 * GIB:
        fraction = 0.75
    else:
        fraction = 0.84
    return int(ram_total * fraction), f"estimated macOS default ({fraction:.0%} of RAM)"


def parse_apple(memsize: str, brand: str, wired_limit: str) -> tuple[GpuInfo | None, list[str]]:
    """Apple's GPU from `sysctl -n hw.memsize`, `machdep.cpu.brand_string` and `iogpu.wired_limit_mb` text."""
    try:
        ram_total = int(memsize.strip())
    except ValueError:
        return None, [f"sysctl hw.memsize: unreadable value {memsize.strip()[:40]!r}"]
    if not brand.strip().startswith("Apple"):
        return None, []  # an Intel Mac: no unified memory
    try:
        wired = int(wired_limit.strip()) if wired_limit.strip() else None
    except ValueError:
        wired = None
    budget, how = metal_budget(ram_total, wired)
    return GpuInfo("apple", f"{brand.strip()} GPU", "integrated", 0, 0, ram_total, budget, "sysctl",
                   notes=(f"unified memory; Metal working set {how}",)), []


def read_apple() -> tuple[list[GpuInfo], list[str]]:
    if platform.system() != "Darwin":
        return [], []

    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    gpu, notes = parse_apple(sysctl("hw.memsize"), sysctl("machdep.cpu.brand_string"), sysctl("iogpu.wired_limit_mb"))
    return ([gpu] if gpu else []), notes
