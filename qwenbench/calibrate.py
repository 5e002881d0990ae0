"""`qwenbench calibrate`: measure, with real llama.cpp runs of small probe models, what the speed model needs on this
machine: the decode and prefill rate of each weight type, the fixed cost of a token and of a layer, the extra cost
of an MoE layer, and attention's cost over a filled cache. Cached per machine, llama.cpp build, backend and thread
count.

A type's probe is a Qwen3-shaped model (n_embd 1024, n_ff 3072: real row lengths, so llama.cpp runs the kernels it
runs for real models) whose every matrix is of that type, with layers enough for four times the last-level cache
(128-192 MiB; at most 10 layers, about 90 MB for Q2_K), so decode reads it from RAM as it does a real model.
Overheads come from tiny models (n_embd 64) of 2 and 32 layers, dense and MoE, whose weights are small enough that
the fixed costs dominate; MoE experts' prefill, whose kernels differ from a dense matrix's, from one probe per type
with real expert matrices (Qwen3-30B-A3B's, 32 of them, 8 used, random routers) at two batch sizes, and again
without repacking for the types this CPU repacks; a Gated DeltaNet layer's work from a tiny hybrid of 32 layers
with Qwen3.5-4B's linear-attention heads, against the tiny dense one; attention from tiny-weight models with real
attention heads (at three GQA ratios) and a real model's layer count, decoded and prefilled at depth and
without. Probe weights are zeros in sparse files (nothing to write; the kernels' speed does not depend on the
values). All probes run one after another in one child process, in two rounds (the second backwards; attention in
the first only), each keeping its fastest.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from .calibration import forget_speed_observations, speed_observations
from .catalog import ModelSpec, get_model
from .fit import has_tied_output, recurrent_state_bytes, repacked_on_cpu
from .harness import run_batch
from .machine import MachineInfo
from .modelfile import ensure_synthetic_table
from .paths import cache_dir, logs_dir, read_json, write_json
from .probe.bandwidth import ram_bandwidth_trials
from .recipe import tensor_layout, tensor_table
from .runspec import RunSettings, TestSpec
from .speed import (
    CALIBRATED_TYPES,
    EXPERT_BATCH_TOKENS,
    PROBE_PROMPT_CELLS,
    SpeedCalibration,
    TypeRate,
    decode_bytes_per_token,
    output_token_bytes,
    prefill_bytes_per_token,
    prefill_token_bytes,
    recurrent_layers,
    refine_from,
)
from .tensors import TensorInfo, TensorTable

PROBE_SHAPE = {"n_embd": 1024, "n_ff": 3072, "n_head": 8, "n_head_kv": 4, "head_dim": 128}
TINY_SHAPE = {"n_embd": 64, "n_ff": 128, "n_head": 2, "n_head_kv": 1, "head_dim": 32}
TINY_MOE = {"n_expert": 8, "n_expert_used": 2, "n_ff_exp": 64}
TINY_LAYERS = 32  # against 2: the difference, 30 layers' fixed cost, stands well above the noise
# a probe's weights: four times the last-level cache, so decode streams them from RAM as it does a real model's
# (a stream through an LRU cache larger than it hits nearly never), within these bounds; the upper one when the
# cache size is unknown. 192 MiB, not more: a VM may report its whole socket's L3 (480 MiB on the Xeon of issue 10),
# and on two cores decode is bound by compute more than by RAM (Q4_K there: 16 GB/s of a 43 GB/s copy bandwidth)
PROBE_BYTES = (128 << 20, 192 << 20)
PROBE_GEN, PROBE_PROMPT, PROBE_REPS = 12, 2 * PROBE_PROMPT_CELLS, 2
PP = f"pp{PROBE_PROMPT}"
# attention's probe: little weight and real heads (32 query, 8 KV, 128 dimensions: Qwen3-4B's to 32B's KV rows,
# GQA 4), so that its slowdown at depth is attention's, and as many layers as a real model: per cell, a probe of 4
# layers attends 1.7x as fast as one of 36 (Qwen3-4B's heads, 2048 and 4096 cells), while 32, 64 and 128 layers
# agree within 5 % (0.32-0.34 ns a cell x layer x query head x head dimension at 512 cells, as the 36-layer probe
# at 4096 and real Qwen3-4B, 8B and 30B-A3B twins at 4096: 0.27-0.32 ns; the Xeon of issue 10). Per cell that cost
# holds from 512 cells to 4096, and filling 512 costs a sixty-fourth of filling 4096 (a quadratic fill), so one
# depth: 512, the least at which llama.cpp splits a decode's cache across threads, as for a long context. Measured
# in the first round only: at depth it is mostly attention, far above the noise.
# Per query head the cost falls as more of them share a KV head's rows (see SpeedCalibration.attention): probes
# at GQA 2 (Qwen3-0.6B and 1.7B), 4 (4B to 32B) and 8 (30B-A3B, Qwen3.5's MoE). One at GQA 4 alone left a Qwen3-0.6B
# twin's decode at depth 4096 predicted 42 % fast on that Xeon (26 % with GQA 2's too). GQA 8 is its own point, not
# GQA 4's: on a Zen 4 EPYC VM its probe read 0.24-0.28 ns at 512 cells (GQA 4's: 0.33-0.44) where Qwen3-30B-A3B twins
# at 4096 cost 0.21-0.23, and with GQA 4's figure their decode at depth 4096 came out 36-45 % slow. (On the Xeon the
# GQA-8 probe read 0.17-0.20 against the twin's 0.26: its small KV rows stay in the CPU's caches between tokens
# more than a real model's, which streams its weights through them.)
ATTENTION_SHAPE = {"n_layer": 32, "n_embd": 64, "n_ff": 64, "n_head": 32, "n_head_kv": 8, "head_dim": 128}
ATTENTION_HEADS = ((16, 8), (32, 8), (32, 4))  # (query heads, KV heads)
ATTENTION_DEPTHS = (512,)
ATTENTION_GEN, ATTENTION_REPS = 8, 2
# an MoE layer's experts in a batch run other kernels than a dense matrix's (ggml's mul_mat_id: each expert's
# rows gathered and multiplied apart), for some types far slower (measured on AVX-512: Q4_K experts prefill at
# 0.6x the dense rate), so each type's experts have their own probe: Qwen3-30B-A3B's expert matrices (2048 x 768),
# 32 experts of which 8 used, as every Qwen MoE routes (a probe of 8 experts, 2 used, ran non-repacked types 20-30 %
# slower than Qwen3-30B-A3B's 128 at as many tokens an expert), prefilled at 128 tokens (32 an expert, as Qwen3-30B-
# A3B's pp512 gives) and at 16 (4 an expert, as a short chat prompt gives). Of its 2 layers, a prompt's tokens run
# the experts of the first: the last layer's FFN works for the output token only. Attention is small beside them.
# Measured in the first round only: with their repacked copies made at load, these probes took 28 s of a 76 s
# calibration in two rounds on a Zen 4 EPYC VM
MOE_PROBE_SHAPE = {"n_layer": 2, "n_embd": 2048, "n_ff_exp": 768, "n_expert": 32, "n_expert_used": 8, "n_head": 4,
                   "n_head_kv": 1, "head_dim": 64}
# the expert types measured: the presets' quantized ones. 16-bit MoE files (60 GB and up) run on a CPU rarely; their
# experts take their dense rate scaled as the measured types' are
MOE_TYPES = ("Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_XS", "IQ4_NL", "MXFP4")
PRECISE_GEN, PRECISE_REPS = 32, 3
ROUNDS = 2
# the copy-bandwidth buffer: twice the last-level cache, within these bounds. A VM may report its whole socket's L3
# (480 MiB on the Xeon of issue 10): eight times that took 4 to 28 s of a calibration, page faults and all
BANDWIDTH_BYTES, BANDWIDTH_TRIALS = (512 << 20, 1 << 30), 7
SOLVE_ITERATIONS = 4
CALIBRATION_FORMAT = "f10"  # what the probes measure and how: a calibration of another format is not this one
OnProgress = Callable[[str, int, int], None]  # (what, done, total)
PLAIN_SUFFIX = "-no-repack"


@dataclass(frozen=True)
class _Probe:
    name: str
    spec: ModelSpec
    table: TensorTable
    # what it measures is a small difference between probes (fixed costs): decode it longer, more often
    precise: bool = False
    moe_type: str = ""  # an expert prefill probe of this weight type
    attention: bool = False  # attention's probe: decoded at depth, fewer tokens
    once: bool = False  # measured in the first round only (attention at depth: long, and far above the noise)
    # run with the CPU backend's repacking off (its file is the repacked probe's); first round only: what it decides
    # (the plan drops the copies where they are clearly slower) errs towards llama.cpp's default when disturbed
    plain: bool = False

    @property
    def path(self) -> Path:
        return cache_dir() / "probes" / f"{self.name.removesuffix(PLAIN_SUFFIX)}.gguf"


def _uniform_table(spec: ModelSpec, type_name: str) -> TensorTable:
    """Every matrix of `spec` (the embeddings too) in one weight type; norms and biases F32, as llama-quantize."""
    from gguf import GGMLQuantizationType

    chosen = int(GGMLQuantizationType[type_name])
    tensors = [TensorInfo(name, chosen if len(shape) >= 2 and "ffn_gate_inp" not in name else 0, shape)
               for name, shape in tensor_layout(spec)]
    return TensorTable(tuple(tensors))


def _type_probe(type_name: str, shape: dict[str, int], target_bytes: int) -> _Probe:
    base = get_model("qwen3-0.6b")
    one_layer = _uniform_table(base.with_overrides(n_layer=1, **shape), type_name)
    vocab = sum(t.n_bytes for t in one_layer.tensors if t.layer is None)
    layer = one_layer.n_bytes - vocab
    # at most 10 layers: a low-bit type's prefill over more costs seconds and teaches nothing more
    n_layer = max(2, min(10, round((target_bytes - vocab) / layer)))
    spec = base.with_overrides(n_layer=n_layer, **shape)
    return _Probe(f"type-{type_name.lower()}-e{shape['n_embd']}-l{n_layer}", spec, _uniform_table(spec, type_name))


def _tiny_probe(n_layer: int, moe: bool) -> _Probe:
    key, extra = ("qwen3-30b-a3b", TINY_MOE) if moe else ("qwen3-0.6b", {})
    spec = get_model(key).with_overrides(n_layer=n_layer, **TINY_SHAPE, **extra)
    return _Probe(f"tiny-{'moe' if moe else 'dense'}-l{n_layer}", spec, _uniform_table(spec, "Q8_0"), precise=True)


def _hybrid_probe() -> _Probe:
    """Qwen3.5-4B's linear-attention heads (32 value heads of 128 x 128 state: 2.2 MB a layer) on tiny weights, 32
    layers of which 24 Gated DeltaNet: against the tiny dense probe of as many layers, what a linear-attention
    layer's state costs a decoded token."""
    spec = get_model("qwen3.5-4b").with_overrides(n_layer=TINY_LAYERS, n_embd=64, n_ff=128, n_head=2, n_head_kv=1)
    # first round only: its state's work (13 ms a token on a Zen 4 EPYC VM against the dense probe's 1.5) stands far
    # above the noise
    return _Probe(f"tiny-hybrid-l{TINY_LAYERS}", spec, tensor_table(spec, "Q8_0"), once=True)


