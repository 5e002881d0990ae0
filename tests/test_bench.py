"""Bench suites: config validation, and a matrix on tiny synthetic models through the real CLI and llama.cpp in
which one file is corrupt, one download fails verification and one job is killed mid-run; then --resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from qwenbench.config import load_config
from qwenbench.errors import ConfigError
from qwenbench.results import read_records

from .conftest import QWENBENCH, default_signals, run_cli
from .fakehub import FakeHub, FakeHubServer, FakeRepo

SUITE = """
[suite]
name = "tiny"
modes = ["cpu", "gpu", "gpu-experts-cpu"]
n_prompt = [32]
n_gen = [8]
repetitions = 2
timeout_s = 120

[[model]]
gguf = "dense.gguf"
key = "qwen3-0.6b"

[[model]]
gguf = "moe.gguf"

[[model]]
gguf = "corrupt.gguf"

[[model]]
key = "qwen3-0.6b"
quant = "Q8_0"
modes = ["cpu"]
"""


@pytest.fixture
def suite(tmp_path: Path, tiny_dense: Path, tiny_moe: Path) -> Path:
    shutil.copy(tiny_dense, tmp_path / "dense.gguf")
    shutil.copy(tiny_moe, tmp_path / "moe.gguf")
    (tmp_path / "corrupt.gguf").write_bytes(tiny_dense.read_bytes()[:3_000_000])  # cut short
    (tmp_path / "tiny.toml").write_text(SUITE)
    return tmp_path / "tiny.toml"


@pytest.fixture
def hub(tmp_path: Path, tiny_dense: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The catalog entry's file on a fake Hub, whose transfers are corrupted until a test says otherwise."""
    fake = FakeHub(repos={"Qwen/Qwen3-0.6B-GGUF": FakeRepo({"Qwen3-0.6B-Q8_0.gguf": tiny_dense.read_bytes()})},
                   corrupt={"Qwen3-0.6B-Q8_0.gguf"}, corrupt_times=2)
    with FakeHubServer(fake) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        yield fake


def kill_second_job(bench: subprocess.Popen[str], killed: list[int]) -> None:
    """SIGKILL the second benchmark child the suite starts, as the kernel's OOM killer would."""
    seen: set[int] = set()
    parent = psutil.Process(bench.pid)
    while bench.poll() is None and not killed:
        try:
            children = [c for c in parent.children(recursive=True) if "qwenbench.runner" in " ".join(c.cmdline())]
        except psutil.Error:
            children = []
        for child in children:
            seen.add(child.pid)
            if len(seen) == 2:
                time.sleep(0.05)  # mid-run: loading (a tiny model measures in well under a second)
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)
                return
        time.sleep(0.01)


