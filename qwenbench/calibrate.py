"""`qwenbench calibrate`: measure, with real llama.cpp runs of small probe models, what the speed model needs on
this machine: the decode and prefill rate of each weight type, the fixed cost of a token and of a layer, the
extra cost of an MoE layer. Cached per machine, llama.cpp build, backend and thread count.

A type's probe is a Qwen3-shaped model (n_embd 1024, n_ff 3072: real row lengths, so llama.cpp runs the kernels
it runs for real models) whose every matrix is of that type, with layers enough for about 256 MB, beyond the
last-level cache, so decode reads it from RAM as it does a real model. Overheads come from tiny models (n_embd
64) of 2 and 8 layers, dense and MoE, whose weights are small enough that the fixed costs dominate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .catalog import ModelSpec, get_model
from .errors import QwenbenchError
from .harness import run_benchmark
from .machine import MachineInfo
from .modelfile import ensure_synthetic_table, open_model_file
from .paths import cache_dir, logs_dir, read_json, write_json
from .recipe import tensor_layout
from .runspec import RunSettings
from .speed import CALIBRATED_TYPES, PROBE_PROMPT_CELLS, SpeedCalibration, TypeRate, prefill_bytes_per_token
from .tensors import TensorInfo, TensorTable

PROBE_SHAPE = {"n_embd": 1024, "n_ff": 3072, "n_head": 8, "n_head_kv": 4, "head_dim": 128}
TINY_SHAPE = {"n_embd": 64, "n_ff": 128, "n_head": 2, "n_head_kv": 1, "head_dim": 32}
TINY_MOE = {"n_expert": 8, "n_expert_used": 2, "n_ff_exp": 64}
PROBE_BYTES = 256 << 20
PROBE_GEN, PROBE_PROMPT, PROBE_REPS = 16, 2 * PROBE_PROMPT_CELLS, 2
ATTENTION_DEPTH = 1024  # cells of cache for the attention probe
ROUNDS = 2
OnProgress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class _Probe:
    name: str
    spec: ModelSpec
    table: TensorTable

    @property
    def path(self) -> Path:
        return cache_dir() / "probes" / f"{self.name}.gguf"


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
    n_layer = max(2, min(32, round((target_bytes - vocab) / layer)))
    spec = base.with_overrides(n_layer=n_layer, **shape)
    return _Probe(f"type-{type_name.lower()}-e{shape['n_embd']}-l{n_layer}", spec, _uniform_table(spec, type_name))


def _tiny_probe(n_layer: int, moe: bool) -> _Probe:
    key, extra = ("qwen3-30b-a3b", TINY_MOE) if moe else ("qwen3-0.6b", {})
    spec = get_model(key).with_overrides(n_layer=n_layer, **TINY_SHAPE, **extra)
    return _Probe(f"tiny-{'moe' if moe else 'dense'}-l{n_layer}", spec, _uniform_table(spec, "Q8_0"))


def calibration_key(machine: MachineInfo, n_threads: int) -> str:
    backends = ",".join(machine.hardware.backends) or "none"
    return f"{machine.machine_id}|llama-cpp-python {_llama_version()}|{backends}|t{n_threads}"


def _llama_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return "missing"


def _path() -> Path:
    return cache_dir() / "speed.json"


def load_speed_calibration(key: str) -> tuple[SpeedCalibration | None, str | None]:
    """(the cached calibration for `key`, or None; a note when the cache was unreadable or foreign)."""
    raw = _path()
    data = read_json(raw)
    if raw.exists() and not data:
        return None, f"{raw} is unreadable or not a calibration: calibrating afresh"
    entry = data.get(key)
    if entry is None:
        return None, None
    try:
        return SpeedCalibration.from_json(entry), None
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"the calibration cached for this machine is damaged ({type(exc).__name__}): calibrating afresh"


def _fastest_s(samples_ns: tuple[int, ...], n_tokens: int) -> float:
    """Seconds per token of a test's fastest repetition (a disturbance only ever slows one down)."""
    return min(samples_ns) / 1e9 / n_tokens


