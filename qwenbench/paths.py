"""Where qwenbench keeps things: its cache (synthetic models, hashes) and the default results file."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """QWENBENCH_CACHE_DIR, else $XDG_CACHE_HOME/qwenbench, else ~/.cache/qwenbench."""
    env = os.environ.get("QWENBENCH_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "qwenbench"


def synthetic_model_path(model_key: str, quant: str) -> Path:
    return cache_dir() / "synthetic" / f"{model_key}-{quant.upper()}.synthetic.gguf"


def default_results_path(hostname: str) -> Path:
    return Path("results") / f"{hostname}.csv"
