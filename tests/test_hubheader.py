"""Planning and synthetic twins from GGUF headers on the Hub: range requests through huggingface_hub's
HfFileSystem against the fake Hub, split models, and twins that real llama.cpp runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType

from qwenbench.catalog import get_model
from qwenbench.gguf_info import parse_header, read_header, read_model_header
from qwenbench.hub import resolve
from qwenbench.hubheader import plan_tables, read_remote_header
from qwenbench.modelfile import ensure_synthetic
from qwenbench.recipe import tensor_table
from qwenbench.synth import write_synthetic_gguf
from qwenbench.tensors import TensorTable

from .conftest import TINY_DENSE, TINY_HYBRID_MOE, run_cli, tiny_spec
from .fakehub import FakeHub, FakeHubServer, FakeRepo
from .ggufsplit import split_gguf

T = GGMLQuantizationType
SPEC = get_model("qwen3-0.6b")
# unsloth-style dynamic mix: per-tensor types no llama-quantize preset produces
UD_TYPES = {"attn_k.weight": T.F16, "attn_output.weight": T.Q5_1, "ffn_gate.weight": T.IQ4_NL, "ffn_up.weight": T.Q4_0}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny 'published' files: a Q8_0, a dynamic mix, and a Q6_K split in three parts."""
    folder = tmp_path_factory.mktemp("published")
    spec = tiny_spec("qwen3-0.6b", TINY_DENSE)
    q8, _ = ensure_synthetic(spec, "Q8_0", folder / "q8.gguf")
    base = tensor_table(spec, "Q4_K_M")
    mixed = TensorTable(tuple(replace(t, ggml_type=int(UD_TYPES.get(t.name.split(".", 2)[-1], t.ggml_type)))
                              for t in base.tensors))
    write_synthetic_gguf(spec, "Q4_K_M", mixed, folder / "ud.gguf", seed=3)
    q6, _ = ensure_synthetic(spec, "Q6_K", folder / "q6.gguf")
    parts = split_gguf(q6, folder / "split" / "Qwen_Qwen3-0.6B-Q6_K.gguf", tensors_per_part=10)
    return {"Q8_0": q8, "UD-Q4_K_XL": folder / "ud.gguf", "Q6_K": q6,
            **{f"Q6_K part {i}": p for i, p in enumerate(parts, start=1)}}


