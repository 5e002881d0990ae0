"""Shared fixtures: tiny synthetic models (dense and MoE) written by qwenbench's own writer."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from qwenbench.catalog import ModelSpec, get_model
from qwenbench.modelfile import ensure_synthetic

QWENBENCH = shutil.which("qwenbench", path=str(Path(sys.executable).parent)) or "qwenbench"

# A few MB each: the vocabulary keeps Qwen's 151,936 rows, everything else is shrunk.
TINY_DENSE = {"n_layer": 2, "n_embd": 64, "n_ff": 128, "n_head": 2, "n_head_kv": 1, "head_dim": 32}
TINY_MOE = {**TINY_DENSE, "n_expert": 8, "n_expert_used": 2, "n_ff_exp": 64}
# hybrids: 4 layers (3 linear attention, 1 full); the linear attention's state big enough that llama.cpp's
# two-decimal MiB print tells a wrong size from a right one. The vocabulary keeps Qwen3.5's 248,320 rows.
TINY_HYBRID = {**TINY_DENSE, "n_layer": 4, "rope_dims": 16, "rope_sections": (3, 3, 2, 0), "ssm_state_size": 64,
               "ssm_group_count": 2, "ssm_time_step_rank": 8}
TINY_HYBRID_MOE = {**TINY_HYBRID, "n_expert": 8, "n_expert_used": 2, "n_ff_exp": 64, "n_ff_shexp": 64}
# key -> tiny shape of each hybrid architecture (qwen3next has no multimodal RoPE sections)
TINY_HYBRIDS = {"qwen3.5-0.8b": TINY_HYBRID, "qwen3.5-35b-a3b": TINY_HYBRID_MOE,
                "qwen3-next-80b-a3b-instruct": {**TINY_HYBRID_MOE, "rope_sections": ()}}


def tiny_spec(key: str, shape: dict[str, int]) -> ModelSpec:
    return get_model(key).with_overrides(**shape)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache (synthetic models, hashes), and never the real Hub or ModelScope: tests that
    talk to a Hub start the fake one and lift offline mode. No command calibrates unasked (a minute and a gigabyte of
    probes per session): the tests of calibration ask for theirs."""
    monkeypatch.setenv("QWENBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QWENBENCH_CALIBRATE", "0")
    # nor the real ModelScope (the Hub's fallback) or the user's ModelScope cache: nothing listens on port 9
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "http://127.0.0.1:9")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "modelscope"))


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pynvml whose init fails as it does on a machine without the NVIDIA driver."""
    broken = types.ModuleType("pynvml")

    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    broken.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", broken)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_dense(model_dir: Path) -> Path:
    path, _ = ensure_synthetic(tiny_spec("qwen3-0.6b", TINY_DENSE), "Q4_K_M", model_dir / "tiny-dense.gguf")
    return path


@pytest.fixture(scope="session")
def tiny_moe(model_dir: Path) -> Path:
    path, _ = ensure_synthetic(tiny_spec("qwen3-30b-a3b", TINY_MOE), "Q4_K_M", model_dir / "tiny-moe.gguf")
    return path


def default_signals() -> None:
    """In a child the test will interrupt: the default SIGINT, SIGTERM and SIGHUP handlers, whatever the shell
    that started the tests passed down (a background job or a CI runner starts it with SIGINT ignored)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None,
            input: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it (`env` adds to or replaces variables)."""
    environment = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    if isinstance(input, bytes):  # bytes a terminal could send that are not UTF-8
        raw = subprocess.run([QWENBENCH, *args], capture_output=True, cwd=cwd, timeout=timeout, env=environment,
                             input=input)
        return subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(errors="replace"),
                                           raw.stderr.decode(errors="replace"))
    return subprocess.run([QWENBENCH, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=environment, input=input)
