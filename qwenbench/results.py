"""The results CSV: one schema defined here, atomic appends safe with concurrent writers, versioned reads.

Schema (one row per test; llama-bench's column names where they overlap):
  schema_version       this file's layout version (SCHEMA_VERSION)
  run_id               one id per `qwenbench run` (all tests of one model load share it)
  suite, mode, job_key (schema 4+) the bench config's name, the device mode (cpu | gpu | gpu-experts-cpu;
                       empty for `qwenbench run`) and a stable key of the job (model, quant, weights, mode,
                       settings) that `bench --resume` matches
  test_time            UTC ISO-8601 time the row was recorded
  status               ok | failed | crashed | oom | timeout | interrupted | skipped
  error                why a test did not produce numbers (empty when ok)
  test                 pp512, tg128, pp512 @ d4096, ttft
  n_prompt, n_gen, n_depth  tokens prompted / generated / pre-filled before timing (ttft: prompt tokens)
  n_ctx                context size the test's llama_context was created with
  n_batch, n_ubatch, n_threads, n_gpu_layers, n_cpu_moe, flash_attn, type_k, type_v, load_mode
                       the llama.cpp settings, as set (flash_attn: auto | on | off)
  repetitions          timed repetitions
  avg_ns, stddev_ns    mean and sample sd of one repetition's duration
  avg_ts, stddev_ts, median_ts  tokens/s over repetitions (mean of per-repetition rates, as llama-bench)
  samples_ns, samples_ts        every repetition, as JSON lists
  ttft_ms              ttft rows: mean time from chat prompt to first token (tokenize + prefill + pick)
  load_ms              model load time of the run
  peak_rss_bytes       peak resident memory of the benchmark process (kernel high-water mark)
  peak_vram_bytes      peak GPU memory of the process where NVML reports it, else empty
  predicted_host_bytes, predicted_vram_bytes  the memory model's prediction for this run (schema 2+), so
                       prediction error reads off any CSV as predicted / peak
  host_bytes_per_token, gpu_bytes_per_token  (schema 4+) bytes of weights and KV read per generated token
                       from RAM and from VRAM in this placement (MoE: the used experts only)
  ram_bandwidth_gbps, gpu_bandwidth_gbps  the machine's measured RAM copy bandwidth and its GPU's (spec
                       sheet), so tg x (host / ram + gpu / gpu) reads as a share of the physical limit
  model_key            catalog key (qwen3-30b-a3b), empty if unknown
  model_filename       file name of the GGUF
  model_type           llama.cpp's description (qwen3moe 30B.A3B Q3_K - Large)
  quant                quant preset (Q3_K_L)
  model_size           tensor bytes, as llama.cpp counts them
  model_n_params, model_n_params_active  parameters in total / touched per token (MoE: used experts only)
  is_moe               true | false
  weights              real | synthetic (random weights: speed is faithful, text is not)
  model_sha256         SHA-256 of the GGUF file
  model_repo, model_revision  the Hugging Face repo and commit the file was resolved at (schema 3+;
                       empty for local and synthetic files)
  machine_id           stable anonymous id of the machine
  hostname, cpu_model, n_cpu_physical, ram_total_bytes, gpu_names  the machine
  backends             ggml backends of this llama.cpp build (CPU, CUDA, Metal, ...)
  llama_cpp_commit, llama_cpp_python_version, qwenbench_version  the software
  server, serve_metrics (schema 5+) bench-serve rows (test serve_c<concurrency>): the server measured (its URL,
                       model id and Server header) and, as JSON, the level's request counts (failed and timed
                       out included), throughputs and p50/p90/p99 of TTFT, first visible token, inter-token
                       latency, time per output token and end-to-end latency; avg_ts is the level's output
                       tokens/s, median_ts one request's decode rate (1 / median TPOT), ttft_ms the median TTFT
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ResultsFileError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: appends stay atomic, header checks are unlocked
    fcntl = None  # type: ignore[assignment]

# 2: predicted_host_bytes, predicted_vram_bytes; 3: model_repo, model_revision; 4: suite, mode, job_key,
# host_bytes_per_token, gpu_bytes_per_token, ram_bandwidth_gbps, gpu_bandwidth_gbps; 5: server, serve_metrics
SCHEMA_VERSION = 5
STATUSES = ("ok", "failed", "crashed", "oom", "timeout", "interrupted", "skipped")


@dataclass(frozen=True)
class Record:
    """One CSV row. Field order is column order; add fields only with a SCHEMA_VERSION bump."""

    schema_version: int
    run_id: str
    suite: str
    mode: str
    job_key: str
    test_time: str
    status: str
    error: str
    test: str
    n_prompt: int
    n_gen: int
    n_depth: int
    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_gpu_layers: int
    n_cpu_moe: int
    flash_attn: str
    type_k: str
    type_v: str
    load_mode: str
    repetitions: int
    avg_ns: float | None
    stddev_ns: float | None
    avg_ts: float | None
    stddev_ts: float | None
    median_ts: float | None
    samples_ns: tuple[int, ...]
    samples_ts: tuple[float, ...]
    ttft_ms: float | None
    load_ms: float | None
    peak_rss_bytes: int | None
    peak_vram_bytes: int | None
    predicted_host_bytes: int | None
    predicted_vram_bytes: int | None
    host_bytes_per_token: int | None
    gpu_bytes_per_token: int | None
    ram_bandwidth_gbps: float | None
    gpu_bandwidth_gbps: float | None
    model_key: str
    model_filename: str
    model_type: str
    quant: str
    model_size: int
    model_n_params: int
    model_n_params_active: int
    is_moe: bool
    weights: str
    model_sha256: str
    model_repo: str
    model_revision: str
    machine_id: str
    hostname: str
    cpu_model: str
    n_cpu_physical: int
    ram_total_bytes: int
    gpu_names: str
    backends: str
    llama_cpp_commit: str
    llama_cpp_python_version: str
    qwenbench_version: str
    server: str = ""
    serve_metrics: str = ""

    def to_row(self) -> list[str]:
        return [_format(value) for value in astuple(self)]

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Record))


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else str(int(value))
    return str(value)


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _encode(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _existing_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def append_records(path: Path, records: list[Record]) -> None:
    """Append rows in one write under an exclusive lock: no torn rows, no interleaving, header once."""
    if not records:
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ResultsFileError(f"cannot write results to {path}: {exc.strerror or exc}",
                               hint="choose another file with --out") from exc
    try:
        with _locked(fd):
            rows = [record.to_row() for record in records]
            if os.fstat(fd).st_size == 0:
                rows.insert(0, list(COLUMNS))
            else:
                _check_layout(path)
            data = _encode(rows)
            while data:
                written = os.write(fd, data)
                data = data[written:]
            os.fsync(fd)
    finally:
        os.close(fd)


def _check_layout(path: Path) -> None:
    header = _existing_header(path)
    if tuple(header) != COLUMNS:
        raise ResultsFileError(f"{path} has another column layout (schema {_schema_of(header, path)}, this is "
                               f"{SCHEMA_VERSION}); not appending to it",
                               hint="write to a new file with --out, or move the old one aside")


def set_aside_older(path: Path) -> Path | None:
    """Move a results file of an older schema out of the way (to `<name>.schema<N>.csv`, nothing deleted) so new
    rows start a new file; returns where it went, or None when the file is absent or current. For the default
    file only: a file the user named is refused instead (check_appendable)."""
    path = Path(path)
    if not path.exists() or not path.stat().st_size:
        return None
    header = _existing_header(path)
    if tuple(header) == COLUMNS:
        return None
    version = _schema_of(header, path)
    if not version.isdigit() or int(version) >= SCHEMA_VERSION:
        return None  # not ours to move: check_appendable refuses it with the reason
    target = path.with_name(f"{path.stem}.schema{version}{path.suffix}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.stem}.schema{version}-{counter}{path.suffix}")
    path.rename(target)
    return target


def check_appendable(path: Path) -> None:
    """Refuse a results file that rows could not be appended to before hours of work, not after."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        _check_layout(path)


