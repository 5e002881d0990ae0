"""Hybrid models (qwen35, qwen35moe, qwen3next) and sliding-window attention: real llama.cpp loads and runs tiny
twins, and its own buffer lines equal the memory model's KV cache and recurrent state, layer kind by layer kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gguf import GGMLQuantizationType, GGUFValueType

from qwenbench.catalog import get_model
from qwenbench.fit import RunConfig, estimate_memory, kv_bytes_per_layer, recurrent_state_bytes
from qwenbench.gguf_info import read_header
from qwenbench.llamalog import parse_buffers
from qwenbench.modelfile import ensure_synthetic
from qwenbench.probe.cpu import read_cpu
from qwenbench.recipe import tensor_table
from qwenbench.synth import write_twin_gguf
from qwenbench.tensors import TensorInfo, TensorTable
from qwenbench.vocab import build_vocab

from .conftest import TINY_HYBRIDS, run_cli, tiny_spec

MIB = 1 << 20
PRINTED = 0.005 * MIB + 1  # llama.cpp prints MiB with two decimals (and a parsed figure is rounded to bytes)


def run_json(path: Path, tmp_path: Path, n_ctx: int) -> dict[str, Any]:
    result = run_cli("run", "--json", "--gguf", str(path), "-p", "32", "-n", "4", "-r", "1", "--no-ttft",
                     "-c", str(n_ctx), "--out", str(tmp_path / "r.csv"))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("mtp", [False, True], ids=["no-mtp", "mtp"])
@pytest.mark.parametrize("key", list(TINY_HYBRIDS))
def test_llama_cpp_runs_a_tiny_hybrid_twin_and_its_buffers_are_predicted(key: str, mtp: bool, model_dir: Path,
                                                                        tmp_path: Path) -> None:
    spec = tiny_spec(key, TINY_HYBRIDS[key])
    path, _ = ensure_synthetic(spec, "Q4_K_M", model_dir / f"tiny-{key}-{'mtp' if mtp else 'trunk'}.gguf", mtp=mtp)
    header = read_header(path)
    shape = header.shape()
    assert shape.attention_layout == "3 linear + 1 full"
    assert shape.n_layer_nextn == (1 if mtp else 0)
    assert any(t.name.startswith("blk.4.nextn.") for t in header.table.tensors) == mtp
    payload = run_json(path, tmp_path, 1024)
    # prompt and generated tokens went through every layer kind
    assert {row["test"][:2] for row in payload["rows"]} == {"pp", "tg"}
    assert all(row["status"] == "ok" and row["avg_ts"] > 0 for row in payload["rows"])
    buffers = payload["llama_cpp_buffers"]
    estimate = estimate_memory(header.table, shape, RunConfig(n_ctx=1024), read_cpu().features)
    # KV only for the one full-attention layer; a fixed F32 state for each of the three linear-attention layers
    assert estimate.parts["host_kv"] == kv_bytes_per_layer(shape, 1024, "f16", "f16")
    assert abs(estimate.parts["host_kv"] - buffers["kv"]["CPU"]) <= PRINTED
    assert estimate.parts["host_recurrent_state"] == 3 * recurrent_state_bytes(shape)
    assert abs(estimate.parts["host_recurrent_state"] - buffers["rs"]["CPU"]) <= PRINTED
    # the MTP block is not loaded (load_mtp is off): the weights llama.cpp maps are the trunk's
    mapped = sum(v for name, v in buffers["model"].items() if name != "CPU_REPACK")
    assert abs(mapped - estimate.parts["host_weights"]) <= 2 * PRINTED


def test_the_recurrent_state_does_not_grow_with_context() -> None:
    spec = get_model("qwen3.5-9b")
    table, shape = tensor_table(spec, "Q4_K_M"), spec.shape()
    short, long = (estimate_memory(table, shape, RunConfig(n_ctx=n), ("AVX2",)) for n in (4096, 32768))
    # 24 linear-attention layers of 32 value heads' 128 x 128 state plus the conv tail, 8 attention layers of KV
    state = recurrent_state_bytes(shape)
    assert state == (3 * (4096 + 2 * 16 * 128) + 128 * 4096) * 4
    assert short.parts["host_recurrent_state"] == long.parts["host_recurrent_state"] == 24 * state
    assert long.parts["host_kv"] == 8 * kv_bytes_per_layer(shape, 32768, "f16", "f16") == 1 << 30
    # what the hybrid saves against the same attention in every layer: three quarters of the KV cache
    assert long.parts["host_kv"] * 4 == 32 * kv_bytes_per_layer(shape, 32768, "f16", "f16")


def test_the_catalog_shape_counts_the_mtp_block() -> None:
    spec = get_model("qwen3.6-35b-a3b")
    from_catalog = spec.shape(mtp=True)
    assert from_catalog.attention_layout == "30 linear + 10 full" and from_catalog.n_layer_nextn == 1
    assert from_catalog.n_layer == 41 and from_catalog.layer_kind(40) == "mtp"


def _gemma3_file(path: Path, n_layer: int, n_swa: int) -> Path:
    """A tiny gemma3-shaped file: sliding-window attention in five of every six layers (llama.cpp's default)."""
    e, ff, heads, head_dim, n_vocab = 64, 128, 2, 32, 151936
    vocab = build_vocab(n_vocab)
    u32, f32, string = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING
    array = GGUFValueType.ARRAY
    metadata: dict[str, Any] = {"general.architecture": "gemma3"}
    value_types: dict[str, tuple[int, int | None]] = {}

    def put(key: str, value: Any, vtype: GGUFValueType, item: GGUFValueType | None = None) -> None:
        metadata[key] = value
        value_types[key] = (int(vtype), int(item) if item is not None else None)

    for key, value in (("block_count", n_layer), ("context_length", 8192), ("embedding_length", e),
                       ("feed_forward_length", ff), ("attention.head_count", heads),
                       ("attention.head_count_kv", 1), ("attention.key_length", head_dim),
                       ("attention.value_length", head_dim), ("attention.sliding_window", n_swa)):
        put(f"gemma3.{key}", value, u32)
    put("gemma3.attention.layer_norm_rms_epsilon", 1e-6, f32)
    put("gemma3.rope.freq_base", 1e6, f32)
    put("tokenizer.ggml.model", "gpt2", string)
    put("tokenizer.ggml.pre", "default", string)
    put("tokenizer.ggml.tokens", list(vocab.tokens), array, string)
    put("tokenizer.ggml.token_type", list(vocab.token_types), array, GGUFValueType.INT32)
    put("tokenizer.ggml.merges", list(vocab.merges), array, string)
    put("tokenizer.ggml.bos_token_id", 151643, u32)
    put("tokenizer.ggml.eos_token_id", 151645, u32)
    f32_t, q8 = int(GGMLQuantizationType.F32), int(GGMLQuantizationType.Q8_0)
    tensors = [TensorInfo("output_norm.weight", f32_t, (e,)), TensorInfo("token_embd.weight", q8, (e, n_vocab))]
    for il in range(n_layer):
        for name, shape in (("attn_norm", (e,)), ("attn_q", (e, heads * head_dim)), ("attn_k", (e, head_dim)),
                            ("attn_v", (e, head_dim)), ("attn_output", (heads * head_dim, e)),
                            ("attn_q_norm", (head_dim,)), ("attn_k_norm", (head_dim,)),
                            ("post_attention_norm", (e,)), ("ffn_norm", (e,)), ("ffn_gate", (e, ff)),
                            ("ffn_up", (e, ff)), ("ffn_down", (ff, e)), ("post_ffw_norm", (e,))):
            tensors.append(TensorInfo(f"blk.{il}.{name}.weight", f32_t if len(shape) == 1 else q8, shape))
    write_twin_gguf(metadata, value_types, TensorTable(tuple(tensors)), path, model_key="gemma3-tiny",
                    quant="Q8_0", twin_of="a tiny gemma3 shape")
    return path


def test_sliding_window_layers_cache_only_their_window(model_dir: Path, tmp_path: Path) -> None:
    path = _gemma3_file(model_dir / "tiny-gemma3.gguf", n_layer=6, n_swa=256)
    header = read_header(path)
    shape = header.shape()
    assert shape.attention_layout == "5 sliding-window + 1 full" and shape.n_swa == 256
    payload = run_json(path, tmp_path, 4096)
    assert all(row["status"] == "ok" and row["avg_ts"] > 0 for row in payload["rows"])
    estimate = estimate_memory(header.table, shape, RunConfig(n_ctx=4096), read_cpu().features)
    per_layer = kv_bytes_per_layer(shape, 4096, "f16", "f16")
    # the window plus a ubatch (256 + 512 cells) in five layers, the whole context in the sixth
    assert estimate.parts["host_kv"] == per_layer + 5 * per_layer * 768 // 4096
    assert abs(estimate.parts["host_kv"] - payload["llama_cpp_buffers"]["kv"]["CPU"]) <= 2 * PRINTED


def test_a_context_with_two_caches_sums_them() -> None:
    log = """llama_context: constructing llama_context
llama_kv_cache:        CPU KV buffer size =     0.25 MiB
llama_kv_cache:        CPU KV buffer size =     0.47 MiB
llama_memory_recurrent:        CPU RS buffer size =     0.40 MiB
sched_reserve:        CPU compute buffer size =     2.00 MiB
llama_context: constructing llama_context
llama_kv_cache:        CPU KV buffer size =     0.50 MiB
sched_reserve:        CPU compute buffer size =     1.00 MiB
"""
    buffers = parse_buffers(log)
    assert buffers.kv == {"CPU": round(0.25 * MIB) + round(0.47 * MIB)}
    assert buffers.rs == {"CPU": round(0.40 * MIB)}
    assert buffers.compute == {"CPU": 2 * MIB}
