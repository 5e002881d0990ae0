"""Plans: from what the machine has and what a model file holds, predict and check a run's memory,
and choose the quant and placement that fit and decode fastest.

Glue between the probe (Hardware), the GGUF header or catalog recipe, and the pure model in fit.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .fit import (
    Calibration,
    MemoryEstimate,
    ModelShape,
    RunConfig,
    bytes_read_per_token,
    estimate_memory,
    predicted_tg_ts,
)
from .network import Link
from .probe import GpuInfo, Hardware
from .probe.backends import BUILDS, build_for_gpu
from .qualityprior import QualityFigure, dynamic_base
from .runspec import RunSettings
from .speed import SpeedCalibration, predict_speed, wire_seconds
from .tensors import TensorTable

GPU_BACKENDS = {"nvidia": ("CUDA", "Vulkan"), "amd": ("HIP", "Vulkan"), "intel": ("Vulkan", "SYCL"),
                "apple": ("Metal",), "rpc": ("RPC",)}
GIB = 1 << 30
MIB = 1 << 20
# kept free on each device beyond the prediction: other programs, the driver, fragmentation
HOST_MARGIN_BYTES = 512 * MIB
GPU_MARGIN_BYTES = 256 * MIB


def offload_devices(hardware: Hardware) -> tuple[GpuInfo, ...]:
    """The devices llama.cpp splits offloaded layers across: every GPU (and RPC worker's device) whose vendor has
    a backend in this build, in its order (the workers' first)."""
    return tuple(gpu for gpu in hardware.gpus if set(GPU_BACKENDS.get(gpu.vendor, ())) & set(hardware.backends))


def as_if_built_for(hardware: Hardware, build: str) -> Hardware:
    """This machine as a llama-cpp-python built for `build` (a key of probe.backends.BUILDS) would see it: its GPU
    backends replaced by that one (RPC, the CPU and others kept)."""
    gpu_backends = {name for vendor, names in GPU_BACKENDS.items() if vendor != "rpc" for name in names}
    kept = tuple(name for name in hardware.backends if name not in gpu_backends)
    added = BUILDS[build][0]
    return replace(hardware, backends=(*kept, added) if added else kept)


def idle_gpu_build(hardware: Hardware) -> str | None:
    """The build that would drive a GPU this install cannot use (the first such; probe.backends.build_for_gpu),
    or None."""
    if usable_gpu(hardware) is not None:
        return None
    return next((build for gpu in hardware.gpus if (build := build_for_gpu(gpu.vendor, gpu.kind))), None)


def usable_gpu(hardware: Hardware) -> GpuInfo | None:
    """The first device llama.cpp will put layers on (the one whose kind and bandwidth the plan takes)."""
    devices = offload_devices(hardware)
    return devices[0] if devices else None


def device_budget(gpu: GpuInfo) -> int:
    """What the plan may place on a device: its budget (an iGPU's cap, a worker's @SIZE) or its free memory."""
    return gpu.budget_bytes if gpu.budget_bytes is not None else gpu.memory_free_bytes or 0


def tensor_split(devices: tuple[GpuInfo, ...]) -> tuple[float, ...]:
    """The offloaded layers' shares across several devices: in proportion to what each may hold (llama.cpp's own
    default splits by free memory, which knows no cap and counts all of a CPU worker's RAM free); empty for one."""
    if len(devices) < 2:
        return ()
    budgets = [max(0, device_budget(gpu) - GPU_MARGIN_BYTES) for gpu in devices]
    total = sum(budgets)
    return tuple(round(b / total, 4) for b in budgets) if total else ()


def device_links(devices: tuple[GpuInfo, ...]) -> tuple[Link | None, ...]:
    """The measured link to each offload device, in llama.cpp's order: an RPC worker's endpoint; None for a GPU
    in this machine."""
    return tuple(Link(gpu.name, gpu.link_rtt_ms / 1e3, gpu.link_mbps * 1e6)
                 if gpu.link_rtt_ms is not None and gpu.link_mbps else None for gpu in devices)


def offload_kind(gpu: GpuInfo | None) -> str:
    """RunConfig.offload_kind of a device: an RPC worker's, or a GPU (with a driver context of its own)."""
    return "rpc" if gpu is not None and gpu.vendor == "rpc" else "gpu"


def run_config(settings: RunSettings, shape: ModelShape, hardware: Hardware) -> RunConfig:
    """The configuration whose memory peaks: the largest context any test of the run creates."""
    tests = settings.tests()
    gpu = usable_gpu(hardware)
    n_ctx = settings.n_ctx or max((t.n_ctx_needed for t in tests if t.kind != "ttft"), default=512)
    offloaded = gpu is not None and settings.n_gpu_layers != 0
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
        gpu=offloaded,
        offload_kind=offload_kind(gpu),
        tensor_split=settings.tensor_split if offloaded else (),
        repack=settings.repack,
    )


def fit_problems(estimate: MemoryEstimate, hardware: Hardware, devices: tuple[GpuInfo, ...]) -> list[str]:
    """Why a configuration would not fit, in numbers; empty when it fits. `devices`: the offload devices the
    configuration uses, in llama.cpp's order (none for a CPU run)."""
    problems = []
    available = hardware.ram.available_bytes - HOST_MARGIN_BYTES
    on_device = estimate.device_bytes or ((estimate.vram_bytes,) if estimate.vram_bytes else ())
    placed = list(zip(devices, on_device, strict=False))
    shared = [(gpu, size) for gpu, size in placed if gpu.kind == "integrated"]
    host_need = estimate.host_required_bytes + sum(size for _, size in shared)
    if host_need > available:
        what = f"host RAM (shared with {', '.join(gpu.name for gpu, _ in shared)})" if shared else "host RAM"
        problems.append(f"needs {host_need / GIB:.1f} GiB of {what}, {available / GIB:.1f} GiB available "
                        f"(after a {HOST_MARGIN_BYTES // MIB} MiB margin)")
    # each device's own budget (a discrete GPU's memory, an iGPU's cap, a worker's @SIZE) on top of that
    for gpu, size in placed:
        budget = gpu.budget_bytes - GPU_MARGIN_BYTES if gpu.budget_bytes is not None else None
        if size and budget is not None and size > budget:
            problems.append(f"needs {size / GIB:.1f} GiB on {gpu.name}, {budget / GIB:.1f} GiB usable there")
    return problems


# ------------------------------------------------------------------------------------------- planning

# quality order, best first: the tie-break after the mean KLD (qualityprior.py), and the order of quants without
# a figure; a plan never goes below Q4-class while a Q4-class quant fits (unless --max-kld sets the floor)
QUALITY_ORDER = ("F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "IQ4_XS",
                 "Q4_1", "Q4_0", "IQ4_NL", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
Q4_CLASS_FLOOR = QUALITY_ORDER.index("Q4_0")
DEFAULT_CANDIDATES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q3_K_L", "Q3_K_M", "Q2_K")
DEFAULT_MIN_TG = 5.0
# memory bandwidth of common GPUs (GB/s, vendor specifications); integrated GPUs use RAM's
GPU_BANDWIDTH_GBPS = {
    "H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100": 2000, "A100-SXM4-80GB": 2039,
    "A100": 1555, "L40S": 864, "L4": 300, "T4": 320, "A10": 600, "A6000": 768, "RTX 6000 Ada": 960,
    "RTX 5090": 1792, "RTX 5080": 960, "RTX 5070 Ti": 896, "RTX 5070": 672, "RTX 4090": 1008, "RTX 4080": 717,
    "RTX 4070 Ti": 504, "RTX 4070": 504, "RTX 4060 Ti": 288, "RTX 4060": 272, "RTX 3090": 936, "RTX 3080": 760,
    "RTX 3070": 448, "RTX 3060": 360, "RX 7900 XTX": 960, "RX 7900 XT": 800, "RX 7800 XT": 624,
    "RX 7600": 288, "M1 Ultra": 800, "M2 Ultra": 800, "M3 Ultra": 819, "M1 Max": 400, "M2 Max": 400,
    "M3 Max": 400, "M4 Max": 546, "M1 Pro": 200, "M2 Pro": 200, "M3 Pro": 150, "M4 Pro": 273, "M1": 68,
    "M2": 100, "M3": 100, "M4": 120,
}
UNKNOWN_DISCRETE_GPU_GBPS = 300.0


def quality_rank(quant: str) -> float:
    """Position in QUALITY_ORDER (lower is better). A dynamic mix such as unsloth's UD-Q4_K_XL keeps more
    tensors at high precision than its base preset, so it ranks just above Q4_K_M; unknown names rank last."""
    name = quant.upper()
    if name in QUALITY_ORDER:
        return float(QUALITY_ORDER.index(name))
    base = dynamic_base(name)
    if base in QUALITY_ORDER:
        return QUALITY_ORDER.index(base) - 0.5
    return float(len(QUALITY_ORDER))


def gpu_bandwidth_gbps(gpu: GpuInfo, ram_gbps: float | None) -> tuple[float | None, str]:
    """(GB/s, where the figure comes from) for a GPU: the spec table, or RAM's for an iGPU."""
    for name in sorted(GPU_BANDWIDTH_GBPS, key=len, reverse=True):
        if name.lower() in gpu.name.lower():
            return float(GPU_BANDWIDTH_GBPS[name]), "specification"
    if gpu.vendor == "rpc":
        return ram_gbps, "an RPC worker's CPU, taken as fast as this machine's RAM"
    if gpu.kind == "integrated":
        return ram_gbps, "shares RAM bandwidth"
    return UNKNOWN_DISCRETE_GPU_GBPS, "unknown GPU: assumed"


@dataclass(frozen=True)
class Placement:
    quant: str
    n_gpu_layers: int
    n_cpu_moe: int
    type_k: str
    type_v: str
    flash_attn: bool
    n_ctx: int
    fits: bool
    predicted_host_bytes: int  # peak resident set
    predicted_vram_bytes: int
    predicted_tg_ts: float
    problems: tuple[str, ...] = ()
    predicted_host_required_bytes: int = 0  # what must fit: the peak less reclaimable file cache
    predicted_pp_ts: float | None = None  # from the speed model, where this machine is calibrated
    predicted_ttft_ms: float | None = None
    speed_source: str = "copy bandwidth x default efficiency"
    speed_uncertainty: float = 0.5  # relative, one standard deviation
    use_mmap: bool = True  # False: read into memory (--no-mmap), where mapping would not fit
    tensor_split: tuple[float, ...] = ()  # the offloaded layers' shares across several devices
    device_bytes: tuple[int, ...] = ()  # predicted_vram_bytes device by device
    predicted_network_ms: float = 0.0  # of each decoded token's time, on the links to RPC workers (network.py)
    repack: bool = True  # the CPU backend's repacked weight copies; False: without them (-nr), where that is faster
    quality: QualityFigure | None = None  # the quant's mean KLD and where it comes from; None: not looked up

    def to_json(self) -> dict[str, Any]:
        return {"quant": self.quant, "n_gpu_layers": self.n_gpu_layers, "n_cpu_moe": self.n_cpu_moe,
                "type_k": self.type_k, "type_v": self.type_v, "flash_attn": self.flash_attn, "n_ctx": self.n_ctx,
                "fits": self.fits, "predicted_host_bytes": self.predicted_host_bytes,
                "predicted_host_required_bytes": self.predicted_host_required_bytes,
                "predicted_vram_bytes": self.predicted_vram_bytes, "predicted_tg_ts": round(self.predicted_tg_ts, 2),
                "predicted_pp_ts": None if self.predicted_pp_ts is None else round(self.predicted_pp_ts, 1),
                "predicted_ttft_ms": None if self.predicted_ttft_ms is None else round(self.predicted_ttft_ms),
                "speed_source": self.speed_source, "speed_uncertainty": round(self.speed_uncertainty, 3),
                "use_mmap": self.use_mmap, "tensor_split": list(self.tensor_split),
                "device_bytes": list(self.device_bytes), "predicted_network_ms": round(self.predicted_network_ms, 3),
                "repack": self.repack, "problems": list(self.problems),
                "quality": self.quality.to_json() if self.quality is not None else None}


@dataclass(frozen=True)
class Plan:
    model: str
    choice: Placement | None
    alternatives: tuple[Placement, ...]  # the neighbours one quality step up and down
    evaluated: tuple[Placement, ...]  # the best placement of every quant considered
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        chosen = self.choice.to_json() if self.choice else {"fits": False}
        return {"model": self.model, **chosen, "reasons": list(self.reasons),
                "alternatives": [p.to_json() for p in self.alternatives],
                "evaluated": [p.to_json() for p in self.evaluated]}


def _placements(shape: ModelShape, gpu: GpuInfo | None, expert_offload: bool) -> list[tuple[int, int]]:
    """(n_gpu_layers, n_cpu_moe) pairs worth trying: CPU only, every layer count, and for MoE all layers
    on the GPU with the experts of the first k layers kept in RAM."""
    if gpu is None:
        return [(0, 0)]
    pairs = [(layers, 0) for layers in range(shape.n_layer + 2)]
    if shape.is_moe and expert_offload:
        pairs += [(shape.n_layer + 1, k) for k in range(1, shape.n_layer + 1)]
    return pairs


def best_placement(quant: str, table: TensorTable, shape: ModelShape, hardware: Hardware, n_ctx: int,
                   calibration: Calibration | None = None, kv_types: tuple[str, ...] = ("f16", "q8_0"),
                   expert_offload: bool = True, speed: SpeedCalibration | None = None,
                   use_mmap: bool | None = None, repack: bool | None = None) -> Placement:
    """The fastest placement of one quant that fits, or the least-bad one with its problems.

    expert_offload=False leaves out the MoE placements with experts in RAM (to compare against them);
    use_mmap=None lets the plan read the model into memory where the mapped file and llama.cpp's repacked copies
    of its weights would exceed RAM together (True or False: as the user pinned); repack=None lets it run without
    the CPU backend's repacked copies where the calibration measured that faster (True or False: as pinned)."""
    calibration = calibration or Calibration()
    efficiency = calibration.tg_efficiency(shape.is_moe)
    gpu = usable_gpu(hardware)
    devices = offload_devices(hardware)
    split = tensor_split(devices)
    ram_gbps = hardware.bandwidth_gbps.get("ram")
    gpu_gbps = gpu_bandwidth_gbps(gpu, ram_gbps)[0] if gpu else None
    links = device_links(devices)

    def evaluate(config: RunConfig) -> tuple[Placement, RunConfig]:
        estimate = estimate_memory(table, shape, config, hardware.cpu.features, calibration)
        if use_mmap is None and estimate.host_bytes > hardware.ram.total_bytes:
            # mapped, the file's pages of repacked weights stay beside their copies: it fits only while the
            # kernel drops them, and it loads slowly (measured: Qwen3-30B-A3B Q4_K_M on 24 GiB, 78 s and a
            # 24.9 GB peak mapped, 47 s and 18.8 GB read in, the same speeds)
            unmapped = replace(config, use_mmap=False)
            unmapped_estimate = estimate_memory(table, shape, unmapped, hardware.cpu.features, calibration)
            if not fit_problems(unmapped_estimate, hardware, devices if config.gpu else ()):
                config, estimate = unmapped, unmapped_estimate
        problems = fit_problems(estimate, hardware, devices if config.gpu else ())
        if speed is not None:
            predicted = predict_speed(table, shape, config, speed, gpu_gbps=gpu_gbps, links=links)
            figures: dict[str, Any] = {"predicted_tg_ts": predicted.tg_ts, "predicted_pp_ts": predicted.pp_ts,
                                       "predicted_ttft_ms": predicted.ttft_ms, "speed_source": predicted.source,
                                       "speed_uncertainty": predicted.uncertainty,
                                       "predicted_network_ms": predicted.parts.get("network", 0.0) * 1e3}
            if estimate.host_bytes > hardware.ram.total_bytes:
                figures["speed_source"] += ("; the mapped file and its repacked copies exceed RAM: it loads "
                                            "slowly while the kernel drops and re-reads pages")
                figures["speed_uncertainty"] += 0.1
        else:
            host_read, gpu_read = bytes_read_per_token(table, shape, config)
            figures = {"predicted_tg_ts": predicted_tg_ts(host_read, gpu_read, ram_gbps or 20.0, gpu_gbps,
                                                          efficiency)}
        placement = Placement(quant, config.n_gpu_layers if config.gpu else 0, config.n_cpu_moe, config.type_k,
                              config.type_v, True, n_ctx, not problems, estimate.host_bytes, estimate.vram_bytes,
                              problems=tuple(problems), predicted_host_required_bytes=estimate.host_required_bytes,
                              use_mmap=config.use_mmap, tensor_split=config.tensor_split,
                              device_bytes=estimate.device_bytes, repack=config.repack, **figures)
        return placement, config

    best: tuple[Placement, RunConfig] | None = None
    for kv in kv_types:
        for layers, cpu_moe in _placements(shape, gpu, expert_offload):
            candidate = evaluate(RunConfig(n_ctx=n_ctx, n_gpu_layers=layers, n_cpu_moe=cpu_moe, type_k=kv, type_v=kv,
                                           flash_attn=True, gpu=gpu is not None and layers > 0,
                                           use_mmap=use_mmap is not False, offload_kind=offload_kind(gpu),
                                           tensor_split=split if layers > 0 else (), repack=repack is not False))
            if best is None or _better(candidate[0], best[0]):
                best = candidate
        if best is not None and best[0].fits:
            break  # a smaller KV type only when full precision does not fit
    assert best is not None
    chosen, config = best
    if repack is None and speed is not None and speed.plain_rates:
        plain, _ = evaluate(replace(config, repack=False))
        if plain.fits and _chat_seconds(plain) < CHOOSE_WITHOUT_REPACK * _chat_seconds(chosen):
            return plain
    return chosen


# without the repacked copies only where the calibration says a chat turn runs clearly faster so: llama.cpp's
# default stays where the two are within the noise
CHOOSE_WITHOUT_REPACK = 0.97
CHAT_TURN = (512, 128)  # prompt tokens, generated tokens: what "faster" weighs prefill and decode by


def _chat_seconds(placement: Placement) -> float:
    """A chat turn's seconds at a placement's predicted speeds: CHAT_TURN's prompt prefilled, its answer decoded."""
    prompt, answer = CHAT_TURN
    prefill = prompt / placement.predicted_pp_ts if placement.predicted_pp_ts else 0.0
    return prefill + answer / placement.predicted_tg_ts if placement.predicted_tg_ts else math.inf


def _better(a: Placement, b: Placement) -> bool:
    if a.fits != b.fits:
        return a.fits
    if a.fits:
        if abs(a.predicted_tg_ts - b.predicted_tg_ts) <= 0.001 * b.predicted_tg_ts:
            # equal decode (an iGPU reads the same RAM): the GPU still processes prompts far faster
            return a.n_gpu_layers > b.n_gpu_layers
        return a.predicted_tg_ts > b.predicted_tg_ts
    return (a.predicted_host_required_bytes + a.predicted_vram_bytes
            < b.predicted_host_required_bytes + b.predicted_vram_bytes)


def quality_key(placement: Placement) -> tuple[float, float]:
    """Rank by quality, best first: the mean KLD (measured for this model, else the published prior), then
    QUALITY_ORDER, which breaks ties (F32 and BF16 both 0; a dynamic mix given its base's prior) and orders the
    quants without a figure, after every quant with one."""
    figure = placement.quality
    kld = figure.kld if figure is not None and figure.kld is not None else math.inf
    return kld, quality_rank(placement.quant)


def kld_words(placement: Placement) -> str:
    """'mean KLD 0.0313, prior (LLaMA-3-8B)'; empty where no figure is known."""
    figure = placement.quality
    if figure is None or figure.kld is None:
        return ""
    return f"mean KLD {figure.kld:.3g}, {figure.label}"


def within_max_kld(placement: Placement, max_kld: float | None) -> bool:
    """Whether a quant may be chosen under --max-kld: its KLD known and at most the limit (a quant whose loss is
    not known cannot be shown to be within it)."""
    if max_kld is None:
        return True
    figure = placement.quality
    return figure is not None and figure.kld is not None and figure.kld <= max_kld


def _kld_skip(placement: Placement, max_kld: float) -> str:
    figure = placement.quality
    if figure is None or figure.kld is None:
        return (f"{placement.quant} skipped: no KLD known for it to hold to --max-kld {max_kld:g} "
                "(`qwenbench quality` measures it)")
    where = f"{figure.source}, {figure.detail}" if figure.detail else figure.source
    return f"{placement.quant} skipped: KLD {figure.kld:.3g} over --max-kld {max_kld:g} ({where})"


def _sources_note(placements: list[Placement]) -> list[str]:
    """Where measured and published figures are ranked together: they are not of the same model, corpus or
    reference, so the order between the two kinds is the weakest part of the plan."""
    sources = {p.quant: p.quality for p in placements if p.quality is not None}
    measured = [quant for quant, figure in sources.items() if figure.source == "measured"]
    prior = [figure.detail.split(",")[0] for figure in sources.values() if figure.source == "prior"]
    if not measured or not prior:
        return []
    return [f"quality measured for this model at {', '.join(measured)}; the others ranked by the published "
            f"figures of {prior[0]}, which a model can differ from by 2-4x: measure them together "
            "(`qwenbench quality`) for a like-for-like order"]


def choose(model: str, placements: list[Placement], min_tg: float, device: str = "the GPU",
           max_kld: float | None = None) -> Plan:
    """Quality first: the best quant (lowest mean KLD) that fits at a usable speed, never below Q4-class while one
    fits. max_kld: the user's quality floor instead of Q4-class; quants over it (or without a figure) are left out."""
    ranked = sorted(placements, key=quality_key)
    allowed = [p for p in ranked if within_max_kld(p, max_kld)]
    skipped = [_kld_skip(p, max_kld) for p in ranked if max_kld is not None and p not in allowed]
    q4_floor = max_kld is None  # --max-kld is the floor the user set
    fitting = [p for p in allowed if p.fits]
    usable = [p for p in fitting if p.predicted_tg_ts >= min_tg]
    reasons: list[str] = []
    choice: Placement | None = None

    def quality(p: Placement) -> str:
        words = kld_words(p)
        return f"; {words}" if words else ""

    if usable:
        choice = usable[0]
        reasons.append(f"{choice.quant} is the highest-quality quant that fits and reaches {min_tg:g} t/s "
                       f"(predicted {choice.predicted_tg_ts:.1f} t/s{quality(choice)})")
        better = [p for p in fitting if quality_key(p) < quality_key(choice)]
        if better:
            reasons.append(f"{better[-1].quant} also fits but is predicted at {better[-1].predicted_tg_ts:.1f} t/s, "
                           f"under the {min_tg:g} t/s floor")
        q4_fitting = [p for p in fitting if quality_rank(p.quant) <= Q4_CLASS_FLOOR]
        # below Q4-class: below every Q4-class quant that fits, by name and by figure (a measured KLD that ranks a
        # Q3 above a Q4 has the last word)
        below = quality_rank(choice.quant) > Q4_CLASS_FLOOR and all(quality_key(p) < quality_key(choice)
                                                                     for p in q4_fitting)
        if q4_floor and below and q4_fitting:
            choice = q4_fitting[-1]
            reasons.append(f"kept at {choice.quant}: below Q4-class quality suffers more than speed gains "
                           f"(predicted {choice.predicted_tg_ts:.1f} t/s, under the floor)")
    elif fitting:
        # speed is what binds: the fastest that fits, but not below Q4-class while one of those fits
        q4_fitting = [p for p in fitting if quality_rank(p.quant) <= Q4_CLASS_FLOOR] if q4_floor else []
        choice = max(q4_fitting or fitting, key=lambda p: p.predicted_tg_ts)
        reasons.append(f"nothing reaches {min_tg:g} t/s; {choice.quant} is the fastest quant that fits"
                       + (" at Q4-class quality or better" if q4_fitting else "")
                       + (f" within --max-kld {max_kld:g}" if max_kld is not None else "")
                       + f" (predicted {choice.predicted_tg_ts:.1f} t/s{quality(choice)})")
    elif max_kld is not None and any(p.fits for p in ranked):
        best = next(p for p in ranked if p.fits)
        reasons.append(f"nothing within --max-kld {max_kld:g} fits: the best quant that fits is {best.quant}"
                       + (f" ({kld_words(best)})" if kld_words(best) else " (no KLD known)"))
    else:
        smallest = (allowed or ranked)[-1] if ranked else None
        if smallest is not None:
            reasons.append(f"nothing fits: even {smallest.quant} {'; '.join(smallest.problems)}")
    reasons += skipped
    if choice is not None:
        reasons += _sources_note(ranked)
        if choice.n_cpu_moe:
            reasons.append(f"all layers on {device} with the experts of the first {choice.n_cpu_moe} layers in RAM: "
                           f"attention and the dense part stay on {device}, which beats offloading fewer layers")
        elif choice.n_gpu_layers:
            reasons.append(f"{choice.n_gpu_layers} layers (the output layer first) on {device}")
        if not choice.use_mmap:
            reasons.append("read into memory (--no-mmap): mapped, the file and llama.cpp's repacked copies of its "
                           "weights would exceed RAM together")
        if choice.type_k != "f16":
            reasons.append(f"KV cache {choice.type_k}: f16 does not fit at {choice.n_ctx} tokens")
    position = ranked.index(choice) if choice in ranked else -1
    neighbours = tuple(p for i, p in enumerate(ranked) if choice is not None and abs(i - position) == 1)
    return Plan(model, choice, neighbours, tuple(ranked), tuple(reasons))


@dataclass(frozen=True)
class PreparedRun:
    """A run's settings with the plan applied, and what the memory model and the bandwidth model say of it."""

    settings: RunSettings
    notes: tuple[str, ...]  # where pinned values differ from the plan
    config: RunConfig
    estimate: MemoryEstimate
    problems: tuple[str, ...]  # why it would not fit; empty when it fits
    host_bytes_per_token: int  # read per generated token from RAM
    gpu_bytes_per_token: int  # and from VRAM
    ram_gbps: float | None
    gpu_gbps: float | None
    predicted_speed: dict[str, float] = field(default_factory=dict)  # test name -> t/s (ttft: ms), when calibrated
    unrefined_speed: dict[str, float] = field(default_factory=dict)  # the same from the calibration alone
    # test name -> the network's ms of it (per generated token, prompt token or request); RPC runs only
    predicted_network_ms: dict[str, float] = field(default_factory=dict)


def predicted_by_test(settings: RunSettings, table: TensorTable, shape: ModelShape, config: RunConfig,
                      speed: SpeedCalibration, gpu_gbps: float | None,
                      links: tuple[Link | None, ...] = ()) -> dict[str, float]:
    """The speed model's figure for every test of a run: pp and tg t/s at the test's depth, TTFT in ms."""
    figures: dict[str, float] = {}
    for test in settings.tests():
        predicted = predict_speed(table, shape, config, speed, depth=test.n_depth, n_prompt=test.n_prompt or 512,
                                  gpu_gbps=gpu_gbps, links=links)
        figures[test.name] = {"pp": predicted.pp_ts, "tg": predicted.tg_ts}.get(test.kind, predicted.ttft_ms)
    return figures


def network_by_test(settings: RunSettings, shape: ModelShape, config: RunConfig,
                    links: tuple[Link | None, ...]) -> dict[str, float]:
    """The wire's milliseconds of every test of a run split over RPC workers (speed.wire_seconds); none locally."""
    if not config.gpu or not any(links):
        return {}
    return {test.name: 1e3 * wire_seconds(test.kind, shape, config, links, n_prompt=test.n_prompt or 512,
                                          depth=test.n_depth) for test in settings.tests()}


def prepare_run(settings: RunSettings, quant: str, table: TensorTable, shape: ModelShape, hardware: Hardware,
                calibration: Calibration, pinned: set[str], expert_offload: bool = True,
                speed: SpeedCalibration | None = None) -> PreparedRun:
    """Fill the placement settings the user did not pin from the plan for this model (a file's header or the
    catalog's recipe), say where pins differ, and predict the run's memory. expert_offload=False plans for a
    runtime that cannot keep MoE experts in RAM."""
    config = run_config(settings, shape, hardware)
    kv_types = (settings.type_k,) if {"type_k", "type_v"} & pinned else ("f16", "q8_0")
    # load mode auto is the plan's to choose; any other was asked for
    pinned_mmap = None if settings.load_mode == "auto" else settings.load_mode != "none"
    placement = best_placement(quant, table, shape, hardware, config.n_ctx, calibration, kv_types, expert_offload,
                               speed, pinned_mmap, settings.repack if "repack" in pinned else None)
    gpu = usable_gpu(hardware)
    planned = {"n_gpu_layers": placement.n_gpu_layers if gpu is not None else -1,
               "n_cpu_moe": placement.n_cpu_moe, "type_k": placement.type_k, "type_v": placement.type_v,
               "tensor_split": tensor_split(offload_devices(hardware)), "repack": placement.repack}
    updates = {name: value for name, value in planned.items() if name not in pinned}
    notes = []
    differing = [name for name in ("n_gpu_layers", "n_cpu_moe") if name in pinned and gpu is not None
                 and getattr(settings, name) != planned[name]]
    if differing:
        notes.append("pinned " + ", ".join(f"{n}={getattr(settings, n)}" for n in differing) + "; the plan would use "
                     + ", ".join(f"{n}={planned[n]}" for n in differing)
                     + f" (about {placement.predicted_tg_ts:.1f} t/s predicted)")
    if pinned_mmap is None and not placement.use_mmap:
        updates["load_mode"] = "none"
        notes.append("reading the model into memory (--no-mmap): mapped, the file and llama.cpp's repacked copies "
                     "of its weights would not fit in RAM together")
    if not updates.get("repack", True):
        notes.append("without the CPU backend's repacked weights (-nr): measured faster on this machine by the "
                     f"calibration (about {placement.predicted_pp_ts or 0:.0f} t/s prefill, "
                     f"{placement.predicted_tg_ts:.1f} t/s generation); --repack keeps llama.cpp's default")
    settings = replace(settings, **updates)
    config = run_config(settings, shape, hardware)
    estimate = estimate_memory(table, shape, config, hardware.cpu.features, calibration)
    problems = fit_problems(estimate, hardware, offload_devices(hardware) if config.gpu else ())
    host_read, gpu_read = bytes_read_per_token(table, shape, config)
    ram_gbps = hardware.bandwidth_gbps.get("ram")
    gpu_gbps = gpu_bandwidth_gbps(gpu, ram_gbps)[0] if gpu is not None and config.gpu else None
    links = device_links(offload_devices(hardware))
    figures = predicted_by_test(settings, table, shape, config, speed, gpu_gbps, links) if speed is not None else {}
    unrefined = (predicted_by_test(settings, table, shape, config, replace(speed, refinement=()), gpu_gbps, links)
                 if speed is not None and speed.refinement else figures)
    return PreparedRun(settings, tuple(notes), config, estimate, tuple(problems), host_read, gpu_read, ram_gbps,
                       gpu_gbps, figures, unrefined, network_by_test(settings, shape, config, links))


def what_would_fit(quant: str, table: TensorTable, shape: ModelShape, hardware: Hardware, n_ctx: int,
                   calibration: Calibration | None = None) -> list[str]:
    """When nothing fits: the longest context this quant fits with, and how much memory is missing."""
    hints = []
    low, high = 0, n_ctx
    while high - low > 256:  # binary search on the context, to KV-cell granularity
        middle = (low + high) // 2
        if best_placement(quant, table, shape, hardware, middle, calibration).fits:
            low = middle
        else:
            high = middle
    if low >= 256:
        hints.append(f"{quant} fits with a context of about {low // 256 * 256} tokens (--ctx {low // 256 * 256})")
    placement = best_placement(quant, table, shape, hardware, n_ctx, calibration)
    missing = placement.predicted_host_required_bytes + HOST_MARGIN_BYTES - hardware.ram.available_bytes
    if missing > 0 and not placement.predicted_vram_bytes:
        hints.append(f"or about {missing / GIB:.1f} GiB more free RAM for {quant} at {n_ctx} tokens")
    elif placement.problems:
        hints.append(f"or more memory: {quant} at {n_ctx} tokens {'; '.join(placement.problems)}")
    return hints


def plan_quants(name: str, tables: dict[str, TensorTable], shape: ModelShape, hardware: Hardware, n_ctx: int,
                calibration: Calibration, min_tg: float, pinned_quant: str | None = None,
                speed: SpeedCalibration | None = None, quality: Mapping[str, QualityFigure] | None = None,
                max_kld: float | None = None) -> Plan:
    """The plan across the given quants' tensor tables; a pinned quant is kept, with what the planner would pick.
    quality: each quant's mean KLD (qualityprior.quality_figures), which ranks them; max_kld: the most it may be."""
    quality = quality or {}
    placements = [replace(best_placement(q, table, shape, hardware, n_ctx, calibration, speed=speed),
                          quality=quality.get(q)) for q, table in tables.items()]
    plan = choose(name, placements, min_tg, offload_words(hardware), max_kld)
    split = split_reasons(plan.choice, offload_devices(hardware)) if plan.choice is not None else []
    plan = replace(plan, reasons=(*plan.reasons, *split, *colocation_note(offload_devices(hardware))))
    if plan.choice is None:
        # what would fit of the quants --max-kld allows; none allowed: the limit, not memory, is what binds
        allowed = [p.quant for p in placements if within_max_kld(p, max_kld)]
        if not allowed:
            return plan
        smallest = min(allowed, key=lambda q: tables[q].n_bytes)
        hints = what_would_fit(smallest, tables[smallest], shape, hardware, n_ctx, calibration)
        return replace(plan, reasons=(*plan.reasons, *hints))
    if pinned_quant is not None and plan.choice.quant != pinned_quant:
        pinned = next(p for p in placements if p.quant == pinned_quant)
        return replace(plan, choice=pinned,
                       reasons=(f"{pinned_quant} as asked; the planner would pick {plan.choice.quant}", *plan.reasons))
    return plan


def offload_words(hardware: Hardware) -> str:
    """What the plan calls the offload device in words: an RPC worker's is no GPU."""
    gpu = usable_gpu(hardware)
    return "the RPC workers' devices" if gpu is not None and gpu.vendor == "rpc" else "the GPU"


def colocation_note(devices: tuple[GpuInfo, ...]) -> list[str]:
    """What a plan cannot see of workers on this machine: they share its cores (and ggml's threads spin-wait at
    each barrier), so a split over them runs slower than the speed model, which gives each worker cores of its own."""
    local = [gpu.name for gpu in devices if gpu.vendor == "rpc" and gpu.kind == "integrated"]
    if not local:
        return []
    return [f"{', '.join(local)} run{'s' * (len(local) == 1)} on this machine's cores: speeds on "
            f"{'them are' if len(local) > 1 else 'it is'} predicted as if each worker had cores of its own, and a "
            "split over them measures slower (benchmarks/rpc_sweep.py); they add memory, not speed"]


def split_reasons(choice: Placement, devices: tuple[GpuInfo, ...]) -> list[str]:
    """In words, how a placement spreads over several offload devices, and whether any one of them alone could
    have held what they hold together."""
    used = [(gpu, size) for gpu, size in zip(devices, choice.device_bytes, strict=False) if size]
    if len(used) < 2:
        return []
    total = sum(size for _, size in used)
    shares = ", ".join(f"{gpu.name} {size / GIB:.2f} GiB of {max(0, device_budget(gpu) - GPU_MARGIN_BYTES) / GIB:.2f}"
                       f" GiB usable" for gpu, size in used)
    largest = max(device_budget(gpu) - GPU_MARGIN_BYTES for gpu, _ in used)
    alone = ("it fits on none of them alone" if total > largest else "one of them alone could hold it")
    return [f"{choice.n_gpu_layers} layers split across {len(used)} devices in proportion to what each may hold "
            f"(tensor split {'/'.join(f'{share:g}' for share in choice.tensor_split)}): {shares}; together "
            f"{total / GIB:.2f} GiB: {alone}"]


def candidate_quants(pinned_quant: str | None) -> list[str]:
    """The quants a plan weighs: the common presets, or a pinned one with its neighbours in quality."""
    if pinned_quant is None:
        return list(DEFAULT_CANDIDATES)
    order = sorted({*DEFAULT_CANDIDATES, pinned_quant}, key=quality_rank)
    at = order.index(pinned_quant)
    return order[max(0, at - 1): at + 2]
