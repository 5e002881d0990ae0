"""Who ran a benchmark: the machine identity recorded on every result row.

A small, fast reader; the full hardware probe (GPUs, iGPU budgets, bandwidth) is `qwenbench probe`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class MachineInfo:
    machine_id: str
    hostname: str
    cpu_model: str
    n_cpu_physical: int
    n_cpu_logical: int
    ram_total_bytes: int
    gpu_names: tuple[str, ...]


def _proc_root() -> Path:
    return Path(os.environ.get("QWENBENCH_PROC_ROOT", "/proc"))


def cpu_model_from_cpuinfo(text: str) -> str | None:
    """The CPU's marketing name from /proc/cpuinfo text (x86 'model name', Arm 'Model'/'Hardware')."""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return None


def cpu_model() -> str:
    try:
        found = cpu_model_from_cpuinfo((_proc_root() / "cpuinfo").read_text(errors="replace"))
        if found:
            return found
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=2).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


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


def nvidia_gpu_names() -> tuple[str, ...]:
    """GPU names through NVML, or nothing where there is no NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except Exception:
        return ()
    try:
        names = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return tuple(names)
    except Exception:
        return ()
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def safe_hostname() -> str:
    """The hostname, reduced to characters safe in a file name (results/<hostname>.csv)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "machine"


def describe_machine() -> MachineInfo:
    return MachineInfo(
        machine_id=machine_id(),
        hostname=safe_hostname(),
        cpu_model=cpu_model(),
        n_cpu_physical=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        n_cpu_logical=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_total_bytes=psutil.virtual_memory().total,
        gpu_names=nvidia_gpu_names(),
    )