def _moe_probe(type_name: str, shape: dict[str, int]) -> _Probe:
    """Experts of `type_name`; attention in Q8_0; the embeddings, which must be random for tokens to spread over
    the experts (the synthetic writer keeps them so) and double as the output layer, in Q2_K, the smallest."""
    from gguf import GGMLQuantizationType

    if shape["n_layer"] < 2:
        raise ValueError("an expert probe needs two layers: a prompt's tokens skip the last one's FFN")
    spec = get_model("qwen3-30b-a3b").with_overrides(tied_embeddings=True, **shape)
    experts, embeddings, rest = (int(GGMLQuantizationType[t]) for t in (type_name, "Q2_K", "Q8_0"))
    tensors = [TensorInfo(name, 0 if len(dims) < 2 or "ffn_gate_inp" in name else
                          experts if TensorInfo(name, 0, dims).is_expert else
                          embeddings if name == "token_embd.weight" else rest, dims)
               for name, dims in tensor_layout(spec)]
    return _Probe(f"moe-{type_name.lower()}-e{shape['n_embd']}-x{shape['n_expert']}k{shape['n_expert_used']}"
                  f"-l{shape['n_layer']}", spec, TensorTable(tuple(tensors)), moe_type=type_name, once=True)


def _few_prompt(probe: _Probe) -> int:
    """The prompt that gives each of an expert probe's experts EXPERT_BATCH_TOKENS[0] tokens (PROBE_PROMPT gives
    them EXPERT_BATCH_TOKENS[1] in MOE_PROBE_SHAPE)."""
    return EXPERT_BATCH_TOKENS[0] * probe.spec.n_expert // probe.spec.n_expert_used


