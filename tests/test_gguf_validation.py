"""Wrongly typed or out-of-range GGUF metadata is refused where the header is read, naming the file and the key;
shape overrides llama.cpp would abort on are refused naming the flags."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFValueType, GGUFWriter

from qwenbench.catalog import load_catalog
from qwenbench.errors import ConfigError, InvalidModelFileError, UsageError
from qwenbench.gguf_info import parse_header, read_header, read_model_header
from qwenbench.synth import SYNTHETIC_KEY

from .conftest import TINY_DENSE, TINY_MOE, run_cli, tiny_spec

V = GGUFValueType
# what qwenbench's writer puts in a tiny dense qwen3 file, less the tokenizer: enough for every rule to apply
BASE: dict[str, tuple[Any, GGUFValueType]] = {
    "general.file_type": (15, V.UINT32),
    SYNTHETIC_KEY: (True, V.BOOL),
    "qwenbench.quant": ("Q4_K_M", V.STRING),
    "qwen3.block_count": (2, V.UINT32),
    "qwen3.context_length": (40960, V.UINT32),
    "qwen3.embedding_length": (64, V.UINT32),
    "qwen3.feed_forward_length": (128, V.UINT32),
    "qwen3.attention.head_count": (2, V.UINT32),
    "qwen3.attention.head_count_kv": (1, V.UINT32),
    "qwen3.attention.key_length": (32, V.UINT32),
    "qwen3.attention.value_length": (32, V.UINT32),
}


def write_gguf(path: Path, changes: dict[str, tuple[Any, ...]], drop: tuple[str, ...] = ()) -> Path:
    """A small, complete GGUF: BASE with `changes` replacing or adding keys (value, type[, array item type]) and
    the keys in `drop` left out."""
    writer = GGUFWriter(path, "qwen3")
    for key, (value, vtype, *item) in {**BASE, **changes}.items():
        if key not in drop:
            writer.add_key_value(key, value, vtype, item[0] if item else None)
    writer.add_tensor("token_embd.weight", np.full((8, 64), 0.01, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


WRONG = {
    "block_count as a string": ({"qwen3.block_count": ("two", V.STRING)}, "qwen3.block_count",
                                "a whole number from 1 to 512", "the string 'two'"),
    "negative block_count": ({"qwen3.block_count": (-3, V.INT32)}, "qwen3.block_count",
                             "a whole number from 1 to 512", "-3 (int32)"),
    "block_count beyond llama.cpp's limit": ({"qwen3.block_count": (100_000, V.UINT32)}, "qwen3.block_count",
                                             "from 1 to 512", "100000 (uint32)"),
    "block_count as a bool": ({"qwen3.block_count": (True, V.BOOL)}, "qwen3.block_count", "a whole number",
                              "the bool true"),
    "alignment as a string": ({"general.alignment": ("abc", V.STRING)}, "general.alignment",
                              "a power of two stored as uint32", "the string 'abc'"),
    "alignment not a power of two": ({"general.alignment": (48, V.UINT32)}, "general.alignment",
                                     "a power of two", "48 (uint32)"),
    "embedding_length as a string": ({"qwen3.embedding_length": ("64", V.STRING)}, "qwen3.embedding_length",
                                     "a whole number from 1 to 1048576", "the string '64'"),
    "embedding_length as an array": ({"qwen3.embedding_length": ([64, 64], V.ARRAY, V.UINT32)},
                                     "qwen3.embedding_length", "a whole number", "an array of 2 uint32 values"),
    "embedding_length as a float": ({"qwen3.embedding_length": (64.0, V.FLOAT32)}, "qwen3.embedding_length",
                                    "a whole number", "the float32 64.0"),
    "file_type as a string": ({"general.file_type": ("Q4_K_M", V.STRING)}, "general.file_type",
                              "a whole number from 0 to 65535", "the string 'Q4_K_M'"),
    "split.count as a string": ({"split.count": ("3", V.STRING)}, "split.count", "a whole number from 1",
                                "the string '3'"),
    "split.no as a string": ({"split.no": ("0", V.STRING), "split.count": (3, V.UINT16)}, "split.no",
                             "a whole number from 0", "the string '0'"),
    "synthetic mark as a string": ({SYNTHETIC_KEY: ("false", V.STRING)}, SYNTHETIC_KEY, "a bool",
                                   "the string 'false'"),
    "head_count of zero": ({"qwen3.attention.head_count": (0, V.UINT32)}, "qwen3.attention.head_count",
                           "from 1 to 4096", "0 (uint32)"),
    "per-layer head_count_kv of the wrong length": (
        {"qwen3.attention.head_count_kv": ([1, 1, 1], V.ARRAY, V.UINT32)}, "qwen3.attention.head_count_kv",
        "or one per layer", "an array of 3 uint32 values, not one per layer (block_count 2)"),
    "per-layer feed_forward_length of strings": (
        {"qwen3.feed_forward_length": (["128", "128"], V.ARRAY, V.STRING)}, "qwen3.feed_forward_length",
        "or one per layer", "an array of 2 string values"),
    "expert_count as a string": ({"qwen3.expert_count": ("8", V.STRING)}, "qwen3.expert_count",
                                 "a whole number from 0 to 1024", "the string '8'"),
}


@pytest.mark.parametrize(("changes", "key", "expected", "found"), list(WRONG.values()), ids=list(WRONG))
def test_wrongly_typed_metadata_is_refused_naming_the_key(tmp_path: Path, changes: dict, key: str, expected: str,
                                                          found: str) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", changes)
    with pytest.raises(InvalidModelFileError) as caught:
        read_header(path)
    message = caught.value.message
    assert message.startswith(f"{path}: metadata {key} must be ")
    assert expected in message and message.endswith(f"found {found}")
    assert caught.value.hint and "header" in caught.value.hint


def test_the_hint_points_at_our_writer_for_our_own_keys(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", {SYNTHETIC_KEY: ("false", V.STRING)})
    with pytest.raises(InvalidModelFileError) as caught:
        read_header(path)
    assert caught.value.hint is not None and "qwenbench synth" in caught.value.hint


CONTRADICTIONS = {
    "more experts used than there are": (
        {"qwen3.expert_count": (4, V.UINT32), "qwen3.expert_used_count": (8, V.UINT32)},
        "metadata qwen3.expert_used_count 8 is more than qwen3.expert_count 4"),
    "experts but none used": (
        {"qwen3.expert_count": (4, V.UINT32)},
        "metadata qwen3.expert_count is 4 but qwen3.expert_used_count is missing"),
    "experts used without experts": (
        {"qwen3.expert_used_count": (2, V.UINT32)},
        "metadata qwen3.expert_used_count 2 is more than qwen3.expert_count 0"),
    "query heads not a multiple of the KV heads": (
        {"qwen3.attention.head_count": (2, V.UINT32), "qwen3.attention.head_count_kv": (3, V.UINT32)},
        "metadata qwen3.attention.head_count 2 is not a multiple of qwen3.attention.head_count_kv 3"),
    "one layer's KV heads do not divide its heads": (
        {"qwen3.attention.head_count_kv": ([1, 3], V.ARRAY, V.INT32)},
        "metadata qwen3.attention.head_count 2 is not a multiple of qwen3.attention.head_count_kv 3 (layer 1)"),
    "split part number past the count": (
        {"split.no": (3, V.UINT16), "split.count": (3, V.UINT16)}, "metadata split.no 3 is not below split.count 3"),
}


@pytest.mark.parametrize(("changes", "message"), list(CONTRADICTIONS.values()), ids=list(CONTRADICTIONS))
def test_keys_that_contradict_each_other_are_refused(tmp_path: Path, changes: dict, message: str) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", changes)
    with pytest.raises(InvalidModelFileError) as caught:
        read_header(path)
    assert caught.value.message.startswith(f"{path}: {message}")
    assert caught.value.hint


def test_a_remote_header_stream_is_validated_the_same_way(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", {"qwen3.block_count": ("two", V.STRING)})
    with pytest.raises(InvalidModelFileError, match=r"^Qwen/Qwen3-0\.6B-GGUF/tiny\.gguf: metadata qwen3\.block_count"):
        parse_header(io.BytesIO(path.read_bytes()), "Qwen/Qwen3-0.6B-GGUF/tiny.gguf")


def test_the_synthetic_mark_counts_only_as_a_real_bool(tmp_path: Path) -> None:
    assert read_header(write_gguf(tmp_path / "yes.gguf", {})).is_synthetic is True
    assert read_header(write_gguf(tmp_path / "no.gguf", {SYNTHETIC_KEY: (False, V.BOOL)})).is_synthetic is False
    assert read_header(write_gguf(tmp_path / "real.gguf", {}, drop=(SYNTHETIC_KEY,))).is_synthetic is False
    # a string is refused outright (see WRONG), so "false" can never be taken for true


def test_any_integer_type_is_a_number(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", {"qwen3.block_count": (2, V.INT64), "general.file_type": (15, V.UINT8),
                                               "qwen3.embedding_length": (64, V.INT16)})
    header = read_header(path)
    assert header.shape().n_layer == 2 and header.shape().n_embd == 64 and header.quant == "Q4_K_M"


def test_per_layer_hyperparameters_read_as_llama_cpp_reads_them(tmp_path: Path) -> None:
    """llama.cpp takes feed_forward_length, head counts and expert counts as one value per layer too."""
    path = write_gguf(tmp_path / "tiny.gguf", {
        "qwen3.feed_forward_length": ([128, 256], V.ARRAY, V.UINT32),
        "qwen3.attention.head_count": ([2, 4], V.ARRAY, V.INT32),
        "qwen3.attention.head_count_kv": ([1, 2], V.ARRAY, V.UINT32),
    })
    shape = read_header(path).shape()
    assert shape.n_ff == 256 and shape.n_head == 4  # the widest layer sizes the buffers
    assert shape.n_head_kv == 2  # ceil of the mean (1.5): n_layer times it covers the KV cache's sum over layers
    assert shape.head_dim_k == 32  # key_length given


def test_long_per_layer_arrays_are_kept_and_checked(tmp_path: Path) -> None:
    """Arrays of more than 64 items are skipped when parsing (the tokenizer), but not per-layer numbers."""
    n_layer = 94
    path = write_gguf(tmp_path / "tiny.gguf", {"qwen3.block_count": (n_layer, V.UINT32),
                                               "qwen3.feed_forward_length": ([128] * (n_layer - 1) + [512], V.ARRAY,
                                                                             V.UINT32)})
    assert read_header(path).shape().n_ff == 512
    bad = write_gguf(tmp_path / "bad.gguf", {"qwen3.block_count": (n_layer, V.UINT32),
                                             "qwen3.feed_forward_length": ([128] * (n_layer - 1) + [-1], V.ARRAY,
                                                                           V.INT32)})
    with pytest.raises(InvalidModelFileError, match=r"qwen3\.feed_forward_length must be"):
        read_header(bad)


def test_valid_tiny_models_still_read(tiny_dense: Path, tiny_moe: Path) -> None:
    dense = read_header(tiny_dense)
    assert dense.is_synthetic and dense.quant == "Q4_K_M" and dense.split_count == 1
    assert dense.shape().n_layer == TINY_DENSE["n_layer"] and dense.shape().n_head_kv == TINY_DENSE["n_head_kv"]
    assert dense.shape().n_ff == TINY_DENSE["n_ff"] and dense.n_expert == 0 and dense.n_expert_used == 0
    moe = read_model_header(tiny_moe)
    assert moe.n_expert == TINY_MOE["n_expert"] and moe.n_expert_used == TINY_MOE["n_expert_used"]
    assert moe.shape().n_ff_exp == TINY_MOE["n_ff_exp"] and moe.shape().head_dim_k == TINY_MOE["head_dim"]


def test_a_damaged_model_is_one_error_line_not_a_traceback(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", {"qwen3.block_count": ("two", V.STRING)})
    result = run_cli("run", "--gguf", str(path), "-p", "16", "-n", "2", "-r", "1", "--no-ttft",
                     "--out", str(tmp_path / "rows.csv"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "metadata qwen3.block_count must be a whole number" in result.stderr.replace("\n", " ")


# ------------------------------------------------------------------------------------- shape overrides


def test_heads_not_a_multiple_of_kv_heads_names_both_flags() -> None:
    with pytest.raises(UsageError) as caught:
        tiny_spec("qwen3-0.6b", {**TINY_DENSE, "n_head": 2, "n_head_kv": 3})
    assert caught.value.message == "--heads 2 is not a multiple of --kv-heads 3"
    assert caught.value.hint and "grouped-query attention" in caught.value.hint


def test_an_override_against_the_catalogs_value_names_where_that_came_from() -> None:
    with pytest.raises(UsageError, match=r"^--heads 2 is not a multiple of --kv-heads 8 \(qwen3-0\.6b's value\)$"):
        tiny_spec("qwen3-0.6b", {"n_head": 2})


def test_more_experts_used_than_experts_names_both_flags() -> None:
    with pytest.raises(UsageError) as caught:
        tiny_spec("qwen3-30b-a3b", {**TINY_MOE, "n_expert": 4, "n_expert_used": 8})
    assert caught.value.message == "--experts-used 8 is more than --experts 4"
    assert caught.value.hint and "experts-used <= experts" in caught.value.hint


@pytest.mark.parametrize(("model", "shape", "message"), [
    ("qwen3-0.6b", {"n_expert": 4, "n_expert_used": 2}, "--experts 4, --experts-used 2: qwen3-0.6b is a dense"),
    ("qwen3-30b-a3b", {"n_expert_used": 0}, "a qwen3moe model needs experts: --experts-used 0 must be at least 1"),
    ("qwen3-0.6b", {"head_dim": 31}, "--head-dim 31 is odd"),
    ("qwen3-0.6b", {"n_layer": 600}, "--layers 600 must be from 1 to 512"),
    ("qwen3-0.6b", {"n_head_kv": 0}, "--kv-heads 0 must be from 1 to 4096"),
    ("qwen3-0.6b", {"n_embd": "64"}, "--hidden must be a whole number, got '64'"),
])
def test_shapes_llama_cpp_aborts_on_are_refused(model: str, shape: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        tiny_spec(model, shape)
    assert caught.value.message.startswith(message)
    assert caught.value.hint


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(UsageError) as caught:
        tiny_spec("qwen3-30b-a3b", {**TINY_MOE, "n_head": 6, "n_head_kv": 4, "head_dim": 33})
    assert caught.value.message == "--heads 6 is not a multiple of --kv-heads 4; --head-dim 33 is odd"


def test_synth_refuses_the_shape_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "bad.gguf"
    result = run_cli("synth", "--model", "qwen3-0.6b", "--heads", "2", "--kv-heads", "3", "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--heads 2 is not a multiple of --kv-heads 3" in result.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_a_catalog_entry_is_checked_by_the_same_rules(tmp_path: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text('[models."odd"]\narch = "qwen3"\nn_layer = 2\nn_embd = 64\nn_ff = 128\nn_head = 6\n'
                       'n_head_kv = 4\nhead_dim = 32\nn_vocab = 151936\ncontext_length = 4096\nrope_theta = 1e6\n'
                       'rms_norm_eps = 1e-6\nqkv_bias = false\nqk_norm = true\ntied_embeddings = true\n'
                       'tokenizer_pre = "qwen2"\nparams_total = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models\.odd: n_head = 6 is not a multiple of n_head_kv = 4"):
        load_catalog(catalog)
    typed = tmp_path / "typed.toml"
    typed.write_text(catalog.read_text(encoding="utf-8").replace("n_head = 6", "n_head = 8")
                     .replace("qk_norm = true", 'qk_norm = "yes"'), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models\.odd\.qk_norm: must be true or false, got 'yes'"):
        load_catalog(typed)