def _measure(probe: _Probe, machine: MachineInfo, n_threads: int, log_dir: Path,
             depth: int = 0) -> tuple[float, float]:
    """(tg seconds per token, pp seconds per token) of one probe, at `depth` cells of cache."""
    path, _ = ensure_synthetic_table(probe.spec, "Q8_0", probe.table, probe.path)
    model = open_model_file(path)
    settings = RunSettings(model_path=str(path), n_prompt=(PROBE_PROMPT,), n_gen=(PROBE_GEN,), n_depth=(depth,),
                           repetitions=PROBE_REPS, n_threads=n_threads, n_gpu_layers=0, ttft=False)
    report = run_benchmark(settings, model, machine, log_dir=log_dir, timeout_s=300)
    if report.interrupted:
        raise KeyboardInterrupt
    by_kind = {}
    for record in report.records:
        if record.status != "ok":
            raise QwenbenchError(f"calibration probe {probe.name} failed: {record.status}: {record.error}",
                                 hint=f"llama.cpp's log: {report.log_path}")
        by_kind[record.test[:2]] = record
    return _fastest_s(by_kind["tg"].samples_ns, PROBE_GEN), _fastest_s(by_kind["pp"].samples_ns, PROBE_PROMPT)


def calibrate(machine: MachineInfo, n_threads: int, *, types: tuple[str, ...] = CALIBRATED_TYPES,
              rounds: int = ROUNDS, probe_shape: dict[str, int] | None = None, probe_bytes: int = PROBE_BYTES,
              on_progress: OnProgress | None = None) -> SpeedCalibration:
    """Measure every weight type and the fixed costs, store the result under this machine's key, return it.

    Probes are measured in interleaved rounds and each keeps its fastest: on a shared machine a neighbour can
    slow a stretch of seconds several-fold, and a disturbance only ever slows. The rounds' disagreement is the
    calibration's spread."""
    started = time.monotonic()
    progress = on_progress or (lambda what, done, total: None)
    log_dir = logs_dir()
    probes = [_type_probe(t, probe_shape or PROBE_SHAPE, probe_bytes) for t in types]
    probes += [_tiny_probe(2, False), _tiny_probe(8, False), _tiny_probe(8, True)]
    # the Q8_0 probe again (or the first), with a filled cache: its slowdown is attention's cost
    attention = next((p for p, t in zip(probes, types, strict=False) if t == "Q8_0"), probes[0])
    total = (len(probes) + 1) * rounds
    seen: dict[str, list[tuple[float, float]]] = {p.name: [] for p in probes}
    deep: list[tuple[float, float]] = []
    for round_number in range(rounds):
        for index, probe in enumerate(probes):
            progress(f"round {round_number + 1}/{rounds}: {probe.name}", round_number * (len(probes) + 1) + index,
                     total)
            seen[probe.name].append(_measure(probe, machine, n_threads, log_dir))
        progress(f"round {round_number + 1}/{rounds}: attention at depth {ATTENTION_DEPTH}",
                 round_number * (len(probes) + 1) + len(probes), total)
        deep.append(_measure(attention, machine, n_threads, log_dir, ATTENTION_DEPTH))
    progress("done", total, total)
    best = {name: (min(t for t, _ in runs), min(p for _, p in runs)) for name, runs in seen.items()}
    spreads = [(max(t for t, _ in runs) - min(t for t, _ in runs)) / max(t for t, _ in runs)
               for runs in seen.values() if len(runs) > 1]
    rates = {t: TypeRate(p.table.n_bytes / best[p.name][0],
                         prefill_bytes_per_token(p.table, p.spec.shape()) / best[p.name][1])
             for t, p in zip(types, probes, strict=False)}
    reference = rates.get("Q8_0", next(iter(rates.values())))
    # the tiny probes' own weights, read at the Q8_0 rate, leave their fixed costs
    two, eight, moe_eight = (best[p.name][0] - p.table.n_bytes / reference.tg_bytes_per_s
                             for p in probes[len(types):])
    layer_s = max(0.0, (eight - two) / 6)
    token_s = max(0.0, two - 2 * layer_s)
    moe_layer_s = max(0.0, (moe_eight - eight) / 8)
    spec = attention.spec
    head_work = ATTENTION_DEPTH * spec.n_layer * spec.n_head * spec.head_dim
    shallow = best[attention.name]
    attention_tg_s = max(0.0, (min(t for t, _ in deep) - shallow[0]) / head_work)
    attention_pp_s = max(0.0, (min(p for _, p in deep) - shallow[1]) / head_work)
    calibration = SpeedCalibration(calibration_key(machine, n_threads), rates, token_s, layer_s, moe_layer_s,
                                   attention_tg_s, attention_pp_s, statistics.median(spreads) if spreads else 0.0,
                                   datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   round(time.monotonic() - started, 1))
    data = read_json(_path())
    data[calibration.key] = calibration.to_json()
    write_json(_path(), data)
    return calibration
