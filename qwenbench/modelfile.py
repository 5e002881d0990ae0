"""What a GGUF on disk is: its header, catalog identity, real or synthetic weights, and its SHA-256."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .catalog import ModelSpec, load_catalog
from .errors import InvalidModelFileError, UsageError
from .gguf_info import GGUFHeader, read_header, read_model_header
from .paths import cache_dir, read_json, synthetic_model_path, write_json
from .recipe import tensor_table
from .synth import write_synthetic_gguf, write_twin_gguf
from .tensors import TensorTable

_HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class ModelIdentity:
    """What a result row says of its model: enough to compare it across machines."""

    model_key: str
    filename: str
    quant: str
    size: int  # tensor bytes
    n_params: int
    n_params_active: int
    is_moe: bool
    weights: str  # real | synthetic
    sha256: str = ""
    repo: str = ""
    revision: str = ""


def catalog_identity(spec: ModelSpec, quant: str, table: TensorTable, weights: str) -> ModelIdentity:
    """The identity of a catalog model not (yet) on disk, from its recipe: for rows of jobs that never ran."""
    return ModelIdentity(spec.key, "", quant.upper(), table.n_bytes, table.n_params,
                         table.n_params_active(spec.n_expert, spec.n_expert_used), spec.is_moe, weights)


@dataclass(frozen=True)
class ModelFile:
    path: Path
    header: GGUFHeader
    model_key: str
    quant: str
    weights: str  # real | synthetic
    sha256: str
    repo: str = ""  # Hugging Face repo (modelscope:OWNER/NAME from ModelScope) and commit it came from, if it did
    revision: str = ""
    filename: str = ""  # what rows call the file where its own name says nothing (an Ollama blob); else its name

    @property
    def is_moe(self) -> bool:
        return self.header.n_expert > 0

    @property
    def n_params_active(self) -> int:
        return self.header.table.n_params_active(self.header.n_expert, self.header.n_expert_used)

    @property
    def identity(self) -> ModelIdentity:
        return header_identity(self.header, self.filename or self.path.name, model_key=self.model_key,
                               sha256=self.sha256, repo=self.repo, revision=self.revision)


def header_identity(header: GGUFHeader, filename: str, *, model_key: str = "", sha256: str = "", repo: str = "",
                    revision: str = "") -> ModelIdentity:
    """A file's identity from its header (the catalog key guessed when not given)."""
    table = header.table
    return ModelIdentity(model_key or guess_model_key(header, filename), filename, header.quant, table.n_bytes,
                         table.n_params, table.n_params_active(header.n_expert, header.n_expert_used),
                         header.n_expert > 0, "synthetic" if header.is_synthetic else "real", sha256, repo, revision)


def guess_model_key(header: GGUFHeader, filename: str) -> str:
    """The catalog key of a file: recorded by our writer, else matched from its name."""
    stored = header.metadata.get("qwenbench.model_key")
    if stored:
        return str(stored)
    haystack = " ".join(str(header.metadata.get(k, "")) for k in ("general.name", "general.basename",
                                                                  "general.size_label")) + " " + filename
    normalized = re.sub(r"[^a-z0-9.]+", "-", haystack.lower())
    # longest key first so qwen3-30b-a3b wins over qwen3-3... and qwen2.5-3b-instruct over qwen2.5-3b
    for key in sorted(load_catalog(), key=len, reverse=True):
        stem = key.removesuffix("-instruct")
        if stem in normalized:
            return key
    return ""


def _sha_cache_key(path: Path) -> tuple[Path, str]:
    stat = path.stat()
    return cache_dir() / "sha256.json", f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def remember_sha256(path: Path, digest: str) -> None:
    """Record a digest computed while the file was written, so verifying it costs no second read."""
    path = Path(path).resolve()
    cache_file, key = _sha_cache_key(path)
    cache = {k: v for k, v in read_json(cache_file).items() if not k.startswith(f"{path}|")}
    cache[key] = digest
    write_json(cache_file, cache)