@pytest.fixture
def hub(published: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    parts = {f"Q6_K/{published[f'Q6_K part {i}'].name}": published[f"Q6_K part {i}"] for i in (1, 2, 3)}
    fake = FakeHub(repos={
        "Qwen/Qwen3-0.6B-GGUF": FakeRepo({"Qwen3-0.6B-Q8_0.gguf": published["Q8_0"]}),
        "unsloth/Qwen3-0.6B-GGUF": FakeRepo({"Qwen3-0.6B-UD-Q4_K_XL.gguf": published["UD-Q4_K_XL"]}),
        "bartowski/Qwen_Qwen3-0.6B-GGUF": FakeRepo(parts),
    })
    with FakeHubServer(fake) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("QWENBENCH_CACHE_DIR", str(tmp_path / "qb"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield fake


def file_gets(hub: FakeHub) -> list[tuple[str, str, str]]:
    return [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]


def test_remote_header_is_read_with_range_requests_and_cached(hub: FakeHub, published: dict[str, Path]) -> None:
    resolved = resolve(SPEC, "Q8_0")
    remote = read_remote_header(resolved)
    local = read_header(published["Q8_0"])
    assert remote.header.table == local.table
    assert remote.header.shape() == local.shape()
    gets = file_gets(hub)
    assert gets and all(r[2].startswith("bytes=") for r in gets)  # never the whole file
    assert local.data_offset <= remote.fetched_bytes == hub.bytes_sent < resolved.size
    assert remote.requests == len(gets)

    again = read_remote_header(resolved)
    assert again.header.table == local.table and again.fetched_bytes == 0
    assert file_gets(hub) == gets  # the cache answered


def test_split_model_header_spans_every_part(hub: FakeHub, published: dict[str, Path]) -> None:
    resolved = resolve(SPEC, "Q6_K")
    assert len(resolved.files) == 3
    remote = read_remote_header(resolved)
    assert remote.header.table == read_header(published["Q6_K"]).table
    assert remote.header.file_size == resolved.size
    # the same model read locally from its parts
    assert read_model_header(published["Q6_K part 1"]).table == remote.header.table


def test_plan_tables_from_the_hub_and_fallbacks(hub: FakeHub, published: dict[str, Path]) -> None:
    found = plan_tables(SPEC, ["Q8_0", "Q6_K", "Q4_K_M"])
    assert found.source == "hub"
    assert set(found.tables) == {"Q8_0", "Q6_K"}
    assert found.tables["Q8_0"] == read_header(published["Q8_0"]).table
    assert found.shape.n_embd == TINY_DENSE["n_embd"]  # from the header, not the catalog
    assert any("Q4_K_M" in note for note in found.notes)

    offline = plan_tables(SPEC, ["Q8_0"], offline=True)
    assert offline.source == "recipe" and offline.tables["Q8_0"] == tensor_table(SPEC, "Q8_0")

    hub.error_status = 503
    outage = plan_tables(SPEC, ["Q8_0"])
    assert outage.source == "recipe" and "503" in outage.notes[0]


def test_plan_command_plans_from_remote_headers(hub: FakeHub, published: dict[str, Path]) -> None:
    result = run_cli("plan", "--no-calibrate", "--model", "qwen3-0.6b", "--ctx", "512", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["source"] == "hub"
    assert {p["quant"] for p in plan["evaluated"]} == {"Q8_0", "Q6_K"}  # the catalog candidates published
    size = sum(f["size"] for f in plan["files"].values())
    assert 0 < plan["header_bytes_fetched"] < size
    # the tiny model's tables, not the real 0.6B's: a few MB of weights, not hundreds
    assert all(p["predicted_host_bytes"] < 200 << 20 for p in plan["evaluated"])

    again = run_cli("plan", "--no-calibrate", "--model", "qwen3-0.6b", "--ctx", "512", "--json")
    assert json.loads(again.stdout)["header_bytes_fetched"] == 0


def test_plan_pinned_dynamic_quant_and_missing_quant(hub: FakeHub) -> None:
    result = run_cli("plan", "--no-calibrate", "--model", "qwen3-0.6b", "--quant", "UD-Q4_K_XL", "--ctx", "512",
                     "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["quant"] == "UD-Q4_K_XL"

    missing = run_cli("plan", "--no-calibrate", "--model", "qwen3-0.6b", "--quant", "Q2_K")
    assert missing.returncode != 0
    assert "no Q2_K GGUF of Qwen3-0.6B found" in missing.stderr and "UD-Q4_K_XL" in missing.stderr


def test_synth_from_hub_writes_a_twin_llama_cpp_runs(hub: FakeHub, published: dict[str, Path],
                                                     tmp_path: Path) -> None:
    out = tmp_path / "twin.gguf"
    result = run_cli("synth", "--from-hub", "qwen3-0.6b", "--quant", "UD-Q4_K_XL", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["twin_of"].startswith("unsloth/Qwen3-0.6B-GGUF/Qwen3-0.6B-UD-Q4_K_XL.gguf@")
    assert summary["header_bytes_fetched"] < summary["real_file_bytes"]
    assert all(r[2].startswith("bytes=") for r in file_gets(hub))

    source = published["UD-Q4_K_XL"]
    twin = read_header(out)
    assert twin.table == read_header(source).table  # every tensor's type, the dynamic mix included
    assert twin.is_synthetic and twin.quant == "UD-Q4_K_XL"
    assert twin.metadata["qwenbench.twin_of"] == summary["twin_of"]
    with source.open("rb") as a, out.open("rb") as b:
        real, copy = parse_header(a, "real", keep_arrays=True), parse_header(b, "twin", keep_arrays=True)
    assert copy.metadata["tokenizer.ggml.tokens"] == real.metadata["tokenizer.ggml.tokens"]
    assert copy.metadata["tokenizer.chat_template"] == real.metadata["tokenizer.chat_template"]
    assert copy.value_types["tokenizer.ggml.token_type"] == real.value_types["tokenizer.ggml.token_type"]

    run = run_cli("run", "--gguf", str(out), "-p", "32", "-n", "4", "-r", "1", "--no-ttft", "--json",
                  "--out", str(tmp_path / "rows.csv"))
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)["rows"]
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["quant"] for r in rows} == {"UD-Q4_K_XL"} and {r["weights"] for r in rows} == {"synthetic"}


def test_split_model_runs_from_its_first_part(published: dict[str, Path], tmp_path: Path) -> None:
    run = run_cli("run", "--gguf", str(published["Q6_K part 1"]), "-p", "16", "-n", "2", "-r", "1", "--no-ttft",
                  "--json", "--out", str(tmp_path / "rows.csv"))
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)["rows"]
    assert {r["status"] for r in rows} == {"ok"}
    assert int(rows[0]["model_size"]) == read_model_header(published["Q6_K part 1"]).table.n_bytes


def test_plan_a_hybrid_moe_from_its_remote_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`plan --model qwen3.6-35b-a3b` from a published file's header (a tiny twin, with its MTP block, in the
    catalog's unsloth repo): the attention layout, KV and recurrent state come from that header."""
    spec = tiny_spec("qwen3.6-35b-a3b", TINY_HYBRID_MOE)
    path, _ = ensure_synthetic(spec, "Q3_K_M", tmp_path / "hybrid.gguf", mtp=True)
    fake = FakeHub(repos={"unsloth/Qwen3.6-35B-A3B-GGUF": FakeRepo({"Qwen3.6-35B-A3B-Q3_K_M.gguf": path})})
    with FakeHubServer(fake) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("QWENBENCH_CACHE_DIR", str(tmp_path / "qb"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        planned = run_cli("plan", "--no-calibrate", "--model", "qwen3.6-35b-a3b", "--ctx", "32768", "--json")
        text = run_cli("plan", "--no-calibrate", "--model", "qwen3.6-35b-a3b", "--ctx", "32768")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["source"] == "hub" and {p["quant"] for p in plan["evaluated"]} == {"Q3_K_M"}
    assert text.returncode == 0, text.stderr
    assert "attention: 3 linear + 1 full" in text.stdout and "recurrent state" in text.stdout
