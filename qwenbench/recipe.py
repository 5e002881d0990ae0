"""A catalog model plus a quant preset gives the exact tensor table of the GGUF llama-quantize writes."""

from __future__ import annotations

from .catalog import ModelSpec
from .errors import UsageError
from .quants import PRESETS, assign_types, find_preset
from .tensors import TensorInfo, TensorTable


def _layer_tensors(spec: ModelSpec, layer: int) -> list[tuple[str, tuple[int, ...]]]:
    if spec.is_hybrid:
        return _hybrid_layer_tensors(spec, layer)
    q_dim = spec.n_head * spec.head_dim
    kv_dim = spec.n_head_kv * spec.head_dim
    e = spec.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "attn_norm.weight": (e,),
        "attn_q.weight": (e, q_dim),
        "attn_k.weight": (e, kv_dim),
        "attn_v.weight": (e, kv_dim),
        "attn_output.weight": (q_dim, e),
        "ffn_norm.weight": (e,),
    }
    if spec.qk_norm:
        shapes["attn_q_norm.weight"] = (spec.head_dim,)
        shapes["attn_k_norm.weight"] = (spec.head_dim,)
    if spec.qkv_bias:
        shapes["attn_q.bias"] = (q_dim,)
        shapes["attn_k.bias"] = (kv_dim,)
        shapes["attn_v.bias"] = (kv_dim,)
    if spec.is_moe:
        shapes.update(_expert_tensors(spec))
    else:
        shapes.update(_dense_ffn_tensors(spec))
    return _in_order(layer, shapes)


def _in_order(layer: int, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    # llama-quantize walks (and writes) tensors ordered by layer, then by name (weight_name_comparer)
    return [(f"blk.{layer}.{name}", shape) for name, shape in sorted(shapes.items())]


def _dense_ffn_tensors(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    e = spec.n_embd
    return {"ffn_gate.weight": (e, spec.n_ff), "ffn_up.weight": (e, spec.n_ff), "ffn_down.weight": (spec.n_ff, e)}


def _expert_tensors(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    e = spec.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "ffn_gate_inp.weight": (e, spec.n_expert),
        "ffn_gate_exps.weight": (e, spec.n_ff_exp, spec.n_expert),
        "ffn_up_exps.weight": (e, spec.n_ff_exp, spec.n_expert),
        "ffn_down_exps.weight": (spec.n_ff_exp, e, spec.n_expert),
    }
    if spec.n_ff_shexp:  # a shared expert every token runs, scaled by its own sigmoid gate (one value a token)
        shapes.update({"ffn_gate_inp_shexp.weight": (e,), "ffn_gate_shexp.weight": (e, spec.n_ff_shexp),
                       "ffn_up_shexp.weight": (e, spec.n_ff_shexp), "ffn_down_shexp.weight": (spec.n_ff_shexp, e)})
    return shapes


def _hybrid_layer_tensors(spec: ModelSpec, layer: int) -> list[tuple[str, tuple[int, ...]]]:
    """A qwen35 / qwen35moe / qwen3next block as llama.cpp loads it (src/models/qwen35*.cpp, qwen3next.cpp): gated
    full attention (the query projection carries the output gate: twice the query width) or Gated DeltaNet linear
    attention; layers past the trunk are the MTP block, an attention block plus the NextN projections."""
    e = spec.n_embd
    shapes: dict[str, tuple[int, ...]] = {"attn_norm.weight": (e,), "post_attention_norm.weight": (e,)}
    if spec.is_recurrent(layer):
        key_dim = spec.ssm_state_size * spec.ssm_group_count
        value_dim = spec.ssm_inner_size
        conv_dim = 2 * key_dim + value_dim
        v_heads = spec.ssm_time_step_rank
        shapes.update({
            "attn_qkv.weight": (e, conv_dim), "attn_gate.weight": (e, value_dim),
            "ssm_conv1d.weight": (spec.ssm_conv_kernel, conv_dim), "ssm_dt.bias": (v_heads,), "ssm_a": (v_heads,),
            "ssm_norm.weight": (spec.ssm_state_size,), "ssm_out.weight": (value_dim, e),
        })
        if spec.arch == "qwen3next":
            shapes["ssm_ba.weight"] = (e, 2 * v_heads)
        else:
            shapes["ssm_beta.weight"] = (e, v_heads)
            shapes["ssm_alpha.weight"] = (e, v_heads)
    else:
        q_dim = spec.n_head * spec.head_dim
        kv_dim = spec.n_head_kv * spec.head_dim
        shapes.update({
            "attn_q.weight": (e, 2 * q_dim), "attn_k.weight": (e, kv_dim), "attn_v.weight": (e, kv_dim),
            "attn_output.weight": (q_dim, e), "attn_q_norm.weight": (spec.head_dim,),
            "attn_k_norm.weight": (spec.head_dim,),
        })
    shapes.update(_expert_tensors(spec) if spec.is_moe else _dense_ffn_tensors(spec))
    if layer >= spec.n_layer:  # the MTP block shares the model's embeddings and output head
        shapes.update({"nextn.eh_proj.weight": (2 * e, e), "nextn.enorm.weight": (e,), "nextn.hnorm.weight": (e,),
                       "nextn.shared_head_norm.weight": (e,)})
    return _in_order(layer, shapes)


def n_blocks(spec: ModelSpec, mtp: bool = False) -> int:
    """block_count of the file: the trunk, plus the MTP block(s) when the file carries them."""
    return spec.n_layer + (spec.mtp_layers if mtp else 0)


def tensor_layout(spec: ModelSpec, mtp: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """Names and ggml shapes of every tensor, in the order llama-quantize writes them; `mtp` adds the
    multi-token-prediction block(s) of a model that has them (many published files leave them out)."""
    top = {"token_embd.weight": (spec.n_embd, spec.n_vocab), "output_norm.weight": (spec.n_embd,)}
    if spec.has_output_tensor:
        top["output.weight"] = (spec.n_embd, spec.n_vocab)
    layout = sorted(top.items())
    for layer in range(n_blocks(spec, mtp)):
        layout.extend(_layer_tensors(spec, layer))
    return layout


def tensor_table(spec: ModelSpec, quant: str, mtp: bool = False) -> TensorTable:
    """The exact tensor table of `spec` quantized with preset `quant` (with the MTP block: `mtp`)."""
    preset = find_preset(quant)
    if preset is None:
        raise UsageError(f"unknown quant {quant!r}", hint=f"known quants: {', '.join(PRESETS)}")
    layout = tensor_layout(spec, mtp)
    # llama-quantize counts ffn_down layers over block_count, the MTP block included (n_layer_all)
    types = assign_types(preset, layout, n_layer=n_blocks(spec, mtp), n_expert=spec.n_expert,
                         n_gqa=spec.n_head // spec.n_head_kv)
    return TensorTable(tuple(TensorInfo(name, int(t), shape) for (name, shape), t in zip(layout, types, strict=True)))
