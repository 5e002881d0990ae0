"""The memory and speed model of a llama.cpp run. Pure arithmetic over a tensor table: no I/O.

Where each tensor lives (this llama.cpp offloads the output layer first, keeps token_embd on the
CPU, and keeps the experts of the first n_cpu_moe layers in host RAM), how many bytes each device
needs (weights exact from the GGUF header; KV cache exact; the CPU backend's repacked weight copies
exact by its rules; compute buffers and per-process overhead calibrated from measurement), and how
fast decode can go (bytes read per token on each device over that device's bandwidth).
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from dataclasses import dataclass, field

from gguf import GGMLQuantizationType

from .tensors import TensorInfo, TensorTable

T = GGMLQuantizationType
MIB = 1 << 20
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                 "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}
KV_CELL_PAD = 256
# the architectures whose layers mix linear attention (a recurrent state) and full attention (llama-arch.cpp)
HYBRID_ARCHS = ("qwen35", "qwen35moe", "qwen3next")


def is_linear_attention_layer(layer: int, full_attention_interval: int) -> bool:
    """A hybrid's layer il is full attention when (il + 1) % interval == 0, Gated DeltaNet linear attention
    otherwise (llama.cpp's default recurrent_layer_arr for qwen35, qwen35moe and qwen3next)."""
    return (layer + 1) % full_attention_interval != 0


_LAYER = re.compile(r"^blk\.(\d+)\.")


# layer kinds as users know them: llama.cpp says "recurrent" for Gated DeltaNet layers
_LAYOUT_WORDS = {"full": "full", "recurrent": "linear", "swa": "sliding-window"}


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters the memory model needs (from a GGUF header or the catalog)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ff: int
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    # how each layer attends ("full", "swa": a sliding window of n_swa tokens, "recurrent": linear attention with a
    # fixed-size state); empty: every layer is full attention
    layer_kinds: tuple[str, ...] = ()
    n_swa: int = 0
    # the recurrent state of one linear-attention layer for one sequence, in F32 values: the convolution's last
    # inputs (llama.cpp's n_embd_r) and the DeltaNet state (n_embd_s)
    n_embd_r: int = 0
    n_embd_s: int = 0
    # the MTP block(s) at the end of block_count: llama.cpp skips loading them (load_mtp is off) and gives them
    # no cache in the main context
    n_layer_nextn: int = 0

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def n_layer_trunk(self) -> int:
        return self.n_layer - self.n_layer_nextn

    def layer_kind(self, layer: int) -> str:
        if layer >= self.n_layer_trunk:
            return "mtp"
        return self.layer_kinds[layer] if self.layer_kinds else "full"

    @property
    def is_hybrid(self) -> bool:
        return "recurrent" in self.layer_kinds

    @property
    def attention_layout(self) -> str:
        """The trunk's layers by how they attend, the one wording of `models` and `plan`: "full",
        "36 linear + 12 full" (Gated DeltaNet), "22 sliding-window + 4 full"."""
        counts: dict[str, int] = {}
        for layer in range(self.n_layer_trunk):
            kind = self.layer_kind(layer)
            counts[kind] = counts.get(kind, 0) + 1
        if set(counts) <= {"full"}:
            return "full"
        return " + ".join(f"{n} {_LAYOUT_WORDS[kind]}"
                          for kind, n in sorted(counts.items(), key=lambda kv: kv[0] == "full"))


@dataclass(frozen=True)
class RunConfig:
    """The llama.cpp settings that decide memory and speed."""

    n_ctx: int
    n_gpu_layers: int = -1  # -1: all layers (if there is a GPU backend)
    n_cpu_moe: int = 0
    n_batch: int = 2048
    n_ubatch: int = 512
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = True
    use_mmap: bool = True
    gpu: bool = False  # a GPU backend and a GPU to put layers on
    # what the offload device is: a GPU ("gpu": a driver context beside the buffers) or a llama.cpp RPC worker's
    # device ("rpc": only the buffers, in the worker's memory)
    offload_kind: str = "gpu"
    # the offloaded layers' shares across several offload devices, in llama.cpp's device order (its
    # tensor_split); empty: one device
    tensor_split: tuple[float, ...] = ()
    # the CPU backend's repacked copies of weights it has kernels for (llama.cpp's use_extra_bufts; off: -nr)
    repack: bool = True


@dataclass(frozen=True)
class Calibration:
    """What formulas cannot know, learned from measured runs (defaults: a 2-core x86 Linux machine).

    Host: peak RSS beyond weights, repacked copies, KV cache and output buffer is
    host_base_bytes + host_activation_factor * n_layer * n_embd * n_ubatch * 4 (interpreter, libraries,
    vocabulary, touched compute buffer). GPU: the CUDA context and libraries per device.
    """

    host_base_bytes: float = 75.8 * MIB
    host_activation_factor: float = 0.468
    gpu_base_bytes: float = 400 * MIB
    # share of the measured copy bandwidth that decode reaches (compute, routing and threading eat the rest)
    tg_efficiency_dense: float = 0.8
    tg_efficiency_moe: float = 0.6
    source: str = "default"

    def tg_efficiency(self, is_moe: bool) -> float:
        return self.tg_efficiency_moe if is_moe else self.tg_efficiency_dense


@dataclass(frozen=True)
class MemoryEstimate:
    host_bytes: int  # the peak resident set llama.cpp's process reaches (what a measured peak compares to)
    vram_bytes: int
    parts: dict[str, int] = field(default_factory=dict)  # named contributions, to explain a plan
    activation_units: float = 0.0  # n_layer * n_embd * n_ubatch * 4: what host overhead scales with
    host_required_bytes: int = 0  # host_bytes less file pages the kernel may drop (weights that were repacked)
    device_bytes: tuple[int, ...] = ()  # vram_bytes device by device, in llama.cpp's order (one with no split)


def layer_index(name: str, n_layer: int) -> int:
    """The llama.cpp layer a tensor belongs to: blk.N -> N, output -> n_layer, token_embd -> -1 (input)."""
    match = _LAYER.match(name)
    if match:
        return int(match.group(1))
    if name.startswith("output"):
        return n_layer
    return -1


def first_gpu_layer(n_layer: int, n_gpu_layers: int) -> int:
    """-ngl k offloads the last k layers counting the output layer (index n_layer) as the first offloaded."""
    if n_gpu_layers < 0:
        return 0
    return max(n_layer + 1 - n_gpu_layers, 0)


def layer_devices(shape: ModelShape, config: RunConfig) -> tuple[int, ...]:
    """The offload device of each layer, the output layer (index n_layer) last; -1 for the host. As llama.cpp's
    load_tensors assigns them: the offloaded layers in order, cut where the cumulative tensor_split passes each
    layer's place among them."""
    n_all = shape.n_layer + 1
    if not config.gpu:
        return (-1,) * n_all
    start = first_gpu_layer(shape.n_layer, config.n_gpu_layers)
    active = n_all - start
    shares = config.tensor_split or (1.0,)
    total = sum(shares) or 1.0
    cuts = list(itertools.accumulate(share / total for share in shares))
    return tuple(-1 if layer < start else min(bisect.bisect_right(cuts, (layer - start) / active), len(cuts) - 1)
                 for layer in range(n_all))


def on_gpu(tensor: TensorInfo, shape: ModelShape, config: RunConfig) -> bool:
    if not config.gpu:
        return False
    layer = layer_index(tensor.name, shape.n_layer)
    if layer < 0 or layer < first_gpu_layer(shape.n_layer, config.n_gpu_layers):
        return False
    return not (tensor.is_expert and layer < config.n_cpu_moe)


def runs_from_repacked_copy(tensor: TensorInfo, shape: ModelShape, config: RunConfig) -> bool:
    """Whether this run would read the weight from a repacked copy, where the CPU backend makes one
    (repacked_on_cpu): repacking on (-nr turns it off), the weight on this machine's CPU (an offload device, an RPC
    worker's included, never repacks), and not an expert --n-cpu-moe keeps in RAM (those land in the plain CPU
    buffer)."""
    if not config.repack or on_gpu(tensor, shape, config):
        return False
    return not (config.gpu and tensor.is_expert and layer_index(tensor.name, shape.n_layer) < config.n_cpu_moe)


def _is_matmul_weight(tensor: TensorInfo) -> bool:
    name = tensor.name
    return (len(tensor.shape) >= 2 and name.endswith(".weight") and not name.startswith("token_embd")
            and "_norm" not in name and "ffn_gate_inp" not in name)


def repacked_on_cpu(tensor: TensorInfo, cpu_features: tuple[str, ...]) -> bool:
    """Whether the CPU backend keeps an extra, repacked copy of this weight (ggml-cpu repack.cpp rules)."""
    if not _is_matmul_weight(tensor):
        return False
    rows = tensor.shape[1]
    features = set(cpu_features)
    kind = GGMLQuantizationType(tensor.ggml_type)
    if "AVX2" in features:
        if kind in (T.Q4_0, T.Q4_K, T.IQ4_NL, T.MXFP4) or (kind == T.Q2_K and "AVX512" in features):
            return rows % 8 == 0
        return False
    if "NEON" in features and ({"DOTPROD", "MATMUL_INT8"} & features):
        if kind in (T.Q4_0, T.Q4_K, T.Q5_K, T.Q6_K):
            return rows % 8 == 0 if kind != T.Q4_0 else rows % 4 == 0
        if kind in (T.IQ4_NL, T.MXFP4, T.Q8_0):
            return rows % 4 == 0
    return False


def kv_cells(n_ctx: int) -> int:
    return math.ceil(n_ctx / KV_CELL_PAD) * KV_CELL_PAD


def kv_bytes_per_layer(shape: ModelShape, n_ctx: int, type_k: str, type_v: str) -> int:
    """The KV cache of one full-attention layer at n_ctx tokens."""
    per_cell = shape.n_head_kv * (shape.head_dim_k * KV_TYPE_BYTES[type_k] + shape.head_dim_v * KV_TYPE_BYTES[type_v])
    return int(kv_cells(n_ctx) * per_cell)


RS_TYPE_BYTES = 4  # llama.cpp keeps recurrent states in F32 whatever the KV cache type


def swa_cells(shape: ModelShape, config: RunConfig) -> int:
    """Cells of a sliding-window layer's cache (llama-kv-cache-iswa.cpp, swa_full off as qwenbench runs it): the
    window plus one ubatch, padded to 256, at most the full cache."""
    full = kv_cells(config.n_ctx)
    ubatch = max(1, min(config.n_ubatch, config.n_batch, full))
    return min(full, kv_cells(shape.n_swa + ubatch))


def recurrent_state_bytes(shape: ModelShape, n_seq: int = 1) -> int:
    """The recurrent state of one linear-attention layer (llama-memory-recurrent.cpp: an R row of n_embd_r and an S
    row of n_embd_s F32 values per sequence), whatever the context length."""
    return (shape.n_embd_r + shape.n_embd_s) * RS_TYPE_BYTES * max(1, n_seq)


def layer_cache_bytes(shape: ModelShape, config: RunConfig, layer: int) -> tuple[int, int]:
    """(KV bytes, recurrent-state bytes) llama.cpp allocates for one layer of a context: a full cache for
    full attention, the window for sliding-window attention, a fixed state for linear attention, nothing for the
    MTP block (the main context gives it no cache)."""
    kind = shape.layer_kind(layer)
    if kind == "recurrent":
        return 0, recurrent_state_bytes(shape)
    if kind == "mtp":
        return 0, 0
    per_cell = kv_bytes_per_layer(shape, KV_CELL_PAD, config.type_k, config.type_v) / KV_CELL_PAD
    cells = swa_cells(shape, config) if kind == "swa" else kv_cells(config.n_ctx)
    return int(cells * per_cell), 0


def loaded(tensor: TensorInfo, shape: ModelShape) -> bool:
    """Whether llama.cpp loads the tensor: the MTP block's are skipped (llama_model_params.load_mtp is off)."""
    layer = tensor.layer
    return layer is None or layer < shape.n_layer_trunk


def _ubatch(config: RunConfig) -> int:
    return max(1, min(config.n_ubatch, config.n_batch, config.n_ctx))


def gpu_compute_bytes(shape: ModelShape, config: RunConfig, output_on_gpu: bool) -> int:
    """The compute buffer llama.cpp reserves on an offload device: the peak of what is live at once in a ubatch's
    graph (ggml-alloc reuses the rest). On the device holding the output that is its last step, the logits and
    the hidden state they come from (measured on an RPC device, Qwen3-0.6B at ubatch 512: 298.75 MiB, this
    formula's figure to the byte); elsewhere a layer's activations, and without flash attention its scores."""
    ubatch = _ubatch(config)
    output_step = (shape.n_vocab + shape.n_embd) * ubatch * 4 if output_on_gpu else 0
    activations = ubatch * max(shape.n_embd * 8, shape.n_ff * 3, shape.n_ff_exp * shape.n_expert_used * 3) * 4
    scores = 0 if config.flash_attn else kv_cells(config.n_ctx) * ubatch * shape.n_head * 4
    return max(output_step, activations + scores)


def activation_units(shape: ModelShape, config: RunConfig) -> float:
    return float(shape.n_layer * shape.n_embd * _ubatch(config) * 4)


def estimate_memory(table: TensorTable, shape: ModelShape, config: RunConfig, cpu_features: tuple[str, ...],
                    calibration: Calibration | None = None) -> MemoryEstimate:
    """Bytes on the host (peak resident set of the process) and on the GPU for one configuration."""
    calibration = calibration or Calibration()
    host_weights = gpu_weights = repack = 0
    output_copy = tied_output_on_gpu(table, shape, config)
    devices = layer_devices(shape, config)
    # device by device: its layers' weights and KV, a compute buffer where it holds any layer, a GPU's context
    device_bytes = [0] * max(1, len(config.tensor_split))
    for tensor in table.tensors:
        if not loaded(tensor, shape):
            continue
        if tensor.name == "token_embd.weight" and output_copy:
            gpu_weights += tensor.n_bytes  # the output layer's copy; the input's stays on the host (below)
            device_bytes[devices[-1]] += tensor.n_bytes
        if on_gpu(tensor, shape, config):
            gpu_weights += tensor.n_bytes
            device_bytes[devices[layer_index(tensor.name, shape.n_layer)]] += tensor.n_bytes
            continue
        host_weights += tensor.n_bytes
        if runs_from_repacked_copy(tensor, shape, config) and repacked_on_cpu(tensor, cpu_features):
            repack += tensor.n_bytes
    # with mmap the file pages of repacked weights stay resident beside their copies; without, only copies
    host_resident_weights = host_weights + repack if config.use_mmap else host_weights
    # each layer's cache lives where the layer lives: KV for attention, a fixed state for linear attention
    kv_host = kv_gpu = rs_host = rs_gpu = 0
    for layer, device in enumerate(devices[:-1]):
        kv, rs = layer_cache_bytes(shape, config, layer)
        if device >= 0:
            kv_gpu += kv
            rs_gpu += rs
            device_bytes[device] += kv + rs
        else:
            kv_host += kv
            rs_host += rs
    output_on_gpu = output_layer_on_gpu(shape, config)
    output_buffer = shape.n_vocab * 4  # one sequence, logits of its last token
    units = activation_units(shape, config)
    activations = calibration.host_activation_factor * units
    host_overhead = int(calibration.host_base_bytes + activations)
    used = sorted({device for device in devices if device >= 0})
    context = int(calibration.gpu_base_bytes) if gpu_weights and config.offload_kind == "gpu" else 0
    gpu_compute = gpu_overhead = 0
    for device in used:
        compute = gpu_compute_bytes(shape, config, output_on_gpu and devices[-1] == device)
        device_bytes[device] += compute + context
        gpu_compute += compute
        gpu_overhead += context
    parts = {
        "host_weights": host_weights, "host_repacked_copies": repack if config.use_mmap else 0,
        "host_kv": kv_host, "host_output": output_buffer, "host_overhead": host_overhead,
        "gpu_weights": gpu_weights, "gpu_kv": kv_gpu, "gpu_compute": gpu_compute, "gpu_overhead": gpu_overhead,
    }
    if shape.is_hybrid:
        parts.update({"host_recurrent_state": rs_host, "gpu_recurrent_state": rs_gpu})
    host = host_resident_weights + kv_host + rs_host + output_buffer + host_overhead
    vram = gpu_weights + kv_gpu + rs_gpu + gpu_compute + gpu_overhead
    # a repacked weight is read through its copy, so its mapped file pages are cache the kernel can reclaim
    required = host - (repack if config.use_mmap else 0)
    return MemoryEstimate(int(host), int(vram), parts, units, int(required),
                          tuple(device_bytes) if vram else ())


def has_tied_output(table: TensorTable) -> bool:
    """Whether token_embd doubles as the output layer (no output.weight): then every token reads all of it."""
    return not any(t.name == "output.weight" for t in table.tensors)


def output_layer_on_gpu(shape: ModelShape, config: RunConfig) -> bool:
    """Whether the output layer (index n_layer, the first -ngl offloads) is on the offload device."""
    return config.gpu and first_gpu_layer(shape.n_layer, config.n_gpu_layers) <= shape.n_layer


def tied_output_on_gpu(table: TensorTable, shape: ModelShape, config: RunConfig) -> bool:
    """Whether llama.cpp puts a second copy of a tied token_embd on the offload device, as the output layer
    (llama-model.cpp: TENSOR_DUPLICATED into the output layer's buffer), while the input lookup keeps the host's."""
    return output_layer_on_gpu(shape, config) and has_tied_output(table)


def token_read_bytes(tensor: TensorInfo, shape: ModelShape, tied_output: bool) -> int:
    """The bytes of a tensor one generated token reads: one row of token_embd unless it doubles as the output,
    the used experts' share of an MoE layer, else all of it."""
    if tensor.name == "token_embd.weight" and not tied_output:
        return tensor.n_bytes // max(1, shape.n_vocab)
    if tensor.is_expert and shape.n_expert:
        return tensor.n_bytes * shape.n_expert_used // shape.n_expert
    return tensor.n_bytes


def bytes_read_per_token(table: TensorTable, shape: ModelShape, config: RunConfig,
                         kv_fill_tokens: int = 0) -> tuple[int, int]:
    """(host bytes, GPU bytes) one generated token reads: every loaded weight it uses once (token_read_bytes), the
    KV cache so far of each attention layer (a sliding-window layer's window at most), and the recurrent state of
    each linear-attention layer read and written back."""
    host = gpu = 0
    tied_output = has_tied_output(table)
    output_copy = tied_output_on_gpu(table, shape, config)
    for tensor in table.tensors:
        if not loaded(tensor, shape):
            continue
        size = token_read_bytes(tensor, shape, tied_output)
        if tensor.name == "token_embd.weight" and output_copy:
            gpu += size  # the output matmul reads the device's copy; the host looks up one row
            host += tensor.n_bytes // max(1, shape.n_vocab)
        elif on_gpu(tensor, shape, config):
            gpu += size
        else:
            host += size
    first = first_gpu_layer(shape.n_layer, config.n_gpu_layers) if config.gpu else shape.n_layer + 1
    per_token = kv_bytes_per_layer(shape, KV_CELL_PAD, config.type_k, config.type_v) / KV_CELL_PAD
    for layer in range(shape.n_layer):
        kind = shape.layer_kind(layer)
        if kind == "recurrent":
            read = 2 * recurrent_state_bytes(shape)  # each token reads the state and writes it back
        elif kind == "mtp" or not kv_fill_tokens:
            continue
        else:  # the cached tokens so far, at most the window of a sliding-window layer
            read = int(per_token * (min(kv_fill_tokens, shape.n_swa) if kind == "swa" else kv_fill_tokens))
        if layer >= first:
            gpu += read
        else:
            host += read
    return host, gpu


def predicted_tg_ts(host_bytes: int, gpu_bytes: int, host_gbps: float, gpu_gbps: float | None,
                    efficiency: float = 1.0) -> float:
    """Tokens/s when decode is bandwidth-bound: time per token is the sum of each device's reads."""
    seconds = host_bytes / (host_gbps * 1e9 * efficiency)
    if gpu_bytes:
        if not gpu_gbps:
            return 0.0
        seconds += gpu_bytes / (gpu_gbps * 1e9 * efficiency)
    return 1.0 / seconds if seconds > 0 else 0.0