def _expert_pp_rate(probe: _Probe, seconds: float, rates: dict[str, TypeRate], fallback: TypeRate,
                    n_prompt: int = PROBE_PROMPT) -> float:
    """A type's experts' prefill rate from its probe's `seconds` a token of an n_prompt-token prompt: its prefill less
    the small dense part (attention, router) and the output token's share, at the dense rates."""
    experts_s = max(seconds - _dense_prefill_s(probe, rates, fallback, n_prompt), 0.5 * seconds)
    return prefill_bytes_per_token(probe.table, probe.spec.shape(), experts=True) / experts_s


def _dense_prefill_s(probe: _Probe, rates: dict[str, TypeRate], fallback: TypeRate,
                     n_prompt: int = PROBE_PROMPT) -> float:
    """Seconds a prompt token spends in a probe outside its experts' batch work, at the measured dense rates: its
    other layers' tensors, and the output token's share of its prompt."""
    shape, tied = probe.spec.shape(), has_tied_output(probe.table)
    return (sum(prefill_token_bytes(t, shape, tied) / rates.get(t.type_name, fallback).pp_bytes_per_s
                for t in probe.table.tensors if not t.is_expert)
            + _output_token_s(probe, lambda name: rates.get(name, fallback), n_prompt))


def _output_token_s(probe: _Probe, rate_of: Callable[[str], TypeRate], n_prompt: int = PROBE_PROMPT) -> float:
    """A probe's prompt's one output token's extra seconds (the output layer, the last FFN), per prompt token."""
    shape, tied = probe.spec.shape(), has_tied_output(probe.table)
    return sum(output_token_bytes(t, shape, tied) / rate_of(t.type_name).tg_bytes_per_s
               for t in probe.table.tensors) / n_prompt


