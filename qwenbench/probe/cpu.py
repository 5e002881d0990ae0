"""The CPU: marketing name, cores, and the ISA features that decide llama.cpp's CPU kernels."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import psutil

from .model import CpuInfo
from .sysfs_drm import sysfs_root

# /proc/cpuinfo flag -> the name llama.cpp prints in its system info
_X86_FEATURES = {
    "sse3": "SSE3", "ssse3": "SSSE3", "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C",
    "avx_vnni": "AVX_VNNI", "avx512f": "AVX512", "avx512_vnni": "AVX512_VNNI", "avx512_bf16": "AVX512_BF16",
    "avx512vbmi": "AVX512_VBMI", "amx_tile": "AMX", "amx_int8": "AMX_INT8", "amx_bf16": "AMX_BF16",
}
_ARM_FEATURES = {"asimd": "NEON", "asimddp": "DOTPROD", "i8mm": "MATMUL_INT8", "sve": "SVE", "sve2": "SVE2",
                 "fphp": "FP16_VA", "sme": "SME"}


def proc_root() -> Path:
    return Path(os.environ.get("QWENBENCH_PROC_ROOT", "/proc"))


def cpu_model_from_cpuinfo(text: str) -> str | None:
    """The CPU's marketing name from /proc/cpuinfo text (x86 'model name', Arm 'Model'/'Hardware')."""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return None


def features_from_cpuinfo(text: str) -> tuple[str, ...]:
    """llama.cpp-relevant ISA features from the first 'flags' (x86) or 'Features' (Arm) line."""
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    if not match:
        return ()
    flags = set(match.group(1).split())
    table = _X86_FEATURES if "sse2" in flags or "avx" in flags or "sse3" in flags or "pni" in flags else _ARM_FEATURES
    found = {name for flag, name in table.items() if flag in flags}
    if "pni" in flags:  # the kernel names SSE3 'pni'
        found.add("SSE3")
    order = list(dict.fromkeys(table.values()))
    return tuple(name for name in order if name in found)


def last_level_cache_bytes(cpu_dir: Path) -> int:
    """The largest cache sysfs lists for cpu0 (`cache/index*/size`, e.g. `32768K`); 0 when it lists none."""
    sizes = []
    for entry in cpu_dir.glob("cache/index*/size"):
        match = re.fullmatch(r"(\d+)([KMG]?)", entry.read_text(errors="replace").strip())
        if match:
            sizes.append(int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)])
    return max(sizes, default=0)


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def read_cpu() -> CpuInfo:
    try:
        text = (proc_root() / "cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    model = cpu_model_from_cpuinfo(text)
    features = features_from_cpuinfo(text)
    try:
        cache = last_level_cache_bytes(sysfs_root() / "devices/system/cpu/cpu0")
    except OSError:
        cache = 0
    if platform.system() == "Darwin":
        model = model or _sysctl("machdep.cpu.brand_string")
        l2 = _sysctl("hw.l2cachesize")  # Apple silicon's last level the CPU cores share
        cache = cache or (int(l2) if l2.isdigit() else 0)
        if platform.machine() == "arm64":
            features = features or ("NEON", "DOTPROD", "FP16_VA")
    return CpuInfo(
        model=model or platform.processor() or platform.machine() or "unknown",
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        features=features,
        last_level_cache_bytes=cache,
    )
