"""Peak memory of a child, measured from outside: the kernel's high-water mark and NVML's per-process VRAM."""

from __future__ import annotations

import sys
import tempfile
import types

import psutil
import pytest

from qwenbench.memtrack import VramSampler, run_child

ALLOCATE_300_MB = "import time; block = bytearray(300 * 1024 * 1024); time.sleep(0.3); print('done', flush=True)"


def _run(code: str, timeout_s: float | None = None):
    lines: list[str] = []
    with tempfile.TemporaryFile() as log:
        outcome = run_child([sys.executable, "-c", code], "", log, lines.append, timeout_s=timeout_s)
    return outcome, lines


def test_peak_rss_is_the_childs_high_water_mark() -> None:
    outcome, lines = _run(ALLOCATE_300_MB)
    assert outcome.returncode == 0 and lines == ["done\n"]
    assert 300 << 20 <= outcome.peak_rss_bytes < 600 << 20
    assert outcome.peak_vram_bytes is None or outcome.peak_vram_bytes >= 0


def test_timeout_kills_the_child() -> None:
    outcome, _ = _run("import time; time.sleep(60)", timeout_s=0.5)
    assert outcome.timed_out and outcome.returncode < 0 and outcome.wall_s < 30


def test_crash_is_reported_by_signal() -> None:
    outcome, _ = _run("import os, signal; os.kill(os.getpid(), signal.SIGABRT)")
    assert outcome.returncode == -6 and not outcome.timed_out


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in for nvidia-ml-py at the import boundary: one GPU on which every child of ours uses 1.5 GiB."""
    module = types.ModuleType("pynvml")
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: 1
    module.nvmlDeviceGetHandleByIndex = lambda index: f"gpu{index}"
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: [
        types.SimpleNamespace(pid=child.pid, usedGpuMemory=3 << 29) for child in psutil.Process().children()]
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def test_vram_is_sampled_through_nvml(fake_nvml: types.ModuleType) -> None:
    outcome, _ = _run("import time; time.sleep(0.5)")
    assert outcome.peak_vram_bytes == 3 << 29


def test_missing_nvml_means_no_vram_figure(no_nvml: None) -> None:
    sampler = VramSampler()
    assert not sampler.available and sampler.used_by(1) is None
