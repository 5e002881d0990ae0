"""Shape-faithful synthetic GGUFs: the real file's metadata, tensor names, shapes and types, random weights.

Quantized tensors are written as random quantized blocks whose scale fields are small normal
numbers (never NaN, Inf or subnormal), streamed from a small per-type pool: no full-precision
intermediate, bounded memory, disk-speed writing. llama.cpp then loads and runs the file exactly
as it would the real one, so its speed is the real file's speed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter

from . import __version__
from .catalog import ModelSpec
from .quants import find_preset
from .recipe import n_blocks
from .tensors import TensorInfo, TensorTable
from .vocab import CHAT_TEMPLATE, EOS_OFFSET, build_vocab

T = GGMLQuantizationType
SYNTHETIC_KEY = "qwenbench.synthetic"
ValueTypes = dict[str, tuple[int, int | None]]  # GGUF metadata key -> (value type, array item type)
POOL_BYTES = 4 << 20  # per-type pool of random blocks, tiled across each tensor
WRITE_CHUNK = 16 << 20
EMBEDDING_GAIN = 16384.0  # an MoE model's token embeddings against its other weights (see _write_gguf)

# f16 scale fields (byte offsets inside one block) of each block type
_F16_SCALES: dict[GGMLQuantizationType, tuple[int, ...]] = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
    T.IQ4_NL: (0,), T.IQ4_XS: (0,),
}
# sub-block scale bytes kept small so weights stay around 1e-2 and activations never overflow
_SMALL_SCALE_BYTES: dict[GGMLQuantizationType, tuple[int, int, int]] = {
    T.Q4_K: (4, 12, 0x0F), T.Q5_K: (4, 12, 0x0F), T.Q2_K: (0, 16, 0x33),
}


@dataclass(frozen=True)
class SynthResult:
    path: Path
    tensor_bytes: int
    file_bytes: int


def _small_normals(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """Magnitudes in [low, high] with random signs: no zeros, no subnormals."""
    return rng.uniform(low, high, n) * rng.choice((-1.0, 1.0), n)


def random_blocks(ggml_type: GGMLQuantizationType, n_blocks: int, rng: np.random.Generator,
                  gain: float = 1.0) -> np.ndarray:
    """n_blocks valid random blocks of a type, as a flat uint8 array; gain (a power of two) scales the weights."""
    block_bytes = GGML_QUANT_SIZES[ggml_type][1]
    if ggml_type == T.F32:
        return _small_normals(rng, n_blocks, 1e-3 * gain, 5e-2 * gain).astype(np.float32).view(np.uint8)
    if ggml_type == T.F16:
        return _small_normals(rng, n_blocks, 1e-3 * gain, 5e-2 * gain).astype(np.float16).view(np.uint8)
    if ggml_type == T.BF16:
        as_f32 = _small_normals(rng, n_blocks, 1e-3 * gain, 5e-2 * gain).astype(np.float32)
        return (as_f32.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    if ggml_type not in _F16_SCALES and ggml_type != T.MXFP4:
        raise ValueError(f"no synthetic writer for type {ggml_type.name}")
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for offset in _F16_SCALES.get(ggml_type, ()):
        scales = _small_normals(rng, n_blocks, 1e-4 * gain, 5e-4 * gain).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    if ggml_type in _SMALL_SCALE_BYTES:
        start, length, mask = _SMALL_SCALE_BYTES[ggml_type]
        blocks[:, start:start + length] &= mask
    if ggml_type == T.Q6_K:
        blocks[:, 192:208] = rng.integers(-16, 17, size=(n_blocks, 16), dtype=np.int8).view(np.uint8)
    if ggml_type == T.IQ4_XS:
        blocks[:, 2:4] = 0xAA  # 6-bit sub-block scales 32..35, so (scale - 32) stays small
        blocks[:, 4:8] &= 0x33
    if ggml_type == T.MXFP4:
        shift = round(math.log2(gain))
        blocks[:, 0] = rng.integers(118 + shift, 124 + shift, size=n_blocks, dtype=np.uint8)  # E8M0: 2^-9..2^-4
    return blocks.reshape(-1)


def _norm_weights(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.9, 1.1, n).astype(np.float32)


def _special_f32(name: str, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """Values a tensor kind needs to be valid, or None for the generic small weights. Gated DeltaNet decays its
    state by exp(ssm_a * softplus(alpha + ssm_dt)) a token: ssm_a (the checkpoint's -exp(A_log)) must be negative
    for the state to stay bounded, as trained models have it (A_log ~ log U(1, 16))."""
    if name.endswith(".ssm_a"):
        return -rng.uniform(1.0, 16.0, n).astype(np.float32)
    if name.endswith("ssm_dt.bias"):
        return rng.uniform(-1.0, 1.0, n).astype(np.float32)
    if "ssm_conv1d" in name:  # a short causal filter per channel
        return rng.uniform(-0.3, 0.3, n).astype(np.float32)
    return None


class _BlockPools:
    """One pool of random blocks per type, so writing costs no random generation per byte."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._pools: dict[tuple[GGMLQuantizationType, float], np.ndarray] = {}

    def get(self, ggml_type: GGMLQuantizationType, gain: float = 1.0) -> np.ndarray:
        pool = self._pools.get((ggml_type, gain))
        if pool is None:
            block_bytes = GGML_QUANT_SIZES[ggml_type][1]
            pool = random_blocks(ggml_type, max(1, POOL_BYTES // block_bytes), self._rng, gain)
            self._pools[(ggml_type, gain)] = pool
        return pool


def _write_tensor(out, tensor: TensorInfo, pools: _BlockPools, rng: np.random.Generator,
                  progress: Callable[[int], None], zero: bool = False, gain: float = 1.0) -> None:
    ggml_type = GGMLQuantizationType(tensor.ggml_type)
    special = _special_f32(tensor.name, tensor.n_elements, rng) if ggml_type == T.F32 else None
    if ggml_type == T.F32 and tensor.name.endswith("norm.weight"):
        special = _norm_weights(tensor.n_elements, rng)
    if special is not None:  # small tensors of a kind whose values matter: always written
        out.write(special.tobytes())
        progress(special.nbytes)
        return
    if zero:  # a hole in a sparse file: nothing written, zeros read
        out.seek(tensor.n_bytes, os.SEEK_CUR)
        progress(tensor.n_bytes)
        return
    pool = memoryview(pools.get(ggml_type, gain))
    block_bytes = GGML_QUANT_SIZES[ggml_type][1]
    remaining = tensor.n_bytes
    # start each tensor at a different block of the pool so tensors do not repeat each other
    position = int(rng.integers(0, len(pool) // block_bytes)) * block_bytes
    while remaining:
        take = min(remaining, len(pool) - position, WRITE_CHUNK)
        out.write(pool[position:position + take])
        progress(take)
        remaining -= take
        position = (position + take) % len(pool)


class _Writer(GGUFWriter):
    """GGUFWriter that packs each large array once per process: gguf-py packs an array item by item in Python,
    half a second for the 151,936 tokens of Qwen's vocabulary, which every synthetic file carries (a calibration
    writes dozens of probes). Overrides gguf 0.19's private _pack_val (the version is pinned)."""

    _packed: ClassVar[dict[tuple[Any, ...], bytes]] = {}

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool,
                  sub_type: GGUFValueType | None = None) -> bytes:
        if vtype != GGUFValueType.ARRAY or not isinstance(val, list | tuple) or len(val) < 1024:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        key = (add_vtype, sub_type, self.endianess, tuple(val))
        if key not in self._packed:
            self._packed[key] = super()._pack_val(val, vtype, add_vtype, sub_type)
        return self._packed[key]


def _add_metadata(writer: GGUFWriter, spec: ModelSpec, quant: str, seed: int, mtp: bool = False) -> None:
    preset = find_preset(quant)
    assert preset is not None
    writer.add_type("model")
    writer.add_name(f"{spec.name} (synthetic weights)")
    writer.add_file_type(int(preset.file_type))
    writer.add_quantization_version(2)
    _mark_synthetic(writer, spec.key, preset.name, seed)

    writer.add_block_count(n_blocks(spec, mtp))
    if mtp and spec.mtp_layers:
        writer.add_nextn_predict_layers(spec.mtp_layers)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    # llama.cpp defaults key_length to n_embd / n_head, which is not 128 for most Qwen3 sizes
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_layer_norm_rms_eps(spec.rms_norm_eps)
    writer.add_rope_freq_base(spec.rope_theta)
    if spec.rope_dims:
        writer.add_rope_dimension_count(spec.rope_dims)
    if spec.rope_sections:
        writer.add_rope_dimension_sections(list(spec.rope_sections))
    if spec.is_moe:
        writer.add_expert_count(spec.n_expert)
        writer.add_expert_used_count(spec.n_expert_used)
        writer.add_expert_feed_forward_length(spec.n_ff_exp)
        if spec.n_ff_shexp:
            writer.add_expert_shared_feed_forward_length(spec.n_ff_shexp)
    if spec.is_hybrid:
        writer.add_full_attention_interval(spec.full_attention_interval)
        writer.add_ssm_conv_kernel(spec.ssm_conv_kernel)
        writer.add_ssm_inner_size(spec.ssm_inner_size)
        writer.add_ssm_state_size(spec.ssm_state_size)
        writer.add_ssm_time_step_rank(spec.ssm_time_step_rank)
        writer.add_ssm_group_count(spec.ssm_group_count)

    vocab = build_vocab(spec.n_vocab, spec.first_special_id)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(spec.tokenizer_pre)
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_types(list(vocab.token_types))
    writer.add_token_merges(list(vocab.merges))
    writer.add_eos_token_id(spec.first_special_id + EOS_OFFSET)
    writer.add_bos_token_id(spec.first_special_id)
    writer.add_pad_token_id(spec.first_special_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def _mark_synthetic(writer: GGUFWriter, model_key: str, quant: str, seed: int) -> None:
    writer.add_bool(SYNTHETIC_KEY, True)
    writer.add_string("qwenbench.model_key", model_key)
    writer.add_string("qwenbench.quant", quant)
    writer.add_uint32("qwenbench.seed", seed)
    writer.add_string("qwenbench.version", __version__)


def copy_metadata(writer: GGUFWriter, metadata: dict[str, Any], value_types: ValueTypes) -> None:
    """A real file's metadata, key by key with its GGUF types, less what describes that file's own layout."""
    for key, value in metadata.items():
        if key == "general.architecture" or key.startswith(("split.", "qwenbench.")):
            continue  # the writer adds the architecture; a twin is one file; our marks are set afresh
        if key == "general.alignment":
            writer.add_custom_alignment(int(value))
            continue
        vtype, item_type = value_types[key]
        writer.add_key_value(key, value, GGUFValueType(vtype),
                             GGUFValueType(item_type) if item_type is not None else None)


def _write_gguf(path: Path, arch: str, add_metadata: Callable[[GGUFWriter], None], table: TensorTable, seed: int,
                on_progress: Callable[[int, int], None] | None, zero_weights: bool = False) -> SynthResult:
    """Write `table` with random weights (or zeros: the norms, and an MoE model's embeddings and routers, stay
    random) at `path`, atomically: a .part file renamed at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    rng = np.random.default_rng(seed)
    total = table.n_bytes
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, total)

    writer = _Writer(partial, arch)
    try:
        add_metadata(writer)
        for tensor in table.tensors:
            # gguf-py takes numpy (outermost-first) shapes; ggml order is the reverse
            writer.add_tensor_info(tensor.name, tuple(reversed(tensor.shape)), np.dtype(np.float32),
                                   tensor.n_bytes, raw_dtype=GGMLQuantizationType(tensor.ggml_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        out = writer.fout[0]
        writer.write_padding(out, out.tell())
        pools = _BlockPools(rng)
        # an MoE model's speed depends on how its tokens spread over the experts: a trained model's router spreads
        # them (a 512-token batch touches nearly all of them), each expert then multiplying a few tokens. Zeros
        # would send every token to the same experts (zero embeddings, zero router logits), so an MoE model's
        # embeddings and routers stay random; and random layers of the embeddings' scale would let what every token
        # shares (attention's average over the context) outgrow each token's own embedding in the residual stream
        # within a layer or two, so tokens would again pick the same experts (measured: a Qwen3-30B-A3B twin then
        # prefilled 1.5x as fast as with the tokens spread). Its embeddings are written EMBEDDING_GAIN times
        # larger, so the residual stays the token's and routing follows the token.
        moe = any(t.is_expert for t in table.tensors)
        for tensor in table.tensors:
            embedding = moe and tensor.name == "token_embd.weight"
            keep_random = embedding or "ffn_gate_inp" in tensor.name
            _write_tensor(out, tensor, pools, rng, progress, zero_weights and not keep_random,
                          EMBEDDING_GAIN if embedding else 1.0)
            writer.write_padding(out, tensor.n_bytes)
        out.truncate(out.tell())  # a file ending in a hole is as long as its tensors
        writer.close()
        os.replace(partial, path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return SynthResult(path=path, tensor_bytes=total, file_bytes=path.stat().st_size)


def write_synthetic_gguf(spec: ModelSpec, quant: str, table: TensorTable, path: Path, *, seed: int = 0,
                         on_progress: Callable[[int, int], None] | None = None,
                         zero_weights: bool = False) -> SynthResult:
    """A catalog model's GGUF with `table`'s tensors, our metadata and tokenizer, random weights; zero_weights
    leaves the matrices as holes of a sparse file (calibration's probes: the kernels' speed does not depend on
    the values, and nothing is written to disk)."""
    # a table with the MTP block (blk.{n_layer}) needs the metadata that counts it
    mtp = any(t.layer is not None and t.layer >= spec.n_layer for t in table.tensors)
    return _write_gguf(path, spec.arch, lambda writer: _add_metadata(writer, spec, quant, seed, mtp), table, seed,
                       on_progress, zero_weights)


def write_twin_gguf(metadata: dict[str, Any], value_types: ValueTypes, table: TensorTable,
                    path: Path, *, model_key: str, quant: str, twin_of: str, seed: int = 0,
                    on_progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """The twin of a real file from its header: every metadata key (tokenizer, chat template, quantization
    notes) and tensor as they are there, random weights, marked synthetic; split parts become one file."""

    def add_metadata(writer: GGUFWriter) -> None:
        copy_metadata(writer, metadata, value_types)
        _mark_synthetic(writer, model_key, quant, seed)
        writer.add_string("qwenbench.twin_of", twin_of)

    return _write_gguf(path, str(metadata["general.architecture"]), add_metadata, table, seed, on_progress)
