"""Nothing orphaned, nothing lost: SIGTERM and SIGHUP stop a run as Ctrl-C does (finished repetitions kept as
rows, the shell's exit code), and a child never outlives a parent that was killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from qwenbench.memtrack import run_child
from qwenbench.results import read_records

from .conftest import QWENBENCH, default_signals


def _long_run(gguf: Path, out: Path) -> subprocess.Popen[str]:
    # minutes of generation, so the signal always lands inside the timed repetitions
    argv = [QWENBENCH, "run", "--gguf", str(gguf), "-p", "0", "-n", "256", "-r", "2000", "--no-ttft", "-t", "1",
            "--out", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}, preexec_fn=default_signals)


def _runner_of(parent: subprocess.Popen[str], timeout_s: float = 120) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(parent.pid).children(recursive=True):
            try:
                if "qwenbench.runner" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError("the benchmark child never started")


def _gone(process: psutil.Process, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _wait_for_samples(run: subprocess.Popen[str], runner: psutil.Process) -> None:
    """Until the child has spent a few seconds of CPU: past loading, into the repetitions."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(runner.cpu_times()[:2]) < 3.0:
        assert run.poll() is None, run.communicate()
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_keeps_the_finished_repetitions_and_stops_the_child(tiny_dense: Path, tmp_path: Path,
                                                                         signum: int) -> None:
    out = tmp_path / "results.csv"
    run = _long_run(tiny_dense, out)
    runner = _runner_of(run)
    _wait_for_samples(run, runner)
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert _gone(runner), "the llama.cpp child outlived the stopped run"
    (row,) = read_records(out)
    name = signal.Signals(signum).name
    assert row["status"] == "interrupted" and row["error"].startswith(f"stopped by {name} after ")
    assert row["samples_ns"] and row["avg_ts"] > 0  # what finished before the signal is kept


def test_a_child_dies_with_a_parent_killed_outright(tiny_dense: Path, tmp_path: Path) -> None:
    run = _long_run(tiny_dense, tmp_path / "results.csv")
    runner = _runner_of(run)
    run.kill()  # SIGKILL: the parent has no chance to stop its child
    run.communicate(timeout=30)
    assert _gone(runner), "the llama.cpp child runs on as an orphan"


def test_a_guarded_program_dies_with_its_parent() -> None:
    parent_code = textwrap.dedent("""
        import subprocess, time
        from qwenbench.lifetime import guarded_argv
        child = subprocess.Popen(guarded_argv(["sleep", "120"]))
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "sleep" not in child.name():
        time.sleep(0.05)  # until the trampoline has become `sleep`
    assert child.name() == "sleep"
    parent.kill()
    parent.wait(timeout=10)
    assert _gone(child), "the guarded program outlived its parent"


def test_nohup_keeps_sighup_ignored() -> None:
    code = ("import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); from qwenbench import lifetime; "
            "lifetime.install_stop_handlers(); print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, "
            "signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert answer == ["True", "True"]


def test_the_peak_rss_is_the_childs_own_not_its_parents() -> None:
    """A parent holding a big buffer when it starts the child: the kernel's rusage would carry it into the
    child's peak across the exec; the child's own high-water mark does not."""
    held = bytearray(768 << 20)
    held[::4096] = b"x" * len(held[::4096])  # touch every page: resident, not just reserved
    with tempfile.TemporaryFile() as log:
        outcome = run_child([sys.executable, "-c", "import time; time.sleep(0.5)"], "", log, lambda line: None,
                            timeout_s=30)
    assert outcome.returncode == 0
    assert 0 < outcome.peak_rss_bytes < 200 << 20, outcome.peak_rss_bytes
    del held
