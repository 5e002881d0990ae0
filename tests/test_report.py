"""Reports and comparisons over recorded CSVs of three machines: a CPU laptop, a GPU workstation, and an
older-schema file; tables checked against the rows, the HTML self-contained, the PNGs real images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from qwenbench import report
from qwenbench.errors import ResultsFileError
from qwenbench.report import compare, load_results
from qwenbench.results import SCHEMA_VERSION, append_records

from .conftest import run_cli
from .test_results_and_metrics import make_record

GB = 10**9
QWEN3_4B = {"model_key": "qwen3-4b", "quant": "Q4_K_M", "model_size": 2_490_000_000, "model_n_params": 4_022_000_000,
            "model_n_params_active": 4_022_000_000, "is_moe": False, "weights": "real"}
QWEN3_30B = {"model_key": "qwen3-30b-a3b", "quant": "Q3_K_L", "model_size": 14_580_000_000,
             "model_n_params": 30_530_000_000, "model_n_params_active": 3_340_000_000, "is_moe": True,
             "weights": "synthetic"}


def rows(machine: dict, model: dict, mode: str, tg: float, pp: float, ttft_ms: float, host_bpt: int, gpu_bpt: int,
         run: str, **extra: object) -> list:
    common = {**machine, **model, "mode": mode, "suite": "bench-all", "job_key": f"{run}-key", "run_id": run,
              "host_bytes_per_token": host_bpt, "gpu_bytes_per_token": gpu_bpt, **extra}
    return [make_record(**common, test="tg128", avg_ts=tg, n_prompt=0, n_gen=128),
            make_record(**common, test="pp512", avg_ts=pp, n_prompt=512, n_gen=0),
            make_record(**common, test="ttft", avg_ts=None, ttft_ms=ttft_ms, n_prompt=30, n_gen=1)]


LAPTOP = {"hostname": "laptop", "machine_id": "lap123", "backends": "CPU", "gpu_names": "", "ram_bandwidth_gbps": 40.0,
          "gpu_bandwidth_gbps": None, "cpu_model": "Ryzen 7 7840U"}
WORKSTATION = {"hostname": "workstation", "machine_id": "ws4567", "backends": "CPU,CUDA",
               "gpu_names": "NVIDIA GeForce RTX 4090", "ram_bandwidth_gbps": 60.0, "gpu_bandwidth_gbps": 1008.0,
               "cpu_model": "Ryzen 9 7950X"}


@pytest.fixture(scope="module")
def csvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recorded")
    laptop, workstation, old = folder / "laptop.csv", folder / "workstation.csv", folder / "oldbox.csv"
    append_records(laptop, [
        *rows(LAPTOP, QWEN3_4B, "cpu", tg=12.0, pp=150.0, ttft_ms=400.0, host_bpt=2_500_000_000, gpu_bpt=0, run="l1"),
        *rows(LAPTOP, QWEN3_4B, "cpu", tg=14.0, pp=170.0, ttft_ms=380.0, host_bpt=2_500_000_000, gpu_bpt=0, run="l2"),
        *rows(LAPTOP, QWEN3_30B, "cpu", tg=16.0, pp=90.0, ttft_ms=700.0, host_bpt=1_600_000_000, gpu_bpt=0, run="l3",
              predicted_host_bytes=15 << 30, peak_rss_bytes=(15 << 30) + (200 << 20)),
        *[make_record(**LAPTOP, **QWEN3_4B, mode="gpu", suite="bench-all", job_key="l4-key", run_id="l4",
                      test=test, status="skipped", error="gpu mode needs a GPU that this llama.cpp build can use",
                      avg_ts=None, stddev_ts=None, median_ts=None, samples_ns=(), samples_ts=())
          for test in ("tg128", "pp512", "ttft")],
    ])
    append_records(workstation, [
        *rows(WORKSTATION, QWEN3_4B, "cpu", tg=24.0, pp=400.0, ttft_ms=200.0, host_bpt=2_500_000_000, gpu_bpt=0,
              run="w1"),
        *rows(WORKSTATION, QWEN3_4B, "gpu", tg=180.0, pp=9000.0, ttft_ms=20.0, host_bpt=0, gpu_bpt=2_500_000_000,
              run="w2", predicted_vram_bytes=3 << 30, peak_vram_bytes=(3 << 30) + (100 << 20)),
        *rows(WORKSTATION, QWEN3_30B, "gpu-experts-cpu", tg=45.0, pp=600.0, ttft_ms=150.0, host_bpt=1_300_000_000,
              gpu_bpt=300_000_000, run="w3"),
    ])
    # schema 3 (before suite, mode, job_key and the bandwidth columns): written as that qwenbench wrote it
    current = laptop.read_text().splitlines()[0].split(",")
    gone = {"suite", "mode", "job_key", "host_bytes_per_token", "gpu_bytes_per_token", "ram_bandwidth_gbps",
            "gpu_bandwidth_gbps", "server", "serve_metrics", "predicted_pp_ts", "predicted_tg_ts", "predicted_ttft_ms"}
    header = [c for c in current if c not in gone]
    with old.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        for record in rows({"hostname": "oldbox", "machine_id": "old999", "backends": "CPU"}, QWEN3_4B, "",
                           tg=8.0, pp=80.0, ttft_ms=900.0, host_bpt=0, gpu_bpt=0, run="o1"):
            values = dict(zip(current, record.to_row(), strict=True))
            writer.writerow({**{k: values[k] for k in header}, "schema_version": "3"})
    return {"laptop": laptop, "workstation": workstation, "old": old}


def test_compare_puts_machines_side_by_side(csvs: dict[str, Path]) -> None:
    table = compare(load_results([csvs["laptop"], csvs["workstation"], csvs["old"]]))
    cell = table.set_index(["model", "mode", "test"])
    assert cell.loc[("qwen3-4b Q4_K_M", "cpu", "tg128"), "laptop"] == 13.0  # median of two runs
    assert cell.loc[("qwen3-4b Q4_K_M", "cpu", "tg128"), "workstation"] == 24.0
    assert cell.loc[("qwen3-4b Q4_K_M", "cpu", "tg128"), "oldbox"] == 8.0  # schema 3, its mode derived
    assert cell.loc[("qwen3-4b Q4_K_M", "cpu", "tg128"), "workstation / laptop"] == pytest.approx(24 / 13)
    assert cell.loc[("qwen3-4b Q4_K_M", "cpu", "ttft"), "workstation / laptop"] == pytest.approx(390 / 200)
    # measured on one machine only: the row stays, the other cells are missing
    gpu = cell.loc[("qwen3-4b Q4_K_M", "gpu", "tg128")]
    assert gpu["workstation"] == 180.0 and gpu.isna()["laptop"] and gpu.isna()["workstation / laptop"]
    assert ("qwen3-30b-a3b Q3_K_L (synthetic)", "gpu-experts-cpu", "pp512") in cell.index

    baseline = compare(load_results([csvs["laptop"], csvs["workstation"]]), baseline="workstation")
    assert "laptop / workstation" in baseline.columns


def test_compare_cli_outputs(csvs: dict[str, Path]) -> None:
    files = [str(csvs["laptop"]), str(csvs["workstation"])]
    as_json = run_cli("compare", *files, "--json")
    assert as_json.returncode == 0, as_json.stderr
    records = json.loads(as_json.stdout)
    tg = next(r for r in records if r["model"] == "qwen3-4b Q4_K_M" and r["mode"] == "cpu" and r["test"] == "tg128")
    assert tg["laptop"] == 13.0 and tg["workstation / laptop"] == pytest.approx(24 / 13)
    as_csv = run_cli("compare", *files, "--csv")
    header = as_csv.stdout.splitlines()[0].split(",")
    assert header == ["model", "mode", "test", "laptop", "workstation", "workstation / laptop"]
    markdown = run_cli("compare", *files, "--markdown")
    assert "| qwen3-4b Q4_K_M" in markdown.stdout and "—" in markdown.stdout
    terminal = run_cli("compare", *files)
    assert "1.85x" in terminal.stdout  # 24 / 13
    unknown = run_cli("compare", *files, "--baseline", "nas")
    assert unknown.returncode == 2 and "machines: laptop, workstation" in unknown.stderr


def test_unreadable_files_are_refused_clearly(tmp_path: Path) -> None:
    newer = tmp_path / "newer.csv"
    newer.write_text(f"schema_version,run_id\n{SCHEMA_VERSION + 1},x\n")
    with pytest.raises(ResultsFileError, match="newer qwenbench"):
        load_results([newer])
    other = tmp_path / "other.csv"
    other.write_text("name,value\na,1\n")
    with pytest.raises(ResultsFileError, match="not a qwenbench results file"):
        load_results([other])
    result = run_cli("report", str(other), "--out", str(tmp_path / "r"))
    assert result.returncode == 1 and "not a qwenbench results file" in result.stderr


def test_report_tables_charts_and_html(csvs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli("report", str(csvs["laptop"]), str(csvs["workstation"]), str(csvs["old"]), "--out", str(out),
                     "--json")
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    assert written["machines"] == ["laptop", "workstation", "oldbox"] and written["rows"] == 24
    for chart in map(Path, written["charts"]):
        data = chart.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 400 and height >= 300
    assert {Path(c).name for c in written["charts"]} >= {"speed-laptop.png", "speed-workstation.png",
                                                         "dense-vs-moe.png", "memory.png"}
    page = Path(written["html"]).read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == len(written["charts"])
    assert "src='http" not in page and "<script" not in page  # opens offline, alone
    markdown = Path(written["markdown"]).read_text()
    # dense vs MoE: the 30B-A3B on the laptop reads 1,600 MB per token at 16 t/s: 25.6 GB/s, 64% of 40 GB/s
    line = next(r for r in markdown.splitlines() if "qwen3-30b-a3b" in r and "| laptop" in r and "MoE" in r)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[8] == "16.00" and cells[9] == "1,600" and cells[10] == "25.60" and cells[11] == "64.00"
    # on the GPU: 180 t/s x 2.5 GB = 450 GB/s, 45% of the 4090's 1,008 GB/s
    gpu_line = next(r for r in markdown.splitlines() if "| workstation | qwen3-4b" in r and "| gpu " in r)
    gpu_cells = [c.strip() for c in gpu_line.strip("|").split("|")]
    assert gpu_cells[10] == "450" and gpu_cells[11] == "44.64"
    assert "qwen3-30b-a3b Q3_K_L (synthetic) has 30.5 B parameters but reads 1600 MB per token" in markdown
    assert "measured synthetic weights" in markdown  # the synthetic rows are labelled
    assert "gpu mode needs a GPU" in markdown and "skipped" in markdown  # failures with their reasons
    memory = [r for r in markdown.splitlines() if r.count("GiB") == 0 and ("15.00" in r or "3.00" in r)]
    laptop = next(r for r in memory if r.startswith("| laptop") and "qwen3-30b-a3b" in r)
    assert "15.20" in laptop and "-1.29" in laptop  # predicted 15 GiB, measured 15.2 GiB: 1.3% under
    vram = next(r for r in memory if r.startswith("| workstation") and "qwen3-4b" in r)
    assert "3.10" in vram  # predicted 3 GiB of VRAM, NVML saw 3.1 GiB


def test_the_prediction_error_per_machine(tmp_path: Path) -> None:
    path = tmp_path / "predicted.csv"
    common = {**LAPTOP, **QWEN3_4B, "mode": "cpu"}
    append_records(path, [
        make_record(**common, run_id="a", test="tg128", avg_ts=10.0, predicted_tg_ts=11.0),
        make_record(**common, run_id="b", test="tg128", avg_ts=10.0, predicted_tg_ts=9.5),
        make_record(**common, run_id="a", test="pp512", avg_ts=100.0, n_prompt=512, predicted_pp_ts=80.0),
        make_record(**common, run_id="a", test="tg128 @ d4096", avg_ts=8.0, n_depth=4096, predicted_tg_ts=10.0),
        make_record(**common, run_id="a", test="ttft", avg_ts=None, ttft_ms=500.0, predicted_ttft_ms=400.0),
        make_record(**common, run_id="c", test="tg128", avg_ts=10.0),  # no calibration: no prediction, left out
    ])
    errors = report.prediction_errors(report.load_results([path])).set_index("kind")
    assert errors.loc["tg", "rows"] == 2 and errors.loc["tg", "median error"] == pytest.approx(0.025)
    assert errors.loc["tg", "median |error|"] == pytest.approx(0.075)
    assert errors.loc["tg", "worst"] == pytest.approx(0.1)
    assert errors.loc["pp", "median error"] == pytest.approx(-0.2)
    assert errors.loc["tg at depth", "median error"] == pytest.approx(0.25)
    assert errors.loc["ttft", "median error"] == pytest.approx(-0.2)
    written = report.write_report([path], tmp_path / "out")
    assert "How far to trust a plan" in written.markdown.read_text()


def test_split_runs_beside_the_cpu_alone_with_the_networks_share(tmp_path: Path) -> None:
    path = tmp_path / "split.csv"
    links = json.dumps([{"endpoint": "10.0.0.5:50052", "rtt_ms": 0.5, "upload_mbps": 110.0}])
    split = {**LAPTOP, **QWEN3_4B, "mode": "gpu", "topology": "rpc:10.0.0.5", "links": links, "n_gpu_layers": 99}
    append_records(path, [
        make_record(**LAPTOP, **QWEN3_4B, mode="cpu", run_id="a", test="tg128", avg_ts=10.0),
        make_record(**split, run_id="b", test="tg128", avg_ts=8.0, predicted_network_ms=25.0),
        make_record(**split, run_id="b", test="ttft", avg_ts=None, ttft_ms=500.0, predicted_network_ms=50.0),
    ])
    frame = load_results([path])
    table = report.network_shares(frame).set_index("test")
    assert list(table["mode"]) == ["gpu via rpc:10.0.0.5"] * 2
    assert table.loc["tg128", "network share"] == pytest.approx(0.2)  # 25 ms of the 125 ms each token took
    assert table.loc["tg128", "vs CPU alone"] == pytest.approx(0.8)
    assert table.loc["ttft", "network share"] == pytest.approx(0.1)
    assert pd.isna(table.loc["ttft", "vs CPU alone"])  # no TTFT was measured on the CPU alone
    assert table.loc["tg128", "links"] == "10.0.0.5:50052 0.50 ms 110 MB/s"
    markdown = report.write_report([path], tmp_path / "out").markdown.read_text()
    assert "Runs split across machines" in markdown and "| 20% " in markdown and "0.80x" in markdown


def test_a_runs_own_no_repack_is_another_mode_a_suites_plan_is_not(tmp_path: Path) -> None:
    path = tmp_path / "repack.csv"
    append_records(path, [
        make_record(**LAPTOP, **QWEN3_4B, mode="", run_id="a", n_gpu_layers=0, repack="on"),
        make_record(**LAPTOP, **QWEN3_4B, mode="", run_id="b", n_gpu_layers=0, repack="off"),
        make_record(**LAPTOP, **QWEN3_4B, mode="cpu", suite="bench-all", run_id="c", repack="off"),
    ])
    modes = dict(zip(load_results([path])["run_id"], load_results([path])["mode"], strict=True))
    assert modes == {"a": "cpu", "b": "cpu no-repack", "c": "cpu"}


def test_compare_says_a_file_of_quality_rows_has_no_speed_to_compare(tmp_path: Path) -> None:
    quality = tmp_path / "quality.csv"
    append_records(quality, [make_record(**LAPTOP, **QWEN3_4B, mode="cpu", test="quality", avg_ts=950.0, n_prompt=512,
                                         n_gen=0, kld_mean=0.031, ppl_ratio=1.02)])
    refused = run_cli("compare", str(quality))
    assert refused.returncode == 2
    assert "quality rows only" in refused.stderr and "kld_mean" in refused.stderr and "Traceback" not in refused.stderr


# the precision ladder on one machine: generation t/s per mode, and each quant's mean KLD against the F32
LADDER_TG = {"F32": (10.0, 30.0), "F16": (19.0, 60.0), "BF16": (20.0, 58.0), "Q8_0": (36.0, 100.0),
             "Q6_K": (46.0, 120.0), "Q5_K_M": (52.0, 125.0), "Q4_K_M": (60.0, 140.0), "Q3_K_M": (70.0, 150.0)}
LADDER_KLD = {"F32": 0.0, "F16": 2e-5, "BF16": 1e-6, "Q8_0": 0.0014, "Q6_K": 0.0055, "Q5_K_M": 0.011,
              "Q4_K_M": 0.031, "Q3_K_M": 0.102}
LADDER_GB = {"F32": 13.59, "F16": 6.79, "BF16": 6.79, "Q8_0": 3.61, "Q6_K": 2.79, "Q5_K_M": 2.43, "Q4_K_M": 2.10,
             "Q3_K_M": 1.72, "Q2_K": 1.4}


def ladder_model(quant: str) -> dict:
    return {"model_key": "qwen2.5-3b-instruct", "quant": quant, "model_size": int(LADDER_GB[quant] * GB),
            "model_sha256": f"{quant.lower():x<64}", "model_filename": f"Qwen2.5-3B-Instruct-{quant}.gguf",
            "weights": "real", "is_moe": False}


def ladder_quality(quant: str, kld: float, **extra: object) -> object:
    return make_record(**LAPTOP, **ladder_model(quant), mode="", run_id=f"q-{quant}", test="quality", avg_ts=900.0,
                       n_prompt=512, n_gen=0, n_ctx=512, ref_quant="F32", ref_sha256=f"{'f32':x<64}",
                       corpus="en.txt", corpus_sha256="c" * 64, kld_mean=kld, ppl_ratio=1 + kld, **extra)


def test_speed_against_quality_front_and_knee_through_the_report(tmp_path: Path) -> None:
    speed, quality = tmp_path / "laptop.csv", tmp_path / "quality.csv"
    records = []
    for quant, (cpu_tg, gpu_tg) in LADDER_TG.items():
        for mode, tg in (("cpu", cpu_tg), ("gpu", gpu_tg)):
            common = {**LAPTOP, **ladder_model(quant), "mode": mode, "suite": "precision", "run_id": f"{quant}-{mode}"}
            records += [make_record(**common, test="tg128", avg_ts=tg),
                        make_record(**common, test="pp512", avg_ts=tg * 20, n_prompt=512, n_gen=0)]
    # a second Q8_0 run on the CPU: the median of 34 and 38 is the 36 the ladder has
    records = [r for r in records if not (r.quant == "Q8_0" and r.mode == "cpu" and r.test == "tg128")]
    records += [make_record(**LAPTOP, **ladder_model("Q8_0"), mode="cpu", run_id=f"q8-{n}", test="tg128", avg_ts=tg)
                for n, tg in enumerate((34.0, 38.0))]
    # Q2_K was timed but never scored: it stays out of the trade-off
    records.append(make_record(**LAPTOP, **ladder_model("Q2_K"), mode="cpu", run_id="q2", test="tg128", avg_ts=80.0))
    append_records(speed, records)
    append_records(quality, [
        *(ladder_quality(quant, kld) for quant, kld in LADDER_KLD.items()),
        # an earlier scoring of the same file, setting and corpus: the later one counts
        ladder_quality("Q4_K_M", 0.5, test_time="2026-11-01T00:00:00+00:00"),
        # an interrupted scoring holds a part of the corpus only
        ladder_quality("Q3_K_M", 0.9, status="interrupted", test_time="2026-11-23T00:00:00+00:00"),
    ])
    table = report.speed_quality(load_results([speed, quality]))
    cpu = table[table["mode"] == "cpu"].set_index("quant")
    assert list(cpu.index) == ["F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M"]  # by KLD
    assert cpu.loc["Q8_0", "tg_ts"] == 36.0 and cpu.loc["Q8_0", "pp_ts"] == 720.0
    assert cpu.loc["Q4_K_M", "kld_mean"] == 0.031 and cpu.loc["Q3_K_M", "kld_mean"] == 0.102
    assert cpu.loc["F32", "size_gb"] == pytest.approx(13.59)
    assert set(table["setting"]) == {"against F32 on en.txt, ctx 512"}
    assert list(cpu.index[cpu["front"]]) == ["F32", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M"]
    assert list(cpu.index[cpu["knee"]]) == ["Q5_K_M"]
    gpu = table[table["mode"] == "gpu"].set_index("quant")
    assert gpu.loc["F16", "front"]  # on the GPU F16 outruns BF16: both on the front
    assert list(gpu.index[gpu["knee"]]) == ["Q6_K"]  # the GPU's curve bends earlier

    written = report.write_report([speed, quality], tmp_path / "out")
    markdown = written.markdown.read_text()
    assert "## Speed against quality" in markdown and "Kneedle" in markdown
    assert ("On laptop (cpu), qwen2.5-3b-instruct against F32 on en.txt, ctx 512: the front is F32, BF16, Q8_0, "
            "Q6_K, Q5_K_M, Q4_K_M, Q3_K_M; the knee is Q5_K_M, 52.0 t/s (5.2x F32's) at mean KLD 0.011.") in markdown
    cells = {}
    for line in markdown.splitlines():
        parts = [c.strip() for c in line.strip("|").split("|")]
        if len(parts) == 7 and parts[0] in ("cpu", "gpu"):
            cells[(parts[0], parts[1])] = parts
    assert cells[("cpu", "Q5_K_M")] == ["cpu", "Q5_K_M", "52.00", "1,040", "0.011", "2.43", "knee"]
    assert cells[("cpu", "Q3_K_M")][4] == "0.102" and cells[("cpu", "BF16")][4] == "1e-06"
    assert cells[("cpu", "F16")][6] == "" and cells[("cpu", "F32")][6] == "yes"
    assert cells[("gpu", "Q6_K")][6] == "knee" and ("cpu", "Q2_K") not in cells
    charts = [c for c in written.charts if c.name.startswith("speed-quality-")]
    assert [c.name for c in charts] == ["speed-quality-laptop-qwen2-5-3b-instruct-0.png"]
    assert charts[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written.html.read_text().count("data:image/png;base64,") == len(written.charts)


def test_speed_against_quality_is_absent_without_quality_and_says_how_without_speed(tmp_path: Path) -> None:
    speed, quality = tmp_path / "speed.csv", tmp_path / "quality.csv"
    append_records(speed, [make_record(**LAPTOP, **ladder_model("Q8_0"), mode="cpu", test="tg128", avg_ts=36.0)])
    append_records(quality, [ladder_quality("Q4_K_M", 0.031)])
    assert "Speed against quality" not in report.write_report([speed], tmp_path / "a").markdown.read_text()
    # scored, but the speed rows are of another file: nothing to put side by side, and the way to get it
    alone = report.write_report([speed, quality], tmp_path / "b").markdown.read_text()
    assert "## Speed against quality" in alone and "no speed rows of the same files" in alone
    assert "configs/precision.toml" in alone
    assert report.speed_quality(load_results([quality])).empty
