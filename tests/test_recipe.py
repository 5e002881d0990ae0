"""Tensor tables from the catalog + quant rules equal the published GGUF files."""

from __future__ import annotations

import pytest

from qwenbench.catalog import load_catalog
from qwenbench.quants import PRESETS, use_more_bits
from qwenbench.recipe import tensor_layout, tensor_table

# (model, quant) -> published file size in bytes (models.md); header + padding is about 5.95-6.0 MB
PUBLISHED = {
    ("qwen3-4b", "Q4_K_M"): 2_497_280_256,
    ("qwen3-8b", "Q4_K_M"): 5_027_783_488,
    ("qwen3-32b", "Q4_K_M"): 19_762_149_024,
    ("qwen3-30b-a3b", "Q4_K_M"): 18_556_685_824,
    ("qwen3-0.6b", "Q8_0"): 639_446_688,
}


@pytest.mark.parametrize(("key", "quant"), list(PUBLISHED))
def test_tensor_bytes_match_published_files(key: str, quant: str) -> None:
    tensor_bytes = tensor_table(load_catalog()[key], quant).n_bytes
    header_bytes = PUBLISHED[(key, quant)] - tensor_bytes
    assert 5_900_000 <= header_bytes <= 6_050_000


def test_llama_cpp_reported_sizes() -> None:
    catalog = load_catalog()
    assert round(tensor_table(catalog["qwen3-8b"], "Q4_K_M").n_bytes / 2**30, 2) == 4.68
    assert round(tensor_table(catalog["qwen3-32b"], "Q3_K_L").n_bytes / 2**30, 1) == 16.1


@pytest.mark.parametrize("key", list(load_catalog()))
def test_parameter_counts_match_catalog(key: str) -> None:
    spec = load_catalog()[key]
    table = tensor_table(spec, "F16")
    duplicated_output = spec.n_vocab * spec.n_embd if (spec.tied_embeddings and spec.store_output) else 0
    assert table.n_params - duplicated_output == spec.params_total
    assert len(tensor_layout(spec)) == len(table.tensors)


def test_moe_active_parameters() -> None:
    spec = load_catalog()["qwen3-30b-a3b"]
    active = tensor_table(spec, "Q3_K_L").n_params_active(spec.n_expert, spec.n_expert_used)
    assert 3.2e9 < active < 3.4e9  # "A3B": about 3.3 B active of 30.5 B
    dense = load_catalog()["qwen3-8b"]
    assert tensor_table(dense, "Q4_K_M").n_params_active(0, 0) == dense.params_total


def test_q4_k_m_mix_follows_llama_quantize() -> None:
    spec = load_catalog()["qwen3-8b"]
    types = {t.name: t.type_name for t in tensor_table(spec, "Q4_K_M").tensors}
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] == "F32"
    for layer in range(spec.n_layer):
        wide = "Q6_K" if use_more_bits(layer, spec.n_layer) else "Q4_K"
        assert types[f"blk.{layer}.attn_v.weight"] == wide
        assert types[f"blk.{layer}.ffn_down.weight"] == wide
        assert types[f"blk.{layer}.attn_q.weight"] == "Q4_K"


def test_tied_embeddings_are_quantized_like_the_output() -> None:
    types = {t.name: t.type_name for t in tensor_table(load_catalog()["qwen3-4b"], "Q4_K_M").tensors}
    assert "output.weight" not in types
    assert types["token_embd.weight"] == "Q6_K"


def test_q3_k_l_moe_mix() -> None:
    spec = load_catalog()["qwen3-30b-a3b"]
    table = {t.name: t for t in tensor_table(spec, "Q3_K_L").tensors}
    down = table["blk.7.ffn_down_exps.weight"]
    assert down.type_name == "Q5_K" and down.shape == (768, 2048, 128) and down.is_expert
    assert table["blk.7.ffn_up_exps.weight"].type_name == "Q3_K"
    assert table["blk.7.attn_output.weight"].type_name == "Q5_K"
    assert table["blk.7.ffn_gate_inp.weight"].type_name == "F32"
    assert not table["blk.7.ffn_gate_inp.weight"].is_expert


def test_file_order_is_llama_quantize_order() -> None:
    names = [t.name for t in tensor_table(load_catalog()["qwen3-8b"], "Q4_K_M").tensors]
    assert names[:3] == ["output.weight", "output_norm.weight", "token_embd.weight"]
    layers = [int(n.split(".")[1]) for n in names if n.startswith("blk.")]
    assert layers == sorted(layers)  # numeric, not lexicographic (blk.10 after blk.9)


@pytest.mark.parametrize("quant", list(PRESETS))
def test_every_preset_builds_for_every_model(quant: str) -> None:
    for spec in load_catalog().values():
        table = tensor_table(spec, quant)
        assert table.n_bytes > 0


def test_rows_not_divisible_by_the_block_fall_back() -> None:
    spec = load_catalog()["qwen3-0.6b"].with_overrides(n_embd=64, n_ff=128, n_head=2, n_head_kv=1, head_dim=32,
                                                       n_layer=1)
    types = {t.name: t.type_name for t in tensor_table(spec, "Q4_K_M").tensors}
    assert types["blk.0.attn_q.weight"] == "Q5_0"  # Q4_K's 256-block does not divide 64
    assert types["token_embd.weight"] == "Q8_0"  # tied output rule with an odd row: Q8_0


def test_f32_is_every_weight_in_f32_twice_the_bytes_of_f16() -> None:
    spec = load_catalog()["qwen2.5-3b-instruct"]
    f32, f16 = tensor_table(spec, "F32"), tensor_table(spec, "F16")
    assert {t.type_name for t in f32.tensors} == {"F32"}  # the weights, and the norms and biases they keep
    assert PRESETS["F32"].file_type == 0  # llama.cpp's LLAMA_FTYPE_ALL_F32
    # the norms and biases are F32 in the F16 file too: only the matrices double
    assert f32.n_bytes == sum(t.n_elements * 4 for t in f16.tensors)
    assert 2 * f16.n_bytes - f32.n_bytes == sum(t.n_bytes for t in f16.tensors if t.type_name == "F32")
    # 3.40 B parameters stored (the official layout keeps output.weight beside the tied embeddings): 13.6 GB;
    # a file without the copy (bartowski's conversions) is 3.09 B parameters, 12.3 GB
    assert round(f32.n_bytes / 1e9, 1) == 13.6
    assert round(tensor_table(spec.with_overrides(store_output=False), "F32").n_bytes / 1e9, 1) == 12.3
