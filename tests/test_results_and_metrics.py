"""The CSV schema: round trip, concurrent appends, schema checks; and the statistics."""

from __future__ import annotations

import csv
import multiprocessing
import statistics
from dataclasses import fields, replace
from pathlib import Path

import pytest

from qwenbench.errors import ResultsFileError
from qwenbench.metrics import summarize
from qwenbench.results import COLUMNS, SCHEMA_VERSION, Record, append_records, check_appendable, read_records

REQUIRED = ("schema_version run_id test_time status error test n_prompt n_gen n_depth n_batch n_ubatch n_threads "
            "n_gpu_layers n_cpu_moe flash_attn type_k type_v avg_ts stddev_ts median_ts samples_ts ttft_ms load_ms "
            "peak_rss_bytes peak_vram_bytes model_key model_filename model_type quant model_size model_n_params "
            "model_n_params_active is_moe weights model_sha256 machine_id cpu_model n_cpu_physical ram_total_bytes "
            "gpu_names backends llama_cpp_commit llama_cpp_python_version qwenbench_version").split()


def make_record(**changes: object) -> Record:
    base = {f.name: None for f in fields(Record)}
    base.update(schema_version=SCHEMA_VERSION, run_id="r1", suite="", mode="", job_key="",
                test_time="2026-11-22T00:00:00+00:00", status="ok",
                error="", test="tg128", n_prompt=0, n_gen=128, n_depth=0, n_ctx=128, n_batch=2048, n_ubatch=512,
                n_threads=2, n_gpu_layers=-1, n_cpu_moe=0, flash_attn="auto", type_k="f16", type_v="f16",
                load_mode="auto", repetitions=3, avg_ns=2.1e9, stddev_ns=1e7, avg_ts=60.5, stddev_ts=0.3,
                median_ts=60.4, samples_ns=(2100000000, 2110000000, 2090000000), samples_ts=(60.9, 60.6, 61.2),
                ttft_ms=None, load_ms=812.5, peak_rss_bytes=734 << 20, peak_vram_bytes=None,
                model_key="qwen3-0.6b", model_filename="m.gguf", model_type="qwen3 0.6B Q4_K - Medium",
                quant="Q4_K_M", model_size=390753280, model_n_params=596049920, model_n_params_active=596049920,
                is_moe=False, weights="synthetic", model_sha256="ab" * 32, model_repo="", model_revision="",
                machine_id="m1", hostname="h",
                cpu_model="cpu, with a comma", n_cpu_physical=2, ram_total_bytes=24 << 30, gpu_names="",
                backends="CPU", llama_cpp_commit="0c1e570", llama_cpp_python_version="0.3.36",
                qwenbench_version="0.1.0")
    base.update(changes)
    return Record(**base)


def test_schema_has_the_required_columns() -> None:
    assert set(REQUIRED) <= set(COLUMNS)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "r.csv"
    first = make_record()
    failed = make_record(status="crashed", error='llama.cpp crashed (SIGABRT): GGML_ASSERT "x"', avg_ts=None,
                         avg_ns=None, stddev_ns=None, stddev_ts=None, median_ts=None, samples_ns=(), samples_ts=())
    append_records(path, [first, failed])
    rows = read_records(path)
    assert len(rows) == 2
    assert rows[0]["avg_ts"] == 60.5 and rows[0]["samples_ns"] == [2100000000, 2110000000, 2090000000]
    assert rows[0]["peak_rss_bytes"] == 734 << 20 and rows[0]["is_moe"] is False
    assert rows[0]["cpu_model"] == "cpu, with a comma" and rows[0]["ttft_ms"] is None
    assert rows[1]["status"] == "crashed" and rows[1]["avg_ts"] is None and rows[1]["samples_ts"] == []
    assert rows[1]["error"].startswith("llama.cpp crashed")
    with path.open() as handle:
        assert next(csv.reader(handle)) == list(COLUMNS)


def _append_many(path: str, writer: int) -> None:
    for i in range(40):
        append_records(Path(path), [make_record(run_id=f"w{writer}-{i}", error="x" * 2000)])


def test_two_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "shared.csv"
    processes = [multiprocessing.Process(target=_append_many, args=(str(path), w)) for w in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    rows = read_records(path)
    assert len(rows) == 80
    assert sorted(r["run_id"] for r in rows) == sorted(f"w{w}-{i}" for w in range(2) for i in range(40))
    assert path.read_text().count("schema_version") == 1


def test_other_layout_is_not_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    path.write_text("schema_version,run_id,test\n0,old,pp512\n")
    with pytest.raises(ResultsFileError, match="another column layout"):
        check_appendable(path)
    appended = append_records(path, [make_record()])  # it changed after the check: the rows are rescued beside it
    assert path.read_text() == "schema_version,run_id,test\n0,old,pp512\n"
    assert appended.path.parent == tmp_path and appended.path.name.startswith("old.rescued-")
    assert "another column layout" in appended.notes[0] and str(appended.path) in appended.notes[0]
    assert [r["run_id"] for r in read_records(appended.path)] == [make_record().run_id]


def test_newer_schema_is_refused_and_older_is_read(tmp_path: Path) -> None:
    newer = tmp_path / "newer.csv"
    newer.write_text(f"schema_version,run_id\n{SCHEMA_VERSION + 1},x\n")
    with pytest.raises(ResultsFileError, match="newer qwenbench"):
        read_records(newer)
    older = tmp_path / "older.csv"
    older.write_text("schema_version,run_id,test,avg_ts\n0,x,pp512,12.5\n")
    (row,) = read_records(older)
    assert row["avg_ts"] == 12.5 and row["peak_rss_bytes"] is None and row["samples_ts"] == []


def test_summary_matches_llama_bench_definitions() -> None:
    samples = [2_000_000_000, 2_500_000_000, 1_600_000_000]
    summary = summarize(samples, 128)
    rates = [128e9 / s for s in samples]
    assert summary.avg_ts == pytest.approx(statistics.mean(rates))  # mean of rates, not 128 / mean time
    assert summary.avg_ts != pytest.approx(128e9 / statistics.mean(samples))
    assert summary.stddev_ts == pytest.approx(statistics.stdev(rates))
    assert summary.median_ts == pytest.approx(64.0)
    assert summary.avg_ns == pytest.approx(statistics.mean(samples))
    single = summarize([1_000_000_000], 10)
    assert single.avg_ts == 10 and single.stddev_ts == 0
    with pytest.raises(ValueError):
        summarize([], 1)


def test_record_replace_keeps_types() -> None:
    assert replace(make_record(), status="timeout").to_row()[COLUMNS.index("status")] == "timeout"


def test_an_older_default_file_is_set_aside_not_lost(tmp_path: Path) -> None:
    from qwenbench.results import set_aside_older

    path = tmp_path / "host.csv"
    path.write_text("schema_version,run_id,test\n1,old,pp512\n")
    moved = set_aside_older(path)
    assert moved == tmp_path / "host.schema1.csv" and moved.read_text().endswith("1,old,pp512\n")
    assert not path.exists()
    append_records(path, [make_record()])
    assert set_aside_older(path) is None  # current: stays
    path.with_name("host.schema1.csv").write_text("x")
    newer = tmp_path / "newer.csv"
    newer.write_text(f"schema_version,run_id\n{SCHEMA_VERSION + 1},x\n")
    assert set_aside_older(newer) is None and newer.exists()  # not ours to move
