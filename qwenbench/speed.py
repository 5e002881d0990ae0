"""The speed model: predicted prompt (pp) and generation (tg) tokens/s and the chat prompt's TTFT for any model, quant
and placement, from its tensor table and what `qwenbench calibrate` measured on this machine. Pure: no I/O.

Decode reads every weight a token uses once, so a token costs, on the host, the sum over its tensors of bytes /
(the rate this machine's llama.cpp decodes that weight type at), plus a fixed cost per token and per layer (graph,
thread wake-ups, synchronisation), plus attention over the KV cache filled so far. Prefill is compute: each prompt
token costs the weight bytes it multiplies through / (the rate that weight type is processed at in a batch; MoE
experts at their own rate, as their batched kernels differ). The rates are measured per weight type with real
llama.cpp runs of small probe models, so a model that never ran here is predicted from the types it is made of. A
type the calibration lacks takes the rate of the measured type closest in bits per weight; a GPU's share uses its
spec-sheet bandwidth.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .fit import (
    KV_CELL_PAD,
    ModelShape,
    RunConfig,
    first_gpu_layer,
    has_tied_output,
    kv_bytes_per_layer,
    layer_devices,
    loaded,
    on_gpu,
    recurrent_state_bytes,
    runs_from_repacked_copy,
    tied_output_on_gpu,
    token_read_bytes,
)
from .network import NO_COST, Link, NetworkCost, network_cost
from .tensors import TensorInfo, TensorTable

# the weight types llama-quantize's presets write, which calibration measures
CALIBRATED_TYPES = ("Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_XS", "IQ4_NL", "MXFP4", "F16",
                    "BF16", "F32")
# qwenbench run's TTFT prompt in Qwen3's chat template, as the synthetic tokenizer splits it (136 tokens; a real
# Qwen3 tokenizer needs fewer, so real files come out a little faster)
TTFT_PROMPT_TOKENS = 136
PROBE_PROMPT_CELLS = 64  # the cells a calibration probe's pp128 tokens attend over, on average
# tokens an MoE expert multiplies in a batch, at which calibration measures experts' prefill: a batch of n tokens
# gives each expert n x used / experts, 32 in Qwen3-30B-A3B's pp512 (8 of 128), 16 in Qwen3.6-35B-A3B's (8 of
# 256), 4-9 in their chat prompt's TTFT
EXPERT_BATCH_TOKENS = (4, 32)
# share of the spec bandwidth a GPU's decode reaches (llama.cpp on current NVIDIA cards); a spec-table figure
GPU_DECODE_EFFICIENCY = 0.7


def bits_per_weight(type_name: str) -> float:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return 8 * size / block


def _interpolate(x: float, points: list[tuple[float, tuple[float, float]]]) -> tuple[float, float]:
    """The pair at x, linear between the two points around it, the nearest one beyond them."""
    points = sorted(points)
    if x <= points[0][0]:
        return points[0][1]
    for (low, (a_low, b_low)), (high, (a_high, b_high)) in pairwise(points):
        if x <= high:
            share = (x - low) / (high - low)
            return a_low + share * (a_high - a_low), b_low + share * (b_high - b_low)
    return points[-1][1]


@dataclass(frozen=True)
class TypeRate:
    """One weight type on this machine: decode reads its bytes at tg_bytes_per_s; a prefill batch multiplies
    through them at pp_bytes_per_s (weight bytes x prompt tokens per second)."""

    tg_bytes_per_s: float
    pp_bytes_per_s: float


@dataclass(frozen=True)
class SpeedCalibration:
    """What calibrate measured, for one machine, llama.cpp build, backend and thread count (the key)."""

    key: str
    rates: dict[str, TypeRate]
    token_s: float  # fixed cost of one decoded token
    layer_s: float  # and of each layer in it
    moe_layer_s: float = 0.0  # extra per MoE layer: routing, expert gathers
    # attention over the cache, measured at a few depths and GQA ratios (query heads per KV head): (gqa, depth,
    # decode s, prefill s), the seconds per (cached cell x layer x query head x head dim). Per cell it may change
    # with depth, as the cache outgrows the CPU's caches, and per query head it falls as more query heads share a
    # KV head's rows (the Xeon of issue 10 at 512 cells, 64 layers: 0.42, 0.28 and 0.17 ns at GQA 2, 4 and 8;
    # calibrate measures 2, 4 and 8, see ATTENTION_HEADS there). A depth or ratio between two measured ones takes the
    # interpolation (ratios in log2), one beyond them the nearest.
    attention: tuple[tuple[int, int, float, float], ...] = ()
    spread: float = 0.0  # the calibration's own run-to-run spread (coefficient of variation), for uncertainty
    # RAM copy bandwidth over a buffer far beyond the caches: the median of several trials and their spread
    # ((max - min) / median), for a reader; the model itself uses each type's own decode rate
    ram_gbps: float = 0.0
    ram_spread: float = 0.0
    measured_at: str = ""
    wall_s: float = 0.0
    notes: tuple[str, ...] = ()
    # what measured runs here taught: (kind, moe, factor, models), by which measured speeds beat the calibration's
    # own predictions (refine_from); not stored with the calibration, attached from the runs when it is loaded
    refinement: tuple[tuple[str, bool, float, int], ...] = ()
    # MoE experts' prefill rate per weight type (expert bytes x prompt tokens per second): their batched kernels
    # are not a dense matrix's. Empty in a calibration that did not measure them (the dense rate stands in).
    moe_pp_rates: dict[str, float] = field(default_factory=dict)
    # the rates of the types this CPU backend repacks, measured with repacking off (llama.cpp's -nr): what their
    # weights run at without the repacked copies, and on an RPC worker, which never repacks
    plain_rates: dict[str, TypeRate] = field(default_factory=dict)
    # MoE experts' prefill rate with repacking off, per type this CPU repacks: not the repacked experts' scaled as the
    # dense type's is (on a Zen 4 EPYC VM a Qwen3-30B-A3B Q4_K_M twin prefilled 1.8x as fast unrepacked, 29 % beyond
    # that scaling)
    plain_moe_pp_rates: dict[str, float] = field(default_factory=dict)
    # the same two at EXPERT_BATCH_TOKENS[0] tokens an expert, where moe_pp_rates are at EXPERT_BATCH_TOKENS[1]: an
    # expert multiplying few tokens streams its matrix for each of them (on a Zen 4 EPYC VM non-repacked Q3_K and
    # Q5_K experts ran 2-2.5x slower at 4 tokens an expert than at 32; repacked Q4_K's rate held). Empty: one rate
    moe_pp_rates_few: dict[str, float] = field(default_factory=dict)
    plain_moe_pp_rates_few: dict[str, float] = field(default_factory=dict)
    # a linear-attention layer's decode work (Gated DeltaNet: its state decayed, updated, read) per byte of its state,
    # a decoded token; 0: not measured (the state read and written back at the F32 rate stands in)
    recurrent_byte_s: float = 0.0

    def refined(self, kind: str, moe: bool) -> tuple[float, int]:
        """(factor, measured models) for predictions of this kind (tg, tg-deep, pp, pp-deep, ttft) and model kind."""
        for k, m, factor, models in self.refinement:
            if (k, m) == (kind, moe):
                return factor, models
        return 1.0, 0

    def rate(self, type_name: str, repacked: bool = True) -> tuple[TypeRate, bool]:
        """(rate, measured here) for a weight type; unmeasured ones borrow the closest measured one in bits.
        repacked=False: as it runs without the repacked copies, where this CPU repacks it."""
        if not repacked and type_name in self.plain_rates:
            return self.plain_rates[type_name], True
        if type_name in self.rates:
            return self.rates[type_name], True
        bits = bits_per_weight(type_name)
        nearest = min(self.rates, key=lambda name: abs(bits_per_weight(name) - bits))
        return self.rates[nearest], False

    def expert_pp_rate(self, type_name: str, repacked: bool = True,
                       tokens_per_expert: float = 0.0) -> tuple[float, bool]:
        """(prefill rate, measured here) for MoE experts of a weight type, each multiplying `tokens_per_expert`
        tokens of a batch (0: as many as the calibration's probe, EXPERT_BATCH_TOKENS[1]): between the two measured
        batches the rate interpolated in log2 of the tokens, beyond them the nearest's."""
        many, measured = self._expert_rate(type_name, repacked, self.moe_pp_rates, self.plain_moe_pp_rates)
        few_tokens, many_tokens = EXPERT_BATCH_TOKENS
        if not self.moe_pp_rates_few or not tokens_per_expert or tokens_per_expert >= many_tokens:
            return many, measured
        few, _ = self._expert_rate(type_name, repacked, self.moe_pp_rates_few, self.plain_moe_pp_rates_few)
        at = math.log2(max(tokens_per_expert, few_tokens) / few_tokens) / math.log2(many_tokens / few_tokens)
        return few + (many - few) * at, measured

    def _expert_rate(self, type_name: str, repacked: bool, rates: dict[str, float],
                     plain_rates: dict[str, float]) -> tuple[float, bool]:
        """(rate, measured here) of a type's experts from one batch size's measured `rates` (`plain_rates` without
        repacking). An unmeasured type takes its dense rate scaled as the measured types' experts are on the median;
        without any measured, its dense rate. repacked=False: as measured without repacking, else the repacked
        experts' rate scaled as the type's dense rate is without repacking."""
        if not repacked and type_name in plain_rates:
            return plain_rates[type_name], True
        if type_name in rates:
            if not repacked and type_name in self.plain_rates and type_name in self.rates:
                scale = self.plain_rates[type_name].pp_bytes_per_s / self.rates[type_name].pp_bytes_per_s
                return rates[type_name] * scale, True
            return rates[type_name], True
        rate, _ = self.rate(type_name)
        ratios = [expert / self.rates[name].pp_bytes_per_s for name, expert in rates.items() if name in self.rates]
        return rate.pp_bytes_per_s * (statistics.median(ratios) if ratios else 1.0), False

    def attention_at(self, depth: float, gqa: float = 4.0) -> tuple[float, float]:
        """(decode, prefill) seconds per cell x layer x query head x head dim, at `depth` cells of cache, for a
        model whose KV heads each serve `gqa` query heads."""
        by_ratio = sorted({ratio for ratio, *_ in self.attention})
        if not by_ratio:
            return 0.0, 0.0
        at_ratio = [_interpolate(depth, [(d, (tg, pp)) for r, d, tg, pp in self.attention if r == ratio])
                    for ratio in by_ratio]
        return _interpolate(math.log2(max(gqa, 1.0)), [(math.log2(r), costs) for r, costs
                                                        in zip(by_ratio, at_ratio, strict=True)])

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "token_s": self.token_s, "layer_s": self.layer_s, "moe_layer_s": self.moe_layer_s,
                "attention": [list(point) for point in self.attention],
                "spread": self.spread, "ram_gbps": self.ram_gbps, "ram_spread": self.ram_spread,
                "measured_at": self.measured_at, "wall_s": self.wall_s,
                "notes": list(self.notes),
                "rates": {name: {"tg_bytes_per_s": r.tg_bytes_per_s, "pp_bytes_per_s": r.pp_bytes_per_s}
                          for name, r in self.rates.items()},
                "moe_pp_rates": dict(self.moe_pp_rates),
                "plain_moe_pp_rates": dict(self.plain_moe_pp_rates),
                "moe_pp_rates_few": dict(self.moe_pp_rates_few),
                "plain_moe_pp_rates_few": dict(self.plain_moe_pp_rates_few),
                "recurrent_byte_s": self.recurrent_byte_s,
                "plain_rates": {name: {"tg_bytes_per_s": r.tg_bytes_per_s, "pp_bytes_per_s": r.pp_bytes_per_s}
                                for name, r in self.plain_rates.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpeedCalibration:
        rates, plain_rates = ({name: TypeRate(float(r["tg_bytes_per_s"]), float(r["pp_bytes_per_s"]))
                               for name, r in data.get(key, {}).items()} for key in ("rates", "plain_rates"))
        if not rates or any(r.tg_bytes_per_s <= 0 or r.pp_bytes_per_s <= 0
                            for r in (*rates.values(), *plain_rates.values())):
            raise ValueError("a calibration without positive rates")
        attention = tuple((int(ratio), int(depth), float(tg), float(pp))
                          for ratio, depth, tg, pp in data.get("attention", ()))
        expert_rates = {key: {str(name): float(rate) for name, rate in data.get(key, {}).items()}
                        for key in ("moe_pp_rates", "plain_moe_pp_rates", "moe_pp_rates_few", "plain_moe_pp_rates_few")}
        if any(rate <= 0 for rates_of in expert_rates.values() for rate in rates_of.values()):
            raise ValueError("a calibration with a non-positive expert rate")
        return cls(str(data["key"]), rates, float(data["token_s"]), float(data["layer_s"]),
                   float(data.get("moe_layer_s", 0.0)), attention, float(data.get("spread", 0.0)),
                   float(data.get("ram_gbps", 0.0)), float(data.get("ram_spread", 0.0)),
                   str(data.get("measured_at", "")), float(data.get("wall_s", 0.0)), tuple(data.get("notes", ())),
                   plain_rates=plain_rates, **expert_rates,
                   recurrent_byte_s=max(0.0, float(data.get("recurrent_byte_s", 0.0))))


@dataclass(frozen=True)
class SpeedObservation:
    """One measured test beside what the calibration alone predicted for it."""

    kind: str  # tg and pp without depth, tg-deep and pp-deep with, ttft
    moe: bool
    model: str
    ratio: float  # measured / predicted speed (TTFT: predicted / measured ms): above 1, faster than predicted

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "moe": self.moe, "model": self.model, "ratio": round(self.ratio, 4)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpeedObservation:
        return cls(str(data["kind"]), bool(data["moe"]), str(data["model"]), float(data["ratio"]))


# a ratio beyond these is a measurement gone wrong (swapping, a machine busy elsewhere), not a lesson
PLAUSIBLE_RATIO = (0.25, 4.0)


def refine_from(observations: list[SpeedObservation]) -> tuple[tuple[str, bool, float, int], ...]:
    """Per kind of prediction and of model (dense, MoE): the median over measured models of each model's median
    ratio. A model counts once however often it ran, so one model measured many times cannot outvote the rest;
    each prediction then uses what other models, and its own if it ran, taught."""
    grouped: dict[tuple[str, bool], dict[str, list[float]]] = {}
    low, high = PLAUSIBLE_RATIO
    for o in observations:
        if low <= o.ratio <= high:
            grouped.setdefault((o.kind, o.moe), {}).setdefault(o.model, []).append(o.ratio)
    return tuple((kind, moe, statistics.median(statistics.median(r) for r in by_model.values()), len(by_model))
                 for (kind, moe), by_model in sorted(grouped.items()))


@dataclass(frozen=True)
class SpeedPrediction:
    tg_ts: float
    pp_ts: float
    ttft_ms: float
    source: str  # calibrated here | calibrated here, GPU from the spec table | ...
    uncertainty: float  # relative, one standard deviation
    parts: dict[str, float] = field(default_factory=dict)  # seconds per token by cause, to explain a figure

    def to_json(self) -> dict[str, Any]:
        return {"tg_ts": round(self.tg_ts, 2), "pp_ts": round(self.pp_ts, 1), "ttft_ms": round(self.ttft_ms),
                "source": self.source, "uncertainty": round(self.uncertainty, 3),
                "parts_ms": {k: round(v * 1e3, 3) for k, v in self.parts.items()}}


def _runs_for_outputs_only(tensor: TensorInfo, shape: ModelShape) -> bool:
    """Whether a prompt's tokens skip this tensor but for the ones whose logits are wanted (a prompt's last): the
    output layer, and the last layer's FFN, which llama.cpp's graphs run after keeping only the output rows
    (`inp_out_ids`). Measured on the Xeon of issue 10, uniform Q4_K probes of 1, 2, 4 and 10 layers: pp128 per
    token grows 0.0905 ms a layer, and the 1-layer probe costs only its attention and the output token's share."""
    if tensor.layer is None:
        return tensor.name != "token_embd.weight"  # the output layer (a separate one; a tied one is a lookup too)
    return tensor.layer == shape.n_layer_trunk - 1 and tensor.name.split(".")[2].startswith("ffn_")


def prefill_token_bytes(tensor: TensorInfo, shape: ModelShape, tied_output: bool) -> int:
    """The bytes of a tensor each prompt token multiplies through: the layers' but the last one's FFN. The
    embeddings are a lookup; the output layer and the last FFN work for the output token only
    (output_token_bytes)."""
    if tensor.layer is None or _runs_for_outputs_only(tensor, shape):
        return 0
    return token_read_bytes(tensor, shape, tied_output)


def output_token_bytes(tensor: TensorInfo, shape: ModelShape, tied_output: bool) -> int:
    """The bytes a prompt's one output token reads that its other tokens do not: once per prompt, at the decode
    rate (the output layer, tied or not, and the last layer's FFN)."""
    if tensor.name == "token_embd.weight":
        return tensor.n_bytes if tied_output else 0
    return token_read_bytes(tensor, shape, tied_output) if _runs_for_outputs_only(tensor, shape) else 0


def decode_bytes_per_token(table: TensorTable, shape: ModelShape) -> float:
    """The weight bytes one decoded token reads (llama.cpp's loaded tensors, all on the host), without any cache or
    recurrent state: what a decode rate is measured in."""
    tied_output = has_tied_output(table)
    return sum(token_read_bytes(t, shape, tied_output) for t in table.tensors if loaded(t, shape))


def prefill_bytes_per_token(table: TensorTable, shape: ModelShape, *, experts: bool | None = None) -> float:
    """The weight bytes one prompt token multiplies through: what a prefill rate is measured and predicted in;
    experts=True counts only MoE experts' (at their used share), False all but theirs."""
    tied_output = has_tied_output(table)
    return sum(prefill_token_bytes(t, shape, tied_output) for t in table.tensors
               if experts is None or t.is_expert == experts)


def attended_cells(shape: ModelShape, layers: range, cells: float) -> float:
    """Cached cells x layers that one token's attention covers in `layers`, with `cells` in the cache: only attention
    layers attend over it (a sliding-window one over its window at most); a hybrid's linear-attention layers carry
    a fixed-size state instead (recurrent_state_s), and the MTP block does not run."""
    total = 0.0
    for layer in layers:
        kind = shape.layer_kind(layer)
        if kind == "full":
            total += cells
        elif kind == "swa":
            total += min(cells, shape.n_swa)
    return total


def recurrent_layers(shape: ModelShape, layers: range) -> int:
    """How many of `layers` are linear attention (a recurrent state, no KV cache)."""
    return sum(1 for layer in layers if shape.layer_kind(layer) == "recurrent")


def recurrent_state_s(shape: ModelShape, host_layers: int, calibration: SpeedCalibration) -> float:
    """Seconds one decoded token spends in the host's linear-attention layers beyond their weights: their state's
    bytes at the cost per byte calibrate measured, else that state read and written back at the F32 rate."""
    layers = recurrent_layers(shape, range(host_layers))
    if not layers:
        return 0.0
    if calibration.recurrent_byte_s:
        return layers * recurrent_state_bytes(shape) * calibration.recurrent_byte_s
    return 2 * layers * recurrent_state_bytes(shape) / calibration.rate("F32")[0].tg_bytes_per_s


def _cells(n_tokens: int) -> int:
    """The KV cells a ubatch attends over with n_tokens in the cache: llama.cpp pads the used cells."""
    return max(KV_CELL_PAD, -(-n_tokens // KV_CELL_PAD) * KV_CELL_PAD)


def wire_cost(shape: ModelShape, config: RunConfig, links: tuple[Link | None, ...], *, n_tokens: int,
              depth: int) -> NetworkCost:
    """The network time of one ubatch of n_tokens after depth cached ones, on this configuration's devices."""
    if not config.gpu or not any(links):
        return NO_COST
    return network_cost(shape, layer_devices(shape, config), links, n_tokens=n_tokens, n_outputs=1,
                        n_kv=_cells(depth + n_tokens), cpu_moe_layers=config.n_cpu_moe)


def prefill_wire_seconds(shape: ModelShape, config: RunConfig, links: tuple[Link | None, ...], *, n_tokens: int,
                         depth: int) -> float:
    """Wire seconds per prompt token of a prompt of n_tokens after depth cached ones: each ubatch's."""
    step = max(1, config.n_ubatch)
    cost = sum(wire_cost(shape, config, links, n_tokens=min(step, n_tokens - start), depth=depth + start).seconds
               for start in range(0, n_tokens, step))
    return cost / n_tokens if n_tokens else 0.0


def wire_seconds(kind: str, shape: ModelShape, config: RunConfig, links: tuple[Link | None, ...], *,
                 n_prompt: int = 512, depth: int = 0, ttft_prompt_tokens: int = TTFT_PROMPT_TOKENS) -> float:
    """The network's part of a test as predict_speed prices it: seconds per generated token (tg), per prompt
    token (pp), per request (ttft: the chat prompt and its first token)."""
    if kind == "tg":
        return wire_cost(shape, config, links, n_tokens=1, depth=depth).seconds
    if kind == "pp":
        return prefill_wire_seconds(shape, config, links, n_tokens=n_prompt, depth=depth)
    return (ttft_prompt_tokens * prefill_wire_seconds(shape, config, links, n_tokens=ttft_prompt_tokens, depth=0)
            + wire_cost(shape, config, links, n_tokens=1, depth=depth).seconds)


def predict_speed(table: TensorTable, shape: ModelShape, config: RunConfig, calibration: SpeedCalibration, *,
                  depth: int = 0, n_prompt: int = 512, ttft_prompt_tokens: int = TTFT_PROMPT_TOKENS,
                  gpu_gbps: float | None = None, links: tuple[Link | None, ...] = ()) -> SpeedPrediction:
    """Predicted tg and pp tokens/s at `depth` tokens of context, and the chat prompt's TTFT.

    With RPC workers as the offload devices (config.offload_kind "rpc"), their layers are CPU work at this
    machine's rates (a worker of unknown speed is taken as fast as this one), and each ubatch pays the wire time
    of `links` (network.py)."""
    tied_output = has_tied_output(table)
    on_workers = config.offload_kind == "rpc"
    tg_host = tg_gpu = pp_host = pp_gpu = 0.0
    output_host = 0.0  # seconds a prompt's output token costs on the host beyond its other tokens, once a prompt
    borrowed: set[str] = set()
    borrowed_experts: set[str] = set()  # MoE expert types whose prefill rate was not measured
    expert_bytes: dict[tuple[str, bool], float] = {}  # the host's experts' prefill bytes a token, by (type, repacked)
    output_copy = tied_output_on_gpu(table, shape, config)
    for tensor in table.tensors:
        if not loaded(tensor, shape):
            continue  # the MTP block: llama.cpp does not load it
        offloaded = on_gpu(tensor, shape, config)
        repacked = runs_from_repacked_copy(tensor, shape, config)  # plain_rates where not (a worker's, for one)
        rate, measured = calibration.rate(tensor.type_name, repacked)
        if not measured:
            borrowed.add(tensor.type_name)
        tg_bytes = token_read_bytes(tensor, shape, tied_output)
        pp_bytes = prefill_token_bytes(tensor, shape, tied_output)
        copy = tensor.name == "token_embd.weight" and output_copy
        if (copy or offloaded) and not on_workers:
            # the output layer's copy on the device (the host's lookup of a row is nothing), or a device's tensor
            tg_gpu += tg_bytes
            pp_gpu += pp_bytes
            continue
        output_host += output_token_bytes(tensor, shape, tied_output) / rate.tg_bytes_per_s
        if tensor.is_expert and shape.n_expert:
            if not calibration.expert_pp_rate(tensor.type_name, repacked)[1]:
                borrowed_experts.add(tensor.type_name)
            tg_host += tg_bytes / rate.tg_bytes_per_s
            expert_bytes[tensor.type_name, repacked] = expert_bytes.get((tensor.type_name, repacked), 0.0) + pp_bytes
        else:
            tg_host += tg_bytes / rate.tg_bytes_per_s
            pp_host += pp_bytes / rate.pp_bytes_per_s
    parts = {"weights": tg_host, "fixed": calibration.token_s + calibration.layer_s * shape.n_layer_trunk
             + (calibration.moe_layer_s * shape.n_layer_trunk if shape.is_moe else 0.0)}
    first = first_gpu_layer(shape.n_layer, config.n_gpu_layers) if config.gpu and not on_workers else shape.n_layer + 1
    gpu_layers = max(0, shape.n_layer - first)
    host_layers = shape.n_layer - gpu_layers
    head_work = shape.n_head * shape.head_dim_k  # per cached cell and attention layer
    gqa = shape.n_head / max(1, shape.n_head_kv)
    state_s = recurrent_state_s(shape, host_layers, calibration)
    if state_s:
        parts["recurrent state"] = state_s
    if depth:
        # each token attends over the cache so far: measured per cell, layer, head and head dimension
        parts["attention"] = (attended_cells(shape, range(host_layers), depth) * head_work
                              * calibration.attention_at(depth, gqa)[0])
        per_cell = kv_bytes_per_layer(shape, KV_CELL_PAD, config.type_k, config.type_v) / KV_CELL_PAD
        tg_gpu += per_cell * attended_cells(shape, range(host_layers, shape.n_layer), depth)

    def prefill_s(n_tokens: int, at_depth: int) -> float:
        """Host seconds per prompt token of a prompt of n_tokens after at_depth cells: the weights' batch work, the
        output token's share, and attention over the depth and, on average, half the prompt, less the half-prompt
        the probes' rates already hold (PROBE_PROMPT_CELLS)."""
        attended = at_depth + n_tokens / 2
        # each of a batch's experts multiplies its share of the batch's tokens, fewer than the probe's in short prompts
        # and in models of many experts
        per_expert = min(n_tokens, config.n_ubatch) * shape.n_expert_used / max(1, shape.n_expert)
        experts_s = sum(n_bytes / calibration.expert_pp_rate(type_name, repacked, per_expert)[0]
                        for (type_name, repacked), n_bytes in expert_bytes.items())
        return (pp_host + experts_s + output_host / n_tokens
                + attended_cells(shape, range(host_layers), max(0.0, attended - PROBE_PROMPT_CELLS)) * head_work
                * calibration.attention_at(attended, gqa)[1])

    network = wire_cost(shape, config, links, n_tokens=1, depth=depth)
    if network.round_trips:
        parts["network"] = network.seconds

    def prefill_wire_s(n_tokens: int, at_depth: int) -> float:
        if not network.round_trips:
            return 0.0
        return prefill_wire_seconds(shape, config, links, n_tokens=n_tokens, depth=at_depth)

    source = "calibrated here"
    if on_workers and config.gpu:
        source += ", the workers' CPUs taken as fast as this one's"
    if tg_gpu:
        if not gpu_gbps:
            return SpeedPrediction(0.0, 0.0, 0.0, "no GPU bandwidth known", 1.0, parts)
        parts["gpu"] = tg_gpu / (gpu_gbps * 1e9 * GPU_DECODE_EFFICIENCY)
        source += ", GPU from the spec table"
    tg_seconds = sum(parts.values())
    # a prompt token costs its weights' batch work; a GPU's share of prefill is taken as free beside the host's
    gpu_prefill_s = pp_gpu / (gpu_gbps * 1e9 * 50) if pp_gpu and gpu_gbps else 0.0
    pp_seconds = prefill_s(n_prompt, depth) + gpu_prefill_s + prefill_wire_s(n_prompt, depth)
    pp_ts = 1.0 / pp_seconds if pp_seconds > 0 else 0.0
    tg_ts = 1.0 / tg_seconds if tg_seconds > 0 else 0.0
    ttft_s = (ttft_prompt_tokens * (prefill_s(ttft_prompt_tokens, 0) + gpu_prefill_s
                                    + prefill_wire_s(ttft_prompt_tokens, 0)) + (1.0 / tg_ts if tg_ts else 0.0))
    if borrowed:
        source += f" ({', '.join(sorted(borrowed))} from the nearest measured type)"
    if borrowed_experts:
        source += f" (MoE experts of {', '.join(sorted(borrowed_experts))} at a borrowed prefill rate)"
    if not tg_gpu and calibration.refinement:  # what CPU runs taught applies to CPU placements
        deep = "-deep" if depth else ""
        factors = {kind: calibration.refined(kind, shape.is_moe) for kind in ("tg" + deep, "pp" + deep, "ttft")}
        tg_ts *= factors["tg" + deep][0]
        pp_ts *= factors["pp" + deep][0]
        ttft_s /= factors["ttft"][0]
        models = max(n for _, n in factors.values())
        if models:
            source += f", refined by {models} measured model{'s' if models > 1 else ''}"
    uncertainty = (max(0.05, calibration.spread) + (0.1 if borrowed or borrowed_experts else 0.0)
                   + (0.15 if tg_gpu else 0.0) + (0.1 if on_workers and config.gpu else 0.0))
    return SpeedPrediction(tg_ts, pp_ts, ttft_s * 1e3, source, uncertainty, parts)