def _schema_of(header: list[str], path: Path) -> str:
    if "schema_version" not in header:
        return "unknown"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        first = next(reader, None)
    return first.get("schema_version", "unknown") if first else "unknown"


_INT = {f.name for f in fields(Record) if f.type in ("int", "int | None")}
_FLOAT = {f.name for f in fields(Record) if f.type == "float | None"}
_LISTS = {"samples_ns", "samples_ts"}
NUMERIC_COLUMNS: tuple[str, ...] = tuple(name for name in COLUMNS if name in _INT | _FLOAT)


def parse_row(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row back to typed values (missing columns of older schemas come back as None)."""
    parsed: dict[str, Any] = {}
    for name in COLUMNS:
        raw = row.get(name)
        if raw is None or raw == "":
            parsed[name] = [] if name in _LISTS else (None if name in _INT | _FLOAT else raw or "")
        elif name in _LISTS:
            parsed[name] = json.loads(raw)
        elif name in _INT:
            parsed[name] = int(raw)
        elif name in _FLOAT:
            parsed[name] = float(raw)
        elif name == "is_moe":
            parsed[name] = raw == "true"
        else:
            parsed[name] = raw
    return parsed


def read_records(path: Path) -> list[dict[str, Any]]:
    """All rows of a results CSV, typed; refuses files of a newer schema than this qwenbench knows."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError as exc:
        raise ResultsFileError(f"{path}: no such results file") from exc
    parsed = []
    for line, row in enumerate(rows, start=2):
        version = row.get("schema_version") or ""
        if not version.isdigit():
            raise ResultsFileError(f"{path}:{line}: not a qwenbench results row (schema_version {version!r})")
        if int(version) > SCHEMA_VERSION:
            raise ResultsFileError(f"{path}: written by a newer qwenbench (schema {version})",
                                   hint="upgrade qwenbench to read it")
        parsed.append(parse_row(row))
    return parsed
