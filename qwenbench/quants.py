"""Quantization presets and the per-tensor type each one gives, as llama-quantize chooses it.

A port of `llama_tensor_get_type` (llama.cpp src/llama-quant.cpp, commit 0c1e570) restricted to
the presets and architectures qwenbench covers. It is what makes a synthetic file's tensor bytes
equal the real file's.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

T = GGMLQuantizationType


@dataclass(frozen=True)
class QuantPreset:
    name: str
    file_type: LlamaFileType
    default_type: GGMLQuantizationType
    bits_per_weight_hint: float  # rough, for listings only


PRESETS: dict[str, QuantPreset] = {
    p.name: p
    for p in (
        QuantPreset("Q2_K", LlamaFileType.MOSTLY_Q2_K, T.Q2_K, 3.0),
        QuantPreset("Q3_K_S", LlamaFileType.MOSTLY_Q3_K_S, T.Q3_K, 3.5),
        QuantPreset("Q3_K_M", LlamaFileType.MOSTLY_Q3_K_M, T.Q3_K, 3.9),
        QuantPreset("Q3_K_L", LlamaFileType.MOSTLY_Q3_K_L, T.Q3_K, 4.3),
        QuantPreset("Q4_0", LlamaFileType.MOSTLY_Q4_0, T.Q4_0, 4.5),
        QuantPreset("Q4_1", LlamaFileType.MOSTLY_Q4_1, T.Q4_1, 5.0),
        QuantPreset("Q4_K_S", LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K, 4.6),
        QuantPreset("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K, 4.9),
        QuantPreset("Q5_0", LlamaFileType.MOSTLY_Q5_0, T.Q5_0, 5.5),
        QuantPreset("Q5_1", LlamaFileType.MOSTLY_Q5_1, T.Q5_1, 6.0),
        QuantPreset("Q5_K_S", LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K, 5.5),
        QuantPreset("Q5_K_M", LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K, 5.7),
        QuantPreset("Q6_K", LlamaFileType.MOSTLY_Q6_K, T.Q6_K, 6.6),
        QuantPreset("Q8_0", LlamaFileType.MOSTLY_Q8_0, T.Q8_0, 8.5),
        QuantPreset("IQ4_NL", LlamaFileType.MOSTLY_IQ4_NL, T.IQ4_NL, 4.5),
        QuantPreset("IQ4_XS", LlamaFileType.MOSTLY_IQ4_XS, T.IQ4_XS, 4.3),
        QuantPreset("MXFP4_MOE", LlamaFileType.MOSTLY_MXFP4_MOE, T.MXFP4, 4.3),
        QuantPreset("F16", LlamaFileType.MOSTLY_F16, T.F16, 16.0),
        QuantPreset("BF16", LlamaFileType.MOSTLY_BF16, T.BF16, 16.0),
        # llama-quantize's F32 (LLAMA_FTYPE_ALL_F32 = 0), or convert_hf_to_gguf --outtype f32: every weight it may
        # change becomes F32, the rest (norms, routers, conv kernels) are F32 already; the precision ladder's top
        QuantPreset("F32", LlamaFileType.ALL_F32, T.F32, 32.0),
    )
}

_FILE_TYPE_NAMES = {p.file_type: p.name for p in PRESETS.values()}


def preset_for_file_type(file_type: int) -> str | None:
    """The preset name of a GGUF's general.file_type, if it is one we know."""
    try:
        return _FILE_TYPE_NAMES.get(LlamaFileType(file_type))
    except ValueError:
        return None


def find_preset(name: str) -> QuantPreset | None:
    return PRESETS.get(name.upper())


