"""NVIDIA GPUs: NVML (nvidia-ml-py) first, `nvidia-smi --query-gpu` text as the fallback.

Both readers return (gpus, notes): a driver that is missing, times out or prints garbage gives
fewer GPUs and a note saying why, never an exception.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from .model import GpuInfo

MIB = 1 << 20
SMI_FIELDS = "index,name,memory.total,memory.free,driver_version,power.limit"
SMI_TIMEOUT_S = 5.0


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _try(notes: list[str], what: str, call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as exc:  # NVML raises its own NVMLError subclasses per call
        notes.append(f"NVML {what}: {exc}")
        return None


def read_nvml() -> tuple[list[GpuInfo], list[str]]:
    """GPUs through NVML; ([], [why]) where NVML is not there."""
    try:
        import pynvml
    except ImportError:
        return [], ["nvidia-ml-py is not installed"]
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return [], [f"NVML unavailable: {exc}"]
    notes: list[str] = []
    try:
        driver = _try(notes, "driver version", pynvml.nvmlSystemGetDriverVersion)
        cuda = _try(notes, "CUDA version", pynvml.nvmlSystemGetCudaDriverVersion)
        cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None
        gpus = []
        for index in range(_try(notes, "device count", pynvml.nvmlDeviceGetCount) or 0):
            handle = _try(notes, f"device {index}", pynvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            memory = _try(notes, f"device {index} memory", pynvml.nvmlDeviceGetMemoryInfo, handle)
            power_mw = _try(notes, f"device {index} power limit", pynvml.nvmlDeviceGetPowerManagementLimit, handle)
            name = _try(notes, f"device {index} name", pynvml.nvmlDeviceGetName, handle)
            gpus.append(GpuInfo(
                vendor="nvidia", name=_text(name) if name is not None else f"NVIDIA GPU {index}", kind="discrete",
                memory_total_bytes=int(memory.total) if memory is not None else None,
                memory_free_bytes=int(memory.free) if memory is not None else None,
                shared_memory_bytes=None,
                budget_bytes=int(memory.free) if memory is not None else None,
                source="nvml", index=index, driver_version=_text(driver) if driver is not None else None,
                cuda_version=cuda_text, power_limit_w=power_mw / 1000 if isinstance(power_mw, int) else None,
            ))
        return gpus, notes
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:
            notes.append(f"NVML shutdown: {exc}")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]", garbage


def parse_nvidia_smi(text: str) -> tuple[list[GpuInfo], list[str]]:
    """Parse `nvidia-smi --query-gpu=SMI_FIELDS --format=csv,noheader,nounits` output."""
    gpus: list[GpuInfo] = []
    notes: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(SMI_FIELDS.split(",")) or not fields[0].isdigit():
            notes.append(f"nvidia-smi: unexpected line {line.strip()[:80]!r}")
            continue
        index, name, total, free, driver, power = fields
        total_mib, free_mib, power_w = _number(total), _number(free), _number(power)
        gpus.append(GpuInfo(
            vendor="nvidia", name=name, kind="discrete",
            memory_total_bytes=int(total_mib * MIB) if total_mib is not None else None,
            memory_free_bytes=int(free_mib * MIB) if free_mib is not None else None,
            shared_memory_bytes=None,
            budget_bytes=int(free_mib * MIB) if free_mib is not None else None,
            source="nvidia-smi", index=int(index), driver_version=driver or None, power_limit_w=power_w,
            notes=() if total_mib is not None else ("nvidia-smi reports no memory size for this GPU",),
        ))
    return gpus, notes


def read_nvidia_smi() -> tuple[list[GpuInfo], list[str]]:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return [], []
    try:
        result = subprocess.run([binary, f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [], [f"nvidia-smi did not answer within {SMI_TIMEOUT_S:.0f} s"]
    except OSError as exc:
        return [], [f"nvidia-smi could not run: {exc}"]
    if result.returncode != 0:
        return [], [f"nvidia-smi failed: {(result.stderr or result.stdout).strip()[:200]}"]
    return parse_nvidia_smi(result.stdout)


def read_nvidia() -> tuple[list[GpuInfo], list[str]]:
    """NVML, and nvidia-smi only when NVML found nothing."""
    gpus, notes = read_nvml()
    if gpus:
        return gpus, notes
    smi_gpus, smi_notes = read_nvidia_smi()
    if smi_gpus:
        return smi_gpus, smi_notes  # NVML's absence is not worth a note when nvidia-smi answered
    # no NVIDIA driver at all is the common case, not worth a note; a failing nvidia-smi is
    return [], (notes + smi_notes) if smi_notes else []