def test_matrix_records_every_job_and_resume_reruns_only_what_is_missing(suite: Path, hub: FakeHub) -> None:
    out = suite.parent / "results.csv"
    bench = subprocess.Popen([QWENBENCH, "bench", "--config", str(suite), "--out", str(out), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    killed: list[int] = []
    watcher = threading.Thread(target=kill_second_job, args=(bench, killed))
    watcher.start()
    _, stderr = bench.communicate(timeout=600)
    watcher.join()
    assert killed, "the second job's child was never seen"
    assert bench.returncode == 1, stderr  # failures, but the suite ran to the end
    rows = read_records(out)
    by_job: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_job.setdefault((row["model_filename"] or row["model_key"], row["mode"]), []).append(row)
    statuses = {job: {r["status"] for r in job_rows} for job, job_rows in by_job.items()}
    assert statuses[("dense.gguf", "cpu")] == {"ok"}
    assert statuses[("moe.gguf", "cpu")] == {"oom"}  # the killed one: SIGKILL reads as the OOM killer
    assert statuses[("corrupt.gguf", "cpu")] == {"failed"}
    assert "truncated GGUF" in by_job[("corrupt.gguf", "cpu")][0]["error"]
    assert statuses[("qwen3-0.6b", "cpu")] == {"failed"}
    assert "SHA-256" in by_job[("qwen3-0.6b", "cpu")][0]["error"]
    for mode in ("gpu", "gpu-experts-cpu"):  # no GPU here: skipped with the reason, not attempted
        assert statuses[("moe.gguf", mode)] == {"skipped"}
        assert "needs a GPU" in by_job[("moe.gguf", mode)][0]["error"]
    assert ("dense.gguf", "gpu-experts-cpu") not in by_job  # a dense model has no experts to place
    assert all(len(job_rows) == 3 for job_rows in by_job.values())  # pp32, tg8, ttft for every job
    assert {r["suite"] for r in rows} == {"tiny"} and all(r["job_key"] for r in rows)
    ok = by_job[("dense.gguf", "cpu")]
    assert all(r["avg_ts"] > 0 for r in ok if r["test"] != "ttft") and ok[0]["host_bytes_per_token"] > 0

    hub.corrupt.clear()
    resumed = run_cli("bench", "--config", str(suite), "--out", str(out), "--resume", "--json")
    summary = json.loads(resumed.stdout)
    status = {job["label"]: job["status"] for job in summary["jobs"]}
    assert status["dense.gguf cpu"] == "resumed" and status["moe.gguf gpu"] == "resumed"
    assert status["moe.gguf cpu"] == "ok"  # the killed job, run again
    assert status["qwen3-0.6b Q8_0 cpu"] == "ok"  # downloaded and verified this time
    assert status["corrupt.gguf cpu"] == "failed"  # still corrupt
    again = read_records(out)
    assert len(again) == len(rows) + 3 * 3  # only the three unfinished jobs wrote rows
    assert resumed.returncode == 0 or "corrupt" in resumed.stdout


def test_ctrl_c_stops_the_suite_with_the_csv_valid(suite: Path) -> None:
    out = suite.parent / "results.csv"
    # long enough (minutes) that the interrupt always lands inside the job, whatever the load
    config = suite.read_text().replace("repetitions = 2", "repetitions = 500").replace("n_gen = [8]", "n_gen = [256]")
    suite.write_text(config)
    bench = subprocess.Popen([QWENBENCH, "bench", "--config", str(suite), "--out", str(out), "--only", "dense"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}, preexec_fn=default_signals)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            "qwenbench.runner" in " ".join(c.cmdline()) for c in psutil.Process(bench.pid).children(recursive=True)):
        time.sleep(0.05)
    time.sleep(2.0)  # into the timed repetitions
    bench.send_signal(signal.SIGINT)
    _, stderr = bench.communicate(timeout=120)
    assert bench.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    rows = read_records(out)  # parses: every row whole
    assert rows and {r["status"] for r in rows} <= {"ok", "interrupted"}
    assert "interrupted" in {r["status"] for r in rows}


@pytest.mark.parametrize(("text", "message"), [
    ('[suite]\nrepetitions = 0\n[[model]]\nkey = "qwen3-4b"\n', "suite.repetitions: must be a whole number >= 1"),
    ('[suite]\nmodes = ["cpu", "npu"]\n[[model]]\nkey = "qwen3-4b"\n', "suite.modes: unknown mode 'npu'"),
    ('[suite]\nrepetition = 3\n[[model]]\nkey = "qwen3-4b"\n', "suite.repetition: unknown setting"),
    ('[[model]]\nkey = "qwen3-5b"\n', "model[0].key: unknown model"),
    ('[[model]]\nkey = "qwen3-4b"\nquant = "Q4_K_Z"\n', "model[0].quant: unknown quant 'Q4_K_Z'"),
    ('[suite]\nname = "x"\n', "no [[model]] entries"),
    ('[[model]]\ngguf = "a.gguf"\nquant = "Q4_K_M"\n', "model[0].gguf: a local file is measured as it is"),
    ("[suite\n", "not valid TOML"),
    ('[suite]\nrpc = "127.0.0.1:50052"\n[[model]]\nkey = "qwen3-4b"\n', 'suite.rpc: must be a list of "HOST:PORT"'),
    ('[suite]\nrpc = ["127.0.0.1"]\n[[model]]\nkey = "qwen3-4b"\n', "suite.rpc: not an RPC endpoint"),
    ('[suite]\nrepack = "no"\n[[model]]\nkey = "qwen3-4b"\n', "suite.repack: must be true or false"),
])
def test_config_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_bundled_suites_validate_and_expand(tmp_path: Path) -> None:
    from qwenbench.bench import expand_jobs

    root = Path(__file__).resolve().parent.parent / "configs"
    bench_all = load_config(root / "bench-all.toml")
    labels = [job.label for job in expand_jobs(bench_all)]
    assert "qwen3-30b-a3b Q3_K_L gpu-experts-cpu" in labels and "qwen3-8b Q4_K_M gpu-experts-cpu" not in labels
    assert len(labels) == 6 * 2 + 1
    quick = expand_jobs(load_config(root / "quick.toml"), synthetic=True, only=["0.6b"])
    assert [job.label for job in quick] == ["qwen3-0.6b Q4_K_M cpu [synthetic]", "qwen3-0.6b Q4_K_M gpu [synthetic]"]
    result = run_cli("bench", "--config", str(root / "quick.toml"), "--only", "nothing-like-this")
    assert result.returncode == 2 and "--dry-run lists the jobs" in result.stderr
    assert "qwen3.5-0.8b Q4_K_M cpu" in [job.label for job in expand_jobs(load_config(root / "quick.toml"))]
    pair = [job.label for job in expand_jobs(load_config(root / "dense-vs-moe.toml"))]
    assert "qwen3.6-35b-a3b Q3_K_M gpu-experts-cpu" in pair and "qwen3.6-27b Q4_K_M gpu-experts-cpu" not in pair
    assert {"qwen3.5-9b Q4_K_M cpu", "qwen3.6-27b Q4_K_M cpu", "qwen3.6-35b-a3b Q3_K_M cpu"} <= set(pair)


def test_a_suite_that_pins_repacking_keeps_it_and_is_another_job(tmp_path: Path) -> None:
    from qwenbench.bench import expand_jobs, job_key, job_settings
    from qwenbench.machine import describe_machine

    keys, pins = [], []
    for extra in ("", "repack = false\n"):
        path = tmp_path / "suite.toml"
        path.write_text(f'[suite]\nmodes = ["cpu"]\n{extra}[[model]]\nkey = "qwen3-4b"\n')
        config = load_config(path)
        [job] = expand_jobs(config)
        keys.append(job_key(config, job))
        settings, pinned = job_settings(config, job, describe_machine(), 36)
        pins.append(("repack" in pinned, settings.repack))
    assert keys[0] != keys[1]  # measured without the repacked copies: not the same job
    assert pins == [(False, True), (True, False)]  # left to the plan, or pinned off


def test_another_llama_cpp_build_is_another_job(tmp_path: Path) -> None:
    from qwenbench.bench import build_key, expand_jobs, job_key

    path = tmp_path / "suite.toml"
    path.write_text('[[model]]\nkey = "qwen3-4b"\n')
    config = load_config(path)
    job = expand_jobs(config)[0]
    # resume must not keep an old build's numbers: an upgrade or a rebuild with a GPU backend measures anew
    keys = {job_key(config, job, build) for build in ("llama-cpp-python 0.3.36|CPU,RPC",
                                                      "llama-cpp-python 0.3.37|CPU,RPC",
                                                      "llama-cpp-python 0.3.36|CPU,CUDA,RPC")}
    assert len(keys) == 3
    assert build_key().startswith("llama-cpp-python ") and "CPU" in build_key()


def test_the_precision_ladder_suite_parses_and_plans() -> None:
    """configs/precision.toml: Qwen2.5-3B-Instruct from F32 to Q3_K_M in both modes a dense model has, planned on
    the seeds' machine (a 6 GB RTX 3060): every job fits, F32 and F16 by leaving layers on the CPU."""
    from qwenbench.bench import expand_jobs, job_settings
    from qwenbench.catalog import get_model
    from qwenbench.fit import Calibration
    from qwenbench.machine import MachineInfo
    from qwenbench.planner import prepare_run
    from qwenbench.probe import CpuInfo, GpuInfo, Hardware, RamInfo
    from qwenbench.recipe import tensor_table

    ladder = ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M"]
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "precision.toml")
    jobs = expand_jobs(config)
    assert [job.label for job in jobs] == [f"qwen2.5-3b-instruct {q} {mode}" for q in ladder for mode in ("cpu", "gpu")]
    assert config.n_prompt == (512,) and config.n_gen == (128,) and config.ttft
    gib = 1 << 30
    gpu = GpuInfo("nvidia", "NVIDIA GeForce RTX 3060 Laptop GPU", "discrete", 6 * gib, int(5.7 * gib), None,
                  int(5.7 * gib), "nvml")
    hardware = Hardware(CpuInfo("test CPU", 8, 16, ("SSE3", "AVX", "AVX2", "FMA", "F16C")),
                        RamInfo(32 * gib, 28 * gib, 0, 0), (gpu,), ("CUDA", "CPU"), {"ram": 50.0})
    machine = MachineInfo("m", "seed", "test CPU", 8, 16, 32 * gib, (gpu.name,), hardware)
    spec = get_model("qwen2.5-3b-instruct")
    planned = {}
    for job in jobs:
        settings, pinned = job_settings(config, job, machine, spec.n_layer)
        table = tensor_table(spec, job.entry.quant)
        prepared = prepare_run(settings, job.entry.quant, table, spec.shape(), hardware, Calibration(), pinned)
        assert not prepared.problems, (job.label, prepared.problems)
        planned[(job.entry.quant, job.mode)] = prepared
    assert all(planned[(q, "cpu")].settings.n_gpu_layers == 0 for q in ladder)
    on_gpu = {q: planned[(q, "gpu")].settings.n_gpu_layers for q in ladder}
    assert 0 < on_gpu["F32"] < on_gpu["F16"] < spec.n_layer  # 13.6 and 6.8 GB do not fit in 6 GB
    assert all(on_gpu[q] > spec.n_layer for q in ladder[3:])  # Q8_0 (3.6 GB) and below: every layer and the output
    # memory follows the tensor bytes: F32's weights are twice F16's (the KV cache and buffers are the same)
    host = {q: planned[(q, "cpu")].estimate.host_required_bytes for q in ladder}
    assert 1.95 < host["F32"] / host["F16"] < 2.0 and host["F16"] == host["BF16"]
    # what must stay resident falls with every step (the peak of a Q4_K or Q3_K file on an AVX2 CPU also counts
    # llama.cpp's repacked copies of its weights, pages the kernel may drop)
    assert host["F32"] > host["F16"] > host["Q8_0"] > host["Q6_K"] > host["Q5_K_M"] > host["Q4_K_M"] > host["Q3_K_M"]
