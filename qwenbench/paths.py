"""Where qwenbench keeps things: its cache (synthetic models, hashes) and the default results file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UsageError


def cache_dir() -> Path:
    """QWENBENCH_CACHE_DIR, else $XDG_CACHE_HOME/qwenbench, else ~/.cache/qwenbench; a file in its place is refused."""
    env = os.environ.get("QWENBENCH_CACHE_DIR")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME")
        path = (Path(base) if base else Path.home() / ".cache") / "qwenbench"
    if path.exists() and not path.is_dir():
        raise UsageError(f"the cache folder {path} is a file",
                         hint="point QWENBENCH_CACHE_DIR at a folder (or unset it)")
    return path


def logs_dir() -> Path:
    """Where server logs and configs go when the user named no place for them."""
    return cache_dir() / "logs"


def synthetic_model_path(model_key: str, quant: str) -> Path:
    return cache_dir() / "synthetic" / f"{model_key}-{quant.upper()}.synthetic.gguf"


def twin_model_path(repo: str, filename: str) -> Path:
    """Where the synthetic twin of a Hub file goes: named after the real file, marked synthetic."""
    return cache_dir() / "synthetic" / "hub" / repo.replace("/", "--") / filename.replace(".gguf", ".synthetic.gguf")


def default_results_path(hostname: str) -> Path:
    return Path("results") / f"{hostname}.csv"


def read_json(path: Path) -> dict:
    """A cache file's JSON object, or {} when it is missing or unreadable (a cache is never required)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict) -> bool:
    """Replace a cache file atomically (write aside, then rename); False when it cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=1))
        os.replace(temporary, path)
    except OSError:
        return False
    return True
