"""Tensor names and per-tensor types against llama.cpp's own llama-quantize snapshots (tests/data/quant-snapshots)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from qwenbench.catalog import ModelSpec, get_model
from qwenbench.quants import PRESETS, allows_quantization
from qwenbench.recipe import tensor_table

SNAPSHOTS = Path(__file__).parent / "data" / "quant-snapshots"
# snapshot -> the catalog model whose header llama.cpp used (qwen3.6-27b.schema was made from Qwen3.5-27B's,
# the same shape)
MODELS = {"qwen3-0.6b": "qwen3-0.6b", "qwen3-14b": "qwen3-14b", "qwen3-coder-next": "qwen3-coder-next",
          "qwen3.5-397b-a17b": "qwen3.5-397b-a17b", "qwen3.6-27b": "qwen3.6-27b"}
# the Qwen3-0.6B header llama.cpp used stores output.weight although the embeddings are tied (a conversion that
# writes it anyway, like the official Qwen2.5-3B GGUF); the official Qwen3-0.6B files do not (test_recipe)
STORES_OUTPUT = {"qwen3-0.6b"}


def snapshot_spec(snapshot: str) -> ModelSpec:
    spec = get_model(MODELS[snapshot])
    return spec.with_overrides(store_output=True) if snapshot in STORES_OUTPUT else spec


def read_snapshot(name: str) -> tuple[dict[str, str], dict[str, tuple[str, dict[str, str]]]]:
    """(header fields, preset -> (default type, tensor -> type where it differs from the default))."""
    header: dict[str, str] = {}
    sections: dict[str, tuple[str, dict[str, str]]] = {}
    current: dict[str, str] = {}
    for line in gzip.decompress((SNAPSHOTS / f"{name}.schema.gz").read_bytes()).decode().splitlines():
        if line.startswith("#"):
            for item in line[1:].split(","):
                if "=" in item:
                    key, value = item.strip().split("=")
                    header[key] = value
        elif line.startswith("["):
            preset, default = line[1:].split("]")
            current = {}
            sections[preset] = (default.strip().upper(), current)
        elif line.strip():
            tensor, ggml_type = line.split()
            current[tensor] = ggml_type.upper()
    return header, sections


@pytest.mark.parametrize("snapshot", list(MODELS))
def test_the_snapshot_header_is_the_catalog_shape(snapshot: str) -> None:
    header, sections = read_snapshot(snapshot)
    spec = get_model(MODELS[snapshot])
    assert int(header["n_embd"]) == spec.n_embd and int(header["n_layer"]) == spec.n_layer
    assert int(header["n_head"]) == spec.n_head and int(header["n_head_kv"]) == spec.n_head_kv
    assert int(header["n_vocab"]) == spec.n_vocab
    assert int(header.get("n_expert", 0)) == spec.n_expert
    assert set(PRESETS) <= set(sections)


@pytest.mark.parametrize("snapshot", list(MODELS))
@pytest.mark.parametrize("quant", list(PRESETS))
def test_every_tensor_type_equals_llama_quantize(snapshot: str, quant: str) -> None:
    _, sections = read_snapshot(snapshot)
    default, differing = sections[quant]
    table = tensor_table(snapshot_spec(snapshot), quant)
    names = {t.name for t in table.tensors}
    assert set(differing) <= names, f"tensors llama.cpp has that the recipe lacks: {set(differing) - names}"
    quantizable = [t for t in table.tensors if allows_quantization(t.name, len(t.shape))]
    assert quantizable
    wrong = {t.name: (t.type_name, differing.get(t.name, default)) for t in quantizable
             if t.type_name != differing.get(t.name, default)}
    assert not wrong, f"{len(wrong)} tensors differ (ours, llama.cpp's): {dict(list(wrong.items())[:8])}"