def _attention_probe(n_head: int, n_head_kv: int, n_layer: int) -> _Probe:
    spec = get_model("qwen3-0.6b").with_overrides(**(ATTENTION_SHAPE | {"n_head": n_head, "n_head_kv": n_head_kv,
                                                                        "n_layer": n_layer}))
    return _Probe(f"attention-l{spec.n_layer}-h{n_head}-kv{n_head_kv}", spec, _uniform_table(spec, "Q8_0"), once=True,
                  attention=True)


def probe_bytes_for(last_level_cache_bytes: int) -> int:
    low, high = PROBE_BYTES
    return min(high, max(low, 4 * last_level_cache_bytes)) if last_level_cache_bytes else high


def calibration_key(machine: MachineInfo, n_threads: int) -> str:
    backends = ",".join(machine.hardware.backends) or "none"
    return f"{machine.machine_id}|llama-cpp-python {_llama_version()}|{backends}|t{n_threads}|{CALIBRATION_FORMAT}"


def _llama_version() -> str:
    from .probe.backends import installed_version

    return installed_version() or "missing"


def _path() -> Path:
    return cache_dir() / "speed.json"


def load_speed_calibration(key: str) -> tuple[SpeedCalibration | None, str | None]:
    """(the cached calibration for `key`, refined by what measured runs here taught it, or None; a note when the
    cache was unreadable or foreign)."""
    raw = _path()
    data = read_json(raw)
    if raw.exists() and not data:
        return None, f"{raw} is unreadable or not a calibration: calibrating afresh"
    entry = data.get(key)
    if entry is None:
        return None, None
    try:
        calibration = SpeedCalibration.from_json(entry)
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"the calibration cached for this machine is damaged ({type(exc).__name__}): calibrating afresh"
    return replace(calibration, refinement=refine_from(speed_observations(key))), None