def cached_sha256(path: Path) -> str:
    """A file's SHA-256 where file_sha256 hashed it before (same path, size and mtime), else "": never reads the
    file, so a plan can name a 16 GB model's measurements without hashing it."""
    try:
        cache_file, key = _sha_cache_key(Path(path).resolve())
    except OSError:
        return ""
    return str(read_json(cache_file).get(key, ""))


def file_sha256(path: Path, on_progress: Callable[[int, int], None] | None = None) -> str:
    """SHA-256 of a file, cached by (path, size, mtime) so a 16 GB model is hashed once."""
    path = Path(path).resolve()
    size = path.stat().st_size
    cache_file, key = _sha_cache_key(path)
    cache = read_json(cache_file)
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, size)
    value = digest.hexdigest()
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")}
    cache[key] = value
    write_json(cache_file, cache)  # a cache we cannot write only costs a re-hash next time
    return value


def open_model_file(path: Path, on_hash_progress: Callable[[int, int], None] | None = None, *, repo: str = "",
                    revision: str = "", filename: str = "") -> ModelFile:
    """Validate a GGUF (rejecting non-GGUF and truncated files) and identify it; `filename` names it in rows where
    its own name says nothing."""
    header = read_model_header(Path(path))
    return ModelFile(
        path=Path(path),
        header=header,
        model_key=guess_model_key(header, filename or Path(path).name),
        quant=header.quant,
        weights="synthetic" if header.is_synthetic else "real",
        sha256=file_sha256(Path(path), on_hash_progress),
        repo=repo,
        revision=revision,
        filename=filename,
    )


def ensure_synthetic(spec: ModelSpec, quant: str, path: Path | None = None, *, seed: int = 0,
                     on_progress: Callable[[int, int], None] | None = None, mtp: bool = False) -> tuple[Path, bool]:
    """A synthetic twin of (spec, quant) at `path` (default: the cache), reused when already valid; `mtp` keeps
    the model's multi-token-prediction block, as some published files do.

    Returns (path, written): written is False when an intact file with the same tensor table was reused.
    """
    target = Path(path) if path else synthetic_model_path(spec.key + ("-mtp" if mtp else ""), quant)
    return ensure_synthetic_table(spec, quant, tensor_table(spec, quant, mtp), target, seed=seed,
                                  on_progress=on_progress)


def ensure_synthetic_table(spec: ModelSpec, quant: str, table: TensorTable, target: Path, *, seed: int = 0,
                           on_progress: Callable[[int, int], None] | None = None,
                           zero_weights: bool = False) -> tuple[Path, bool]:
    """ensure_synthetic with a tensor table of the caller's (calibration probes: one weight type throughout)."""
    if _reusable(target, table):
        return target, False
    _check_space(target, table.n_bytes, f"a synthetic {spec.name} {quant.upper()}")
    write_synthetic_gguf(spec, quant, table, target, seed=seed, on_progress=on_progress, zero_weights=zero_weights)
    return target, True


def _check_space(target: Path, tensor_bytes: int, what: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    needed = tensor_bytes + (64 << 20)
    if free < needed:
        raise UsageError(f"not enough disk space for {what}: needs {needed / 1e9:.1f} GB in {target.parent}, "
                         f"{free / 1e9:.1f} GB free",
                         hint="free some space, or set QWENBENCH_CACHE_DIR to a larger disk")


def _reusable(target: Path, table: TensorTable) -> bool:
    """An intact synthetic file with this tensor table is already there."""
    if not target.exists():
        return False
    try:
        existing = read_header(target)
    except InvalidModelFileError:
        return False  # a broken leftover: write it again
    return existing.is_synthetic and existing.table == table


def ensure_twin(header: GGUFHeader, target: Path, *, model_key: str, quant: str, twin_of: str, seed: int = 0,
                on_progress: Callable[[int, int], None] | None = None) -> tuple[Path, bool]:
    """The synthetic twin of a real file from its full header (see write_twin_gguf), reused when intact."""
    if _reusable(target, header.table):
        return target, False
    _check_space(target, header.table.n_bytes, f"a synthetic twin of {twin_of}")
    write_twin_gguf(header.metadata, header.value_types, header.table, target, model_key=model_key, quant=quant,
                    twin_of=twin_of, seed=seed, on_progress=on_progress)
    return target, True
