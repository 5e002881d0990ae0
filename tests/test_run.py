"""`qwenbench run` end to end: real llama.cpp in a child process on tiny synthetic models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from qwenbench.harness import failure_of, run_benchmark
from qwenbench.machine import describe_machine
from qwenbench.memtrack import ChildOutcome
from qwenbench.modelfile import open_model_file
from qwenbench.results import read_records
from qwenbench.runspec import RunSettings

from .conftest import run_cli


def run_json(*args: str) -> tuple[int, dict, str]:
    result = run_cli("run", "--json", *args)
    payload = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.returncode, payload, result.stderr


def test_dense_model_pp_tg_ttft(tiny_dense: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "r.csv"
    code, payload, stderr = run_json("--gguf", str(tiny_dense), "-p", "64", "-n", "16", "-r", "2", "-t", "2",
                                     "--out", str(csv_path))
    assert code == 0, stderr
    rows = {r["test"]: r for r in payload["rows"]}
    assert set(rows) == {"pp64", "tg16", "ttft"}
    for row in rows.values():
        assert row["status"] == "ok" and row["error"] == ""
        assert row["avg_ts"] > 0 and len(row["samples_ns"]) == 2
        assert row["peak_rss_bytes"] > 10 << 20  # the kernel's high-water mark of the llama.cpp process
        assert row["weights"] == "synthetic" and row["model_key"] == "qwen3-0.6b"
        assert row["backends"] and row["llama_cpp_python_version"]
        assert row["n_threads"] == 2 and row["n_batch"] == 2048 and row["flash_attn"] == "auto"
    assert rows["pp64"]["n_ctx"] == 64 and rows["tg16"]["n_ctx"] == 16  # llama-bench's per-test context
    ttft = rows["ttft"]
    assert ttft["n_prompt"] > 100  # the chat-templated prompt, tokenized by the model's own vocabulary
    assert ttft["ttft_ms"] > 0 and ttft["ttft_ms"] == ttft["avg_ns"] / 1e6
    stored = read_records(csv_path)
    assert [r["test"] for r in stored] == ["pp64", "tg16", "ttft"]
    assert {r["run_id"] for r in stored} == {payload["run_id"]}


def test_moe_model_with_depth_and_lists(tiny_moe: Path, tmp_path: Path) -> None:
    code, payload, stderr = run_json("--gguf", str(tiny_moe), "-p", "16,32", "-n", "8", "-d", "0,16", "-r", "1",
                                     "--no-ttft", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0",
                                     "--out", str(tmp_path / "r.csv"))
    assert code == 0, stderr
    rows = payload["rows"]
    assert [r["test"] for r in rows] == ["pp16", "pp32", "tg8", "pp16 @ d16", "pp32 @ d16", "tg8 @ d16"]
    assert all(r["status"] == "ok" and r["is_moe"] for r in rows)
    assert rows[0]["model_n_params_active"] < rows[0]["model_n_params"]
    assert rows[3]["n_ctx"] == 32 and rows[3]["n_depth"] == 16
    assert rows[0]["type_k"] == "q8_0" and rows[0]["flash_attn"] == "on"


def test_the_table_names_the_csv(tiny_dense: Path, tmp_path: Path) -> None:
    result = run_cli("run", "--gguf", str(tiny_dense), "-p", "16", "-n", "4", "-r", "1", "--no-ttft",
                     "--out", str(tmp_path / "x.csv"))
    assert result.returncode == 0, result.stderr
    assert "tg4" in result.stdout and "synthetic weights" in result.stdout
    assert f"2 rows appended to {tmp_path / 'x.csv'}" in result.stdout.replace("\n", "")


def _gguf_llama_cpp_refuses(path: Path) -> None:
    """A well-formed GGUF whose architecture lacks the hyperparameters llama.cpp requires."""
    writer = GGUFWriter(path, "qwen3")
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_llama_cpp_failure_becomes_rows_with_status(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    _gguf_llama_cpp_refuses(bad)
    csv_path = tmp_path / "r.csv"
    result = run_cli("run", "--gguf", str(bad), "-p", "16", "-n", "4", "-r", "1", "--out", str(csv_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    rows = read_records(csv_path)
    assert [r["test"] for r in rows] == ["pp16", "tg4", "ttft"]
    assert all(r["status"] == "failed" and "could not load" in r["error"] for r in rows)
    assert "llama.cpp's log of this run" in result.stderr


def test_timeout_keeps_finished_tests(tiny_dense: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "r.csv"
    result = run_cli("run", "--gguf", str(tiny_dense), "-p", "16", "-n", "100000", "-r", "1", "--no-ttft",
                     "--timeout", "8", "--out", str(csv_path))
    assert result.returncode == 1
    rows = {r["test"]: r for r in read_records(csv_path)}
    assert rows["pp16"]["status"] == "ok"
    assert rows["tg100000"]["status"] == "timeout" and "time limit" in rows["tg100000"]["error"]


def test_exit_signals_map_to_statuses(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text("llama_model_load: loading\nGGML_ASSERT(ne % 32 == 0) failed\n")

    def outcome(code: int, **kw: bool) -> ChildOutcome:
        return ChildOutcome(code, 1, None, kw.get("timed_out", False), kw.get("interrupted", False), 1.0)

    assert failure_of(outcome(-9), None, log)[0] == "oom"
    status, error = failure_of(outcome(-6), None, log)
    assert status == "crashed" and "SIGABRT" in error and "GGML_ASSERT" in error
    assert failure_of(outcome(-9, timed_out=True), None, log)[0] == "timeout"
    assert failure_of(outcome(-9, interrupted=True), None, log)[0] == "interrupted"
    assert failure_of(outcome(3), "llama_decode failed with code 1", log) == (
        "failed", "llama_decode failed with code 1 [llama.cpp: GGML_ASSERT(ne % 32 == 0) failed]")


def test_a_depth_fill_is_decoded_once_then_restored(tiny_dense: Path, tmp_path: Path) -> None:
    model = open_model_file(tiny_dense)
    machine = describe_machine()
    base = RunSettings(model_path=str(tiny_dense), n_prompt=(8,), n_gen=(4,), n_depth=(64,), repetitions=3,
                       n_threads=1, ttft=False)
    for refill, decoded in ((False, 1), (True, 6)):
        fills: list[bool] = []
        report = run_benchmark(replace(base, refill_depth=refill), model, machine, log_dir=tmp_path,
                               on_event=lambda e, seen=fills: seen.append(e["restored"])
                               if e["event"] == "depth_filled" else None)
        assert [r.status for r in report.records] == ["ok", "ok"]
        assert all(len(r.samples_ns) == 3 for r in report.records)
        # two tests x three repetitions: one decoded fill and five restored, or six decoded with --refill-depth
        assert len(fills) == 6 and fills.count(False) == decoded
