"""The synthetic writer produces valid, faithful GGUFs; the header reader rejects broken files."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from qwenbench.catalog import get_model
from qwenbench.errors import InvalidModelFileError
from qwenbench.gguf_info import read_header
from qwenbench.modelfile import ensure_synthetic, guess_model_key, open_model_file
from qwenbench.recipe import tensor_table
from qwenbench.synth import SYNTHETIC_KEY, random_blocks, write_synthetic_gguf

from .conftest import TINY_MOE, tiny_spec

T = GGMLQuantizationType
WRITTEN_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL,
                 T.IQ4_XS, T.MXFP4, T.F16, T.BF16, T.F32]


@pytest.mark.parametrize("ggml_type", WRITTEN_TYPES, ids=lambda t: t.name)
def test_random_blocks_dequantize_to_small_finite_weights(ggml_type: GGMLQuantizationType) -> None:
    n_blocks = 512
    raw = random_blocks(ggml_type, n_blocks, np.random.default_rng(1))
    block_elems, block_bytes = GGML_QUANT_SIZES[ggml_type]
    assert raw.dtype == np.uint8 and raw.size == n_blocks * block_bytes
    values = dequantize(raw, ggml_type).astype(np.float64)
    assert values.size == n_blocks * block_elems
    assert np.isfinite(values).all()
    assert 0 < np.abs(values).max() < 1.0
    assert values.std() > 0  # random, not constant


@pytest.mark.parametrize("ggml_type", [t for t in WRITTEN_TYPES if t not in (T.F16, T.BF16, T.F32, T.MXFP4)],
                         ids=lambda t: t.name)
def test_scales_are_normal_f16_numbers(ggml_type: GGMLQuantizationType) -> None:
    from qwenbench.synth import _F16_SCALES

    block_bytes = GGML_QUANT_SIZES[ggml_type][1]
    blocks = random_blocks(ggml_type, 256, np.random.default_rng(2)).reshape(-1, block_bytes)
    for offset in _F16_SCALES[ggml_type]:
        scales = blocks[:, offset:offset + 2].copy().view(np.float16).astype(np.float64)
        assert np.isfinite(scales).all()
        assert (np.abs(scales) >= np.finfo(np.float16).tiny).all()  # no subnormals, no zeros


def test_written_file_has_the_recipe_tensor_table(tiny_moe: Path) -> None:
    spec = tiny_spec("qwen3-30b-a3b", TINY_MOE)
    header = read_header(tiny_moe)
    assert header.table == tensor_table(spec, "Q4_K_M")
    assert header.is_synthetic and header.quant == "Q4_K_M" and header.arch == "qwen3moe"
    assert header.n_vocab == 151936 and header.n_expert == 8 and header.n_expert_used == 2
    assert header.arch_value("attention.key_length") == 32
    # gguf-py's own reader agrees on every tensor's type, shape and byte count
    reader = GGUFReader(tiny_moe)
    theirs = {t.name: (int(t.tensor_type), tuple(int(d) for d in t.shape), int(t.n_bytes)) for t in reader.tensors}
    ours = {t.name: (t.ggml_type, t.shape, t.n_bytes) for t in header.table.tensors}
    assert theirs == ours
    assert bool(reader.fields[SYNTHETIC_KEY].contents()) is True


def test_synthetic_twin_is_reused_not_rewritten(tmp_path: Path) -> None:
    spec = tiny_spec("qwen3-0.6b", {"n_layer": 1, "n_embd": 64, "n_ff": 128, "n_head": 2, "n_head_kv": 1,
                                    "head_dim": 32})
    path, written = ensure_synthetic(spec, "Q8_0", tmp_path / "m.gguf")
    assert written
    mtime = path.stat().st_mtime_ns
    again, written_again = ensure_synthetic(spec, "Q8_0", tmp_path / "m.gguf")
    assert again == path and not written_again and path.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.part"))


def test_writer_streams_with_bounded_memory(tmp_path: Path) -> None:
    """About 120 MB of tensors written while Python-side allocations stay far below that."""
    spec = get_model("qwen3-8b").with_overrides(n_layer=1)
    table = tensor_table(spec, "Q4_K_M")
    assert table.n_bytes > 100e6
    tracemalloc.start()
    try:
        result = write_synthetic_gguf(spec, "Q4_K_M", table, tmp_path / "big.gguf")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.tensor_bytes == table.n_bytes
    assert result.file_bytes > table.n_bytes
    assert peak < 64e6


def test_model_identity(tiny_dense: Path) -> None:
    model = open_model_file(tiny_dense)
    assert model.model_key == "qwen3-0.6b" and model.weights == "synthetic" and not model.is_moe
    assert len(model.sha256) == 64 and model.sha256 == open_model_file(tiny_dense).sha256


def test_real_file_names_map_to_catalog_keys(tiny_dense: Path) -> None:
    header = read_header(tiny_dense)
    plain = type(header)(header.path, header.version, {"general.architecture": "qwen3"}, header.table,
                         header.data_offset, header.file_size)
    assert guess_model_key(plain, "Qwen3-30B-A3B-Q3_K_L.gguf") == "qwen3-30b-a3b"
    assert guess_model_key(plain, "Qwen_Qwen3-4B-Q4_K_M.gguf") == "qwen3-4b"
    assert guess_model_key(plain, "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf") == "deepseek-r1-distill-qwen-7b"
    assert guess_model_key(plain, "llama-3-8b.gguf") == ""


def test_non_gguf_file_is_rejected(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"<!doctype html><html>not a model</html>")
    with pytest.raises(InvalidModelFileError, match="not a GGUF file"):
        read_header(bogus)


def test_truncated_gguf_is_rejected(tiny_dense: Path, tmp_path: Path) -> None:
    data = tiny_dense.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 4096])
    with pytest.raises(InvalidModelFileError, match="truncated GGUF: tensor data"):
        read_header(cut)
    stub = tmp_path / "stub.gguf"
    stub.write_bytes(data[:1000])
    with pytest.raises(InvalidModelFileError, match="truncated GGUF header"):
        read_header(stub)


def test_garbage_header_is_rejected(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (2**40).to_bytes(8, "little") * 2)
    with pytest.raises(InvalidModelFileError, match="corrupt GGUF header"):
        read_header(garbage)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFileError, match="no such file"):
        read_header(tmp_path / "absent.gguf")
    with pytest.raises(InvalidModelFileError, match="is a directory"):
        read_header(tmp_path)


def test_zero_weights_are_holes_of_a_sparse_file_with_the_same_table(tmp_path: Path) -> None:
    spec = tiny_spec("qwen3-0.6b", {"n_layer": 4, "n_embd": 256, "n_ff": 768, "n_head": 2, "n_head_kv": 1,
                                    "head_dim": 128})
    table = tensor_table(spec, "Q8_0")
    dense = write_synthetic_gguf(spec, "Q8_0", table, tmp_path / "random.gguf")
    sparse = write_synthetic_gguf(spec, "Q8_0", table, tmp_path / "zero.gguf", zero_weights=True)
    assert sparse.file_bytes == dense.file_bytes and read_header(sparse.path).table == table
    # what the disk holds: the header and the norms, not the matrices' tens of MB
    assert sparse.path.stat().st_blocks * 512 < dense.path.stat().st_blocks * 512 / 4
    reader = GGUFReader(sparse.path)
    weights = {t.name: t for t in reader.tensors}
    assert not np.any(weights["blk.0.ffn_down.weight"].data) and np.all(weights["blk.0.attn_norm.weight"].data > 0)


def test_an_f32_twin_is_all_f32_and_runs_in_llama_cpp(tmp_path: Path) -> None:
    """The precision ladder's top: general.file_type 0 (ALL_F32) names the preset even without our marks, and
    llama.cpp loads and decodes the file."""
    import json

    from .conftest import TINY_DENSE, run_cli

    spec = tiny_spec("qwen2.5-3b-instruct", TINY_DENSE)
    path, _ = ensure_synthetic(spec, "F32", tmp_path / "tiny-f32.gguf")
    header = read_header(path)
    assert header.table == tensor_table(spec, "F32") and header.quant == "F32"
    assert {t.type_name for t in header.table.tensors} == {"F32"}
    assert header.metadata["general.file_type"] == 0
    unmarked = type(header)(header.path, header.version, {"general.file_type": 0}, header.table,
                            header.data_offset, header.file_size)
    assert unmarked.quant == "F32"
    result = run_cli("run", "--json", "--gguf", str(path), "-p", "32", "-n", "8", "-r", "1", "--no-ttft", "-t", "2",
                     "--out", str(tmp_path / "r.csv"))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["test"] for r in rows] == ["pp32", "tg8"]
    assert all(r["status"] == "ok" and r["avg_ts"] > 0 and r["quant"] == "F32" for r in rows)
    assert rows[0]["model_size"] == tensor_table(spec, "F32").n_bytes
