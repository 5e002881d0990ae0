"""From what the machine has and what the model file holds, predict and check a run's memory.

Glue between the probe (Hardware), the GGUF header and the pure model in fit.py.
"""

from __future__ import annotations

from .fit import Calibration, MemoryEstimate, ModelShape, RunConfig, estimate_memory
from .gguf_info import GGUFHeader
from .probe import GpuInfo, Hardware
from .runspec import RunSettings

GPU_BACKENDS = {"nvidia": ("CUDA", "Vulkan"), "amd": ("HIP", "Vulkan"), "intel": ("Vulkan", "SYCL"),
                "apple": ("Metal",)}
GIB = 1 << 30


def usable_gpu(hardware: Hardware) -> GpuInfo | None:
    """The GPU llama.cpp will put layers on: the first whose vendor has a backend in this build."""
    for gpu in hardware.gpus:
        if set(GPU_BACKENDS.get(gpu.vendor, ())) & set(hardware.backends):
            return gpu
    return None


def run_config(settings: RunSettings, shape: ModelShape, hardware: Hardware) -> RunConfig:
    """The configuration whose memory peaks: the largest context any test of the run creates."""
    tests = settings.tests()
    n_ctx = settings.n_ctx or max((t.n_ctx_needed for t in tests if t.kind != "ttft"), default=512)
    return RunConfig(
        n_ctx=max(n_ctx, 256 if settings.ttft else 1),
        n_gpu_layers=settings.n_gpu_layers,
        n_cpu_moe=settings.n_cpu_moe,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        type_k=settings.type_k,
        type_v=settings.type_v,
        flash_attn=settings.flash_attn != "off",
        use_mmap=settings.load_mode != "none",
        gpu=usable_gpu(hardware) is not None and settings.n_gpu_layers != 0,
    )


def predict_run(settings: RunSettings, header: GGUFHeader, hardware: Hardware,
                calibration: Calibration | None = None) -> tuple[RunConfig, MemoryEstimate]:
    config = run_config(settings, header.shape(), hardware)
    return config, estimate_memory(header.table, header.shape(), config, hardware.cpu.features, calibration)


def fit_problems(estimate: MemoryEstimate, hardware: Hardware, gpu: GpuInfo | None) -> list[str]:
    """Why a configuration would not fit, in numbers; empty when it fits."""
    problems = []
    available = hardware.ram.available_bytes
    shared = gpu is not None and gpu.kind == "integrated"
    host_need = estimate.host_bytes + (estimate.vram_bytes if shared else 0)
    if host_need > available:
        what = "host RAM (shared with the iGPU)" if shared else "host RAM"
        problems.append(f"needs {host_need / GIB:.1f} GiB of {what}, {available / GIB:.1f} GiB available")
    # an iGPU's own cap (GTT, Metal's working set) applies on top of the shared RAM pool
    budget = gpu.budget_bytes if gpu is not None else None
    if estimate.vram_bytes and budget is not None and estimate.vram_bytes > budget:
        problems.append(f"needs {estimate.vram_bytes / GIB:.1f} GiB on {gpu.name}, "
                        f"{budget / GIB:.1f} GiB usable there")
    return problems