def is_quantized(ggml_type: GGMLQuantizationType) -> bool:
    return ggml_type not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for marker, category in (("attn_qkv.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                             ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                             ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"),
                             ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if marker in name:
            return category
    return "other"


def allows_quantization(name: str, n_dims: int) -> bool:
    """Whether llama-quantize may change this tensor's type (the rest keep the converter's, F32 here): its
    tensor_allows_quantization, 2-D and 3-D weights less norms, routers and the small ssm_conv1d kernels."""
    return (n_dims >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name and "ssm_conv1d" not in name)


def _fallback(row_length: int, target: GGMLQuantizationType) -> GGMLQuantizationType:
    """A type whose block divides the row, as llama-quantize falls back for odd shapes."""
    if row_length % GGML_QUANT_SIZES[target][0] == 0:
        return target
    replacement = {T.IQ4_XS: T.IQ4_NL, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0,
                   T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}.get(target, target)
    if row_length % GGML_QUANT_SIZES[replacement][0]:
        return T.F16
    return replacement


@dataclass
class _Counters:
    n_attention_wv: int
    n_layer: int
    n_expert: int
    n_gqa: int
    tied_embeddings: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0


def _choose(preset: QuantPreset, name: str, row_length: int, n_dims_3d: bool,
            state: _Counters) -> GGMLQuantizationType:
    """llama_tensor_get_type_impl for the K-, legacy and IQ4 presets (no imatrix, arch not Falcon)."""
    ftype = preset.name
    new_type = preset.default_type
    category = _category(name)
    moe8 = state.n_expert == 8

    if category == "output" or (state.tied_embeddings and category == "token_embd"):
        if ftype == "MXFP4_MOE" or row_length % GGML_QUANT_SIZES[new_type][0]:
            return T.Q8_0
        return new_type if new_type == T.Q8_0 else T.Q6_K
    if ftype == "MXFP4_MOE":
        return T.MXFP4 if n_dims_3d else T.Q8_0
    if category == "token_embd":
        return new_type
    if category == "attn_v":
        i = state.i_attention_wv
        if ftype == "Q2_K":
            new_type = T.Q4_K if state.n_gqa >= 4 else T.Q3_K
        elif ftype == "Q3_K_M":
            new_type = T.Q5_K if i < 2 else T.Q4_K
        elif ftype == "Q3_K_L" or (ftype in ("IQ4_NL", "IQ4_XS") and state.n_gqa >= 4):
            new_type = T.Q5_K
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, state.n_attention_wv):
            new_type = T.Q6_K
        elif ftype == "Q4_K_S" and i < 4:
            new_type = T.Q5_K
        if moe8:
            new_type = T.Q8_0
        state.i_attention_wv += 1
        return new_type
    if category == "attn_k":
        return T.Q8_0 if moe8 else new_type
    if category == "ffn_down":
        i_layer = _layer_of(name) if state.n_expert > 1 else state.i_ffn_down
        n_layer = state.n_layer
        state.i_ffn_down += 1
        if ftype == "Q2_K":
            return T.Q3_K
        if ftype == "Q3_K_M":
            return T.Q5_K if i_layer < n_layer // 16 else T.Q4_K
        if ftype == "Q3_K_L":
            return T.Q5_K
        if ftype == "Q4_K_M":
            return T.Q6_K if use_more_bits(i_layer, n_layer) else new_type
        if i_layer < n_layer // 8 and ftype in ("IQ4_NL", "IQ4_XS"):
            return T.Q5_K
        if ftype == "Q5_K_M" and use_more_bits(i_layer, n_layer):
            return T.Q6_K
        if ftype == "Q4_K_S" and i_layer < n_layer // 8:
            return T.Q5_K
        return new_type
    if category == "attn_output":
        if moe8:
            if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS"):
                return T.Q5_K
            return new_type
        return {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}.get(ftype, new_type)
    return new_type


def _layer_of(name: str) -> int:
    return int(name.split(".")[1])


def assign_types(preset: QuantPreset, names_and_shapes: list[tuple[str, tuple[int, ...]]], *,
                 n_layer: int, n_expert: int, n_gqa: int) -> list[GGMLQuantizationType]:
    """The ggml type of each tensor (given in llama-quantize's processing order) for a preset."""
    names = [name for name, _ in names_and_shapes]
    state = _Counters(
        n_attention_wv=sum(1 for n in names if _category(n) == "attn_v"),
        n_layer=n_layer, n_expert=n_expert, n_gqa=n_gqa,
        tied_embeddings="output.weight" not in names,
    )
    types = []
    for name, shape in names_and_shapes:
        if not allows_quantization(name, len(shape)):
            types.append(T.F32)
            continue
        if not is_quantized(preset.default_type):
            types.append(preset.default_type)
            continue
        chosen = _choose(preset, name, shape[0], len(shape) > 2 and shape[2] > 1, state)
        types.append(_fallback(shape[0], chosen))
    return types
