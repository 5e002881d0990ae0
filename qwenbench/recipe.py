"""A catalog model plus a quant preset gives the exact tensor table of the GGUF llama-quantize writes."""

from __future__ import annotations

from .catalog import ModelSpec
from .errors import UsageError
from .quants import PRESETS, assign_types, find_preset
from .tensors import TensorInfo, TensorTable


def _layer_tensors(spec: ModelSpec, layer: int) -> list[tuple[str, tuple[int, ...]]]:
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
        shapes["ffn_gate_inp.weight"] = (e, spec.n_expert)
        shapes["ffn_gate_exps.weight"] = (e, spec.n_ff_exp, spec.n_expert)
        shapes["ffn_up_exps.weight"] = (e, spec.n_ff_exp, spec.n_expert)
        shapes["ffn_down_exps.weight"] = (spec.n_ff_exp, e, spec.n_expert)
    else:
        shapes["ffn_gate.weight"] = (e, spec.n_ff)
        shapes["ffn_up.weight"] = (e, spec.n_ff)
        shapes["ffn_down.weight"] = (spec.n_ff, e)
    # llama-quantize walks (and writes) tensors ordered by layer, then by name
    return [(f"blk.{layer}.{name}", shape) for name, shape in sorted(shapes.items())]


def tensor_layout(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """Names and ggml shapes of every tensor, in the order llama-quantize writes them."""
    top = {"token_embd.weight": (spec.n_embd, spec.n_vocab), "output_norm.weight": (spec.n_embd,)}
    if spec.has_output_tensor:
        top["output.weight"] = (spec.n_embd, spec.n_vocab)
    layout = sorted(top.items())
    for layer in range(spec.n_layer):
        layout.extend(_layer_tensors(spec, layer))
    return layout


def tensor_table(spec: ModelSpec, quant: str) -> TensorTable:
    """The exact tensor table of `spec` quantized with preset `quant`."""
    preset = find_preset(quant)
    if preset is None:
        raise UsageError(f"unknown quant {quant!r}", hint=f"known quants: {', '.join(PRESETS)}")
    layout = tensor_layout(spec)
    types = assign_types(preset, layout, n_layer=spec.n_layer, n_expert=spec.n_expert,
                         n_gqa=spec.n_head // spec.n_head_kv)
    return TensorTable(tuple(TensorInfo(name, int(t), shape) for (name, shape), t in zip(layout, types, strict=True)))