def _fastest_s(samples_ns: tuple[int, ...], n_tokens: int) -> float:
    """Seconds per token of a test's fastest repetition (a disturbance only ever slows one down)."""
    return min(samples_ns) / 1e9 / n_tokens


def _probe_settings(probe: _Probe, n_threads: int, depths: tuple[int, ...] = (0,)) -> RunSettings:
    n_gen, repetitions = (PRECISE_GEN, PRECISE_REPS) if probe.precise else (PROBE_GEN, PROBE_REPS)
    if probe.attention:
        n_gen, repetitions = ATTENTION_GEN, ATTENTION_REPS
    n_prompt = (PROBE_PROMPT,)
    if probe.moe_type:  # measured once (see MOE_PROBE_SHAPE): a repetition more instead of a round
        n_gen, n_prompt, repetitions = 0, (PROBE_PROMPT, _few_prompt(probe)), PROBE_REPS + 1
    # no warm-up: each probe is measured repetitions x rounds times and keeps its fastest, so the first
    # (cold) repetition never counts unless nothing else did better
    return RunSettings(model_path=str(probe.path), n_prompt=n_prompt, n_gen=(n_gen,), n_depth=depths,
                       repetitions=repetitions, n_threads=n_threads, n_gpu_layers=0, ttft=False, warmup=False,
                       repack=not probe.plain)


def _repacked_here(probe: _Probe, cpu_features: tuple[str, ...]) -> bool:
    """Whether this CPU backend repacks a type probe's matrices (then its rate without repacking is measured too:
    llama.cpp's -nr, and what an RPC worker runs)."""
    return any(repacked_on_cpu(t, cpu_features) for t in probe.table.tensors if t.layer is not None)


def _test_key(test: TestSpec) -> str:
    return ("tg" if test.kind == "tg" else f"pp{test.n_prompt}") + (f"@{test.n_depth}" if test.n_depth else "")


def _measure(runs: list[tuple[_Probe, tuple[int, ...]]], n_threads: int, log_dir: Path,
             on_probe: Callable[[int], None]) -> list[dict[str, float]]:
    """Seconds per token of each (probe, depths)'s tests ("tg", "pp" + prompt length, "@" + depth when deep), all
    in one child process."""
    batch = [_probe_settings(probe, n_threads, depths) for probe, depths in runs]

    def follow(event: dict) -> None:
        if event.get("event") == "model":
            on_probe(int(event["index"]))

    measured = []
    for results in run_batch(batch, log_dir=log_dir, timeout_s=60 + 30 * len(batch), on_event=follow):
        measured.append({_test_key(test): _fastest_s(result.samples_ns, test.n_gen if test.kind == "tg"
                                                     else test.n_prompt) for test, result in results.items()})
    return measured


def _announce(order: list[tuple[_Probe, tuple[int, ...]]], label: str, done: int, total: int,
              progress: OnProgress) -> Callable[[int], None]:
    def on_probe(index: int) -> None:
        probe, depths = order[index]
        deep = [str(d) for d in depths if d]
        progress(f"{label}: {probe.name}" + (f" and at depth {', '.join(deep)}" if deep else ""), done + index, total)

    return on_probe


def calibrate(machine: MachineInfo, n_threads: int, *, types: tuple[str, ...] = CALIBRATED_TYPES,
              rounds: int = ROUNDS, probe_shape: dict[str, int] | None = None, probe_bytes: int | None = None,
              attention_depths: tuple[int, ...] = ATTENTION_DEPTHS,
              attention_layers: int = ATTENTION_SHAPE["n_layer"], moe_types: tuple[str, ...] | None = None,
              moe_shape: dict[str, int] | None = None, on_progress: OnProgress | None = None) -> SpeedCalibration:
    """Measure every weight type and the fixed costs, store the result under this machine's key, return it.

    Probes are measured in interleaved rounds and each keeps its fastest: on a shared machine a neighbour can
    slow a stretch of seconds several-fold, and a disturbance only ever slows. The rounds' disagreement is the
    calibration's spread."""
    started = time.monotonic()
    progress = on_progress or (lambda what, done, total: None)
    log_dir = logs_dir()
    probe_bytes = probe_bytes or probe_bytes_for(machine.hardware.cpu.last_level_cache_bytes)
    type_probes = [_type_probe(t, probe_shape or PROBE_SHAPE, probe_bytes) for t in types]
    features = machine.hardware.cpu.features
    plain_probes = {t: replace(p, name=p.name + PLAIN_SUFFIX, plain=True, once=True)
                    for t, p in zip(types, type_probes, strict=True) if _repacked_here(p, features)}
    tiny = [_tiny_probe(2, False), _tiny_probe(TINY_LAYERS, False), _tiny_probe(TINY_LAYERS, True)]
    hybrid = _hybrid_probe()
    moe_types = tuple(t for t in MOE_TYPES if t in types) if moe_types is None else moe_types
    moe_probes = [_moe_probe(t, moe_shape or MOE_PROBE_SHAPE) for t in moe_types]
    # experts of a type this CPU repacks run other kernels without the copies: measured so too
    plain_moe_probes = {p.moe_type: replace(p, name=p.name + PLAIN_SUFFIX, plain=True, once=True)
                        for p in moe_probes if p.moe_type in plain_probes}
    attention = [_attention_probe(*heads, attention_layers) for heads in ATTENTION_HEADS]
    probes = [*type_probes, *plain_probes.values(), *tiny, *moe_probes, *plain_moe_probes.values(), *attention, hybrid]
    runs = [(probe, (0, *attention_depths) if probe.attention else (0,)) for probe in probes]
    total = len(runs) * rounds - sum(rounds - 1 for probe, _ in runs if probe.once)
    for probe in probes:  # sparse files of zero weights (the kernels' speed does not depend on the values), kept
        if probe.plain:
            continue  # its repacked twin's file
        progress(f"writing probe {probe.name}", 0, total)
        ensure_synthetic_table(probe.spec, "Q8_0", probe.table, probe.path, zero_weights=True)
    seen: dict[str, list[dict[str, float]]] = {p.name: [] for p, _ in runs}
    done = 0
    for round_number in range(rounds):
        # every other round runs backwards: a slow stretch of the machine then falls on other probes
        order = [run for run in runs if round_number == 0 or not run[0].once]
        order = order if round_number % 2 == 0 else order[::-1]
        label = f"round {round_number + 1}/{rounds}"
        for (probe, _), figures in zip(order, _measure(order, n_threads, log_dir, _announce(
                order, label, done, total, progress)), strict=True):
            seen[probe.name].append(figures)
        done += len(order)
    progress("done", total, total)
    fastest = {key: {test: min(f[test] for f in figures) for test in figures[0]} for key, figures in seen.items()}
    best = {name: (tests.get("tg", 0.0), tests.get(PP, 0.0)) for name, tests in fastest.items()}
    spreads = []  # how far the rounds disagree, on decode (an MoE probe has none: on its prefill)
    for figures in seen.values():
        values = [f["tg"] if "tg" in f else f[PP] for f in figures]
        if len(values) > 1:
            spreads.append((max(values) - min(values)) / max(values))
    token_s = layer_s = moe_layer_s = 0.0

    def type_rate(probe: _Probe) -> TypeRate:
        """A type probe's rates: its decode time less the fixed costs found so far, its prefill less the output
        token's share (at the decode rate)."""
        decode_s, prefill_s = best[probe.name]
        shape = probe.spec.shape()
        decode = TypeRate(decode_bytes_per_token(probe.table, shape)
                          / max(decode_s - token_s - layer_s * probe.spec.n_layer, 0.5 * decode_s), 1.0)
        batch_s = max(prefill_s - _output_token_s(probe, lambda name: decode), 0.5 * prefill_s)
        return TypeRate(decode.tg_bytes_per_s, prefill_bytes_per_token(probe.table, shape) / batch_s)

    for _ in range(SOLVE_ITERATIONS):
        # a probe's decode time is its weights at its type's rate plus the fixed costs of its token and layers;
        # the tiny probes are nearly all fixed cost. Each estimate sharpens the other: a few passes settle both.
        rates = {t: type_rate(p) for t, p in zip(types, type_probes, strict=True)}
        reference = rates.get("Q8_0", next(iter(rates.values())))
        two, many, moe_many = (best[p.name][0] - decode_bytes_per_token(p.table, p.spec.shape())
                               / reference.tg_bytes_per_s for p in tiny)
        layer_s = max(0.0, (many - two) / (TINY_LAYERS - 2))
        token_s = max(0.0, two - 2 * layer_s)
        moe_layer_s = max(0.0, (moe_many - many) / TINY_LAYERS)
    moe_pp_rates = {probe.moe_type: _expert_pp_rate(probe, best[probe.name][1], rates, reference)
                    for probe in moe_probes}
    plain_rates = {t: type_rate(p) for t, p in plain_probes.items()}
    # a linear-attention layer's decode work beyond its weights, per byte of its state: the hybrid probe less the
    # dense one of as many layers and their weights' difference at the Q8_0 rate
    hybrid_shape, dense = hybrid.spec.shape(), tiny[1]
    state_bytes = recurrent_layers(hybrid_shape, range(hybrid_shape.n_layer)) * recurrent_state_bytes(hybrid_shape)
    extra_weights = (decode_bytes_per_token(hybrid.table, hybrid_shape)
                     - decode_bytes_per_token(dense.table, dense.spec.shape())) / reference.tg_bytes_per_s
    recurrent_byte_s = max(0.0, best[hybrid.name][0] - best[dense.name][0] - extra_weights) / state_bytes
    plain_moe_pp_rates = {t: _expert_pp_rate(p, best[p.name][1], rates | plain_rates, reference)
                          for t, p in plain_moe_probes.items()}
    moe_pp_rates_few = {p.moe_type: _expert_pp_rate(p, fastest[p.name][f"pp{_few_prompt(p)}"], rates, reference,
                                                    _few_prompt(p)) for p in moe_probes}
    plain_moe_pp_rates_few = {t: _expert_pp_rate(p, fastest[p.name][f"pp{_few_prompt(p)}"], rates | plain_rates,
                                                 reference, _few_prompt(p)) for t, p in plain_moe_probes.items()}
    points = []
    for probe in attention:
        spec = probe.spec
        head_work = spec.n_layer * spec.n_head * spec.head_dim
        shallow, deep = best[probe.name], fastest[probe.name]
        for depth in attention_depths:
            # its slowdown at depth, per cell and unit of head work, decoding and prefilling
            points.append((spec.n_head // spec.n_head_kv, depth,
                           max(0.0, (deep[f"tg@{depth}"] - shallow[0]) / (depth * head_work)),
                           max(0.0, (deep[f"{PP}@{depth}"] - shallow[1]) / (depth * head_work))))
    low, high = BANDWIDTH_BYTES
    bandwidth = ram_bandwidth_trials(n_threads, min(high, max(low, 2 * machine.hardware.cpu.last_level_cache_bytes)),
                                     BANDWIDTH_TRIALS)
    ram_gbps = statistics.median(bandwidth)
    calibration = SpeedCalibration(calibration_key(machine, n_threads), rates, token_s, layer_s, moe_layer_s,
                                   tuple(points), statistics.median(spreads) if spreads else 0.0,
                                   ram_gbps, (max(bandwidth) - min(bandwidth)) / ram_gbps,
                                   datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   round(time.monotonic() - started, 1), moe_pp_rates=moe_pp_rates,
                                   plain_rates=plain_rates, plain_moe_pp_rates=plain_moe_pp_rates,
                                   moe_pp_rates_few=moe_pp_rates_few, plain_moe_pp_rates_few=plain_moe_pp_rates_few,
                                   recurrent_byte_s=recurrent_byte_s)
    data = read_json(_path())
    data[calibration.key] = calibration.to_json()
    write_json(_path(), data)
    forget_speed_observations(calibration.key)
    return calibration
