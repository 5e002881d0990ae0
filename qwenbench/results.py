"""The results CSV: one schema defined here, atomic appends safe with concurrent writers, versioned reads.

Every row is one line (line breaks inside values are written as spaces), so a file cut short loses at most its
last line: the next append moves that torn line to `<file>.torn` and starts on a fresh line, and readers skip a
line that is not a whole row with a note instead of refusing the file.

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
  peak_rss_bytes       peak resident memory of the benchmark process (kernel high-water mark); with -d, it
                       includes the saved copy of the filled cache (run --refill-depth for a peak without)
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
                       empty for local and synthetic files); a file from ModelScope has its repo as
                       `modelscope:OWNER/NAME` and the commit ModelScope lists for the file
  machine_id           stable anonymous id of the machine
  hostname, cpu_model, n_cpu_physical, ram_total_bytes, gpu_names  the machine
  backends             ggml backends of this llama.cpp build (CPU, CUDA, Metal, ...)
  llama_cpp_commit, llama_cpp_python_version, qwenbench_version  the software
  server, serve_metrics (schema 5+) bench-serve rows (test serve_c<concurrency>): the server measured (its URL,
                       model id and Server header) and, as JSON, the level's request counts (failed and timed
                       out included), throughputs and p50/p90/p99 of TTFT, first visible token, inter-token
                       latency, time per output token and end-to-end latency; avg_ts is the level's output
                       tokens/s, median_ts one request's decode rate (1 / median TPOT), ttft_ms the median TTFT
  predicted_pp_ts, predicted_tg_ts, predicted_ttft_ms (schema 6+) the speed model's figure for this row's test
                       (pp rows: prompt t/s; tg rows: generation t/s at the row's depth; ttft rows: ms) from this
                       machine's `qwenbench calibrate`, empty where it was not calibrated; prediction error reads
                       off any CSV as avg_ts / predicted - 1
  topology, devices, links (schema 7+) where the run's weights went beyond this machine's CPU: topology is
                       empty for a run on this machine alone, else `rpc:` and the hosts of its RPC workers
                       (rpc:127.0.0.1+10.0.0.5; ports left out: a worker's port is not the topology), which
                       `compare` and `report` keep apart; devices, as JSON, each offload device llama.cpp put
                       buffers on, with its model, KV and compute bytes as llama.cpp's log gave them and, for a
                       worker's, its endpoint, memory and budget, and the memory model's prediction for the first
                       (predicted_bytes); links, as JSON, each worker's endpoint, round trip (ms) and upload MB/s
                       as the pre-flight check measured them
  predicted_network_ms (schema 8+) what the speed model gives the network of a run split over RPC workers: ms per
                       generated token (tg rows), per prompt token (pp rows), per request (ttft rows), over the
                       links as measured; empty on one machine. `report` shows it as a share of the measured time
  repack               (schema 9+) on | off: whether llama.cpp's CPU backend used repacked copies of the weights it
                       has kernels for (its use_extra_bufts; llama-bench -nr is off). Older rows ran with it on.
                       `compare` and `report` keep a run's own -nr apart (a suite's mode stays whole: there the
                       plan chose, as it chooses -ngl)
  ref_quant, ref_sha256, corpus, corpus_sha256, kld_mean, kld_p99, same_top, ppl, ppl_ref, ppl_ratio, quality_metrics
                       (schema 10+) `quality` rows (test quality; `qwenbench quality`): the model's next-token
                       distributions against a reference file's (ref_quant, ref_sha256) over a corpus (its file name
                       and SHA-256), with llama-perplexity's definitions: chunks of n_ctx tokens, each chunk's second
                       half scored; kld_mean and kld_p99 the mean and 99th percentile of the per-token KL divergence
                       KL(ref || model) in nats, same_top the share of tokens whose most likely next token is the
                       reference's, ppl and ppl_ref the two perplexities and ppl_ratio = ppl / ppl_ref.
                       quality_metrics, as JSON: scored tokens, chunks, the reference's top_k kept per token, the mean
                       tail mass beyond them, kld_sd (the mean's uncertainty), kld_median, kld_max. repetitions is
                       the chunks measured, samples_ns each chunk's decode, avg_ts the decode's tokens/s (n_prompt =
                       n_ctx tokens a chunk). An interrupted row holds the chunks finished before the stop
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import QwenbenchError, ResultsFileError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: appends stay atomic, header checks are unlocked
    fcntl = None  # type: ignore[assignment]

# 2: predicted_host_bytes, predicted_vram_bytes; 3: model_repo, model_revision; 4: suite, mode, job_key,
# host_bytes_per_token, gpu_bytes_per_token, ram_bandwidth_gbps, gpu_bandwidth_gbps; 5: server, serve_metrics;
# 6: predicted_pp_ts, predicted_tg_ts, predicted_ttft_ms; 7: topology, devices, links; 8: predicted_network_ms;
# 9: repack; 10: ref_quant, ref_sha256, corpus, corpus_sha256, kld_mean, kld_p99, same_top, ppl, ppl_ref, ppl_ratio,
# quality_metrics
SCHEMA_VERSION = 10
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
    predicted_pp_ts: float | None = None
    predicted_tg_ts: float | None = None
    predicted_ttft_ms: float | None = None
    topology: str = ""
    devices: str = ""
    links: str = ""
    predicted_network_ms: float | None = None
    repack: str = ""
    ref_quant: str = ""
    ref_sha256: str = ""
    corpus: str = ""
    corpus_sha256: str = ""
    kld_mean: float | None = None
    kld_p99: float | None = None
    same_top: float | None = None
    ppl: float | None = None
    ppl_ref: float | None = None
    ppl_ratio: float | None = None
    quality_metrics: str = ""

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
    # one row, one line: a torn file then loses at most its last line, and readers resync on the next one
    return str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


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


_HEADER_LINE = _encode([list(COLUMNS)])
_MAX_HEADER_BYTES = 1 << 20  # a results file's first line is about 1 KB: past this it is not one


@dataclass(frozen=True)
class AppendResult:
    """Where appended rows went (the file asked for, or a rescue file beside it) and what was mended on the way."""

    path: Path
    rows: int
    notes: tuple[str, ...] = ()


def append_records(path: Path, records: list[Record]) -> AppendResult:
    """Append rows in one write under an exclusive lock: no interleaving, header once, each row one line.

    A torn last line (a crash or a full disk mid-write, by us or anyone) is moved to `<file>.torn` first, so new
    rows start on a fresh line and never merge into it. A file that can no longer take rows (it turned into a
    folder, another tool rewrote it, its disk went read-only) does not cost the rows: they go to a rescue file
    beside it, or in qwenbench's cache, and the notes say where. Raises only when nothing can be written at all."""
    path = Path(path)
    if not records:
        return AppendResult(path, 0)
    rows = [record.to_row() for record in records]
    try:
        return AppendResult(path, len(rows), _append(path, rows))
    except (ResultsFileError, OSError) as exc:
        reason = exc.message if isinstance(exc, ResultsFileError) else f"{exc.strerror or exc}"
        return _rescue(path, rows, reason)


def _append(path: Path, rows: list[list[str]]) -> tuple[str, ...]:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG
    if stat.S_ISDIR(mode):
        raise ResultsFileError(f"{path} is a folder")
    if not stat.S_ISREG(mode):  # before opening: opening a FIFO for writing waits for a reader for ever
        raise ResultsFileError(f"{path} is not a regular file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    notes: tuple[str, ...] = ()
    try:
        with _locked(fd):
            if os.fstat(fd).st_size:
                if _first_line(path).endswith(b"\n"):
                    _check_layout(path)  # before mending anything: another tool's file is not ours to touch
                notes = _mend_torn_tail(path, fd)
            if not os.fstat(fd).st_size:
                rows = [list(COLUMNS), *rows]
            data = _encode(rows)
            while data:
                written = os.write(fd, data)
                data = data[written:]
            os.fsync(fd)
    finally:
        os.close(fd)
    return notes


def _mend_torn_tail(path: Path, fd: int) -> tuple[str, ...]:
    """Move what follows the last newline (a row cut short) to `<file>.torn` and cut the file there."""
    size = os.fstat(fd).st_size
    with path.open("rb") as handle:
        position, tail = size, b""
        while position > 0 and b"\n" not in tail:
            step = min(1 << 16, position)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
    cut = tail.rfind(b"\n")
    torn = tail[cut + 1:] if cut >= 0 else tail
    if not torn:
        return ()
    if cut < 0 and not _HEADER_LINE.startswith(torn):
        raise ResultsFileError(f"{path} is not a qwenbench results file (no line ends in its {size} bytes)")
    if cut >= 0 and _is_whole_row(torn, len(COLUMNS)):  # only its line break is missing
        os.write(fd, b"\n")
        return (f"{path} ended without a line break after its last row; added one",)
    side = path.with_name(path.name + ".torn")
    with side.open("ab") as keep:
        keep.write(torn + b"\n")
        keep.flush()
        os.fsync(keep.fileno())
    os.ftruncate(fd, size - len(torn))
    return (f"{path} ended in a torn row ({len(torn)} bytes, kept in {side}); new rows start on a fresh line",)


def _is_whole_row(line: bytes, width: int) -> bool:
    """Whether a last line without its line break is a whole row (its quotes closed, all its fields there) or
    one cut short; the appender and the readers decide alike."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:  # cut inside a character
        return False
    return text.count('"') % 2 == 0 and len(next(csv.reader([text]), [])) == width


def _rescue(path: Path, rows: list[list[str]], reason: str) -> AppendResult:
    from .paths import cache_dir

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"{path.stem}.rescued-{stamp}-{os.getpid()}.csv"
    for folder in (lambda: path.parent, lambda: cache_dir() / "rescued"):
        try:
            target = folder() / name
            _append(target, rows)
        except (QwenbenchError, OSError):
            continue
        return AppendResult(target, len(rows), (f"{path} could not take the rows ({reason}); they are in {target}",))
    raise ResultsFileError(f"the rows could not be written to {path} ({reason}), nor beside it, nor in the cache",
                           hint="free some disk space or choose another file with --out")


def _first_line(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.readline(_MAX_HEADER_BYTES)


def _check_layout(path: Path) -> None:
    """Refuse a file whose header is not this schema's (another tool's CSV, another schema, not text)."""
    line = _first_line(path)
    if line == _HEADER_LINE:
        return
    try:
        header = next(csv.reader([line.decode("utf-8")]), [])
    except UnicodeDecodeError:
        raise ResultsFileError(f"{path} is not a results CSV (not UTF-8 text); not appending to it",
                               hint="choose another file with --out") from None
    if tuple(header) == COLUMNS:  # its line ends are CRLF (saved by a spreadsheet): new rows read alike
        return
    if "schema_version" not in header:
        raise ResultsFileError(f"{path} is another tool's file (no schema_version column); not appending to it",
                               hint="choose another file with --out")
    raise ResultsFileError(f"{path} has another column layout (schema {_schema_of(header, path)}, this is "
                           f"{SCHEMA_VERSION}); not appending to it",
                           hint="write to a new file with --out, or move the old one aside")


def set_aside_older(path: Path) -> Path | None:
    """Move a results file of an older schema out of the way (to `<name>.schema<N>.csv`, nothing deleted) so new
    rows start a new file; returns where it went, or None when the file is absent or current. For the default
    file only: a file the user named is refused instead (check_appendable)."""
    path = Path(path)
    if not path.is_file() or not path.stat().st_size:
        return None
    try:
        header = next(csv.reader([_first_line(path).decode("utf-8")]), [])
    except UnicodeDecodeError:
        return None  # not ours to move: check_appendable refuses it with the reason
    if tuple(header) == COLUMNS:
        return None
    version = _schema_of(header, path)
    if not version.isdigit() or int(version) >= SCHEMA_VERSION:
        return None
    target = path.with_name(f"{path.stem}.schema{version}{path.suffix}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.stem}.schema{version}-{counter}{path.suffix}")
    path.rename(target)
    return target


def check_appendable(path: Path) -> None:
    """Refuse, before hours of work rather than after, a results file rows could not be appended to: a folder,
    a device, another tool's or another schema's file, something not writable. Leaves nothing behind; a torn
    last line is no reason (append mends it)."""
    path = Path(path)
    hint = "choose another file with --out"
    if path.is_dir():
        raise ResultsFileError(f"{path} is a folder, not a results file", hint=hint)
    if path.exists():
        if not path.is_file():
            raise ResultsFileError(f"{path} is not a regular file", hint=hint)
        try:
            if path.stat().st_size and not _HEADER_LINE.startswith(_first_line(path)):
                _check_layout(path)
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        except OSError as exc:
            raise ResultsFileError(f"cannot write results to {path}: {exc.strerror or exc}", hint=hint) from None
        return
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        # really create a file: permission bits say nothing to root on a read-only mount
        fd, probe = tempfile.mkstemp(prefix=".qwenbench-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ResultsFileError(f"cannot write results to {path}: {exc.strerror or exc} ({folder})",
                               hint=hint) from None


def _schema_of(header: list[str], path: Path) -> str:
    if "schema_version" not in header:
        return "unknown"
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        first = next(reader, None)
    return (first.get("schema_version") or "unknown") if first else "unknown"


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


@dataclass(frozen=True)
class ResultsTable:
    """A results file as read: its header, the text of each whole row (one line, or an older file's row whose
    quoted field spans lines), and a note for each line skipped."""

    path: Path
    header: tuple[str, ...]
    rows: tuple[str, ...]
    notes: tuple[str, ...]

    def dicts(self) -> list[dict[str, str]]:
        return [dict(zip(self.header, fields, strict=True)) for fields in csv.reader(io.StringIO("\n".join(self.rows)))]


_MAX_ROW_LINES = 64  # an older file's quoted field spanning lines; a torn quote must not swallow the rest


def read_table(path: Path) -> ResultsTable:
    """Read a results CSV once, as a stream (so a pipe such as `<(cat f.csv)` works), and keep every whole row.

    A torn or malformed line is skipped with a note rather than costing the file, and reading resumes on the
    next line, so a quote left open by a cut row cannot swallow the rows after it. Refuses what is not a results
    file (a folder, a device, another tool's CSV, a newer schema) with one line."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: no such results file") from None
    except OSError as exc:
        raise ResultsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise ResultsFileError(f"{path} is a folder", hint="give the CSV files, e.g. results/*.csv")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise ResultsFileError(f"{path} is not a file or a pipe (a device?)", hint="give the CSV files")
    try:
        with path.open("rb") as handle:
            first = handle.readline(_MAX_HEADER_BYTES)
            if first and not first.endswith(b"\n") and len(first) >= _MAX_HEADER_BYTES:
                raise ResultsFileError(f"{path}: not a results CSV (no line break in its first MiB)")
            data = first + handle.read()
    except OSError as exc:
        raise ResultsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not first.endswith(b"\n") and _HEADER_LINE.startswith(first.rstrip(b"\r")):
        return ResultsTable(path, (), (), (f"{path}: only a torn header, no rows" if first else f"{path}: empty",))
    cut = data.rfind(b"\n") + 1 or len(data)  # no line break at all: the header of a file without rows
    try:
        text = data[:cut].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsFileError(f"{path}: not a results CSV (not UTF-8 text at byte {exc.start})") from None
    lines = text.split("\n")
    header = tuple(next(csv.reader([lines[0].rstrip("\r")]), []))
    if "schema_version" not in header:
        raise ResultsFileError(f"{path}: not a qwenbench results file (no schema_version column)",
                               hint="give the CSVs `qwenbench run` or `qwenbench bench` wrote")
    torn: list[str] = []
    if cut < len(data):  # a last line without its line break: whole but for it, or cut short (then skipped)
        if _is_whole_row(data[cut:], len(header)):
            lines[-1] = data[cut:].decode("utf-8")
        else:
            torn.append(f"{path}:{len(lines)}: torn or malformed row skipped (the last line, cut short)")
    rows, notes = _whole_rows(lines, header.index("schema_version"), len(header), path)
    return ResultsTable(path, header, tuple(rows), (*notes, *torn))


def _whole_rows(lines: list[str], version_at: int, width: int, path: Path) -> tuple[list[str], list[str]]:
    """The text of every row with `width` fields and a known schema; notes for the lines that are not one.

    One csv reader runs over the lines (C speed); at a row that is not whole it stops, skips that row's first
    line alone, and starts again on the next."""
    rows: list[str] = []
    notes: list[str] = []
    start = 1
    while start < len(lines):
        reader = csv.reader(itertools.islice(lines, start, None))
        begin = start
        try:
            for fields in reader:
                end = start + reader.line_num
                if fields and (len(fields) != width or end - begin > _MAX_ROW_LINES):
                    raise csv.Error(f"{len(fields)} fields, expected {width}")
                if fields:
                    version = fields[version_at]
                    if not version.isdigit():
                        notes.append(f"{path}:{begin + 1}: not a qwenbench results row (schema_version "
                                     f"{version!r}), skipped")
                    elif int(version) > SCHEMA_VERSION:
                        raise ResultsFileError(f"{path}: written by a newer qwenbench (schema {version}, this reads up "
                                               f"to {SCHEMA_VERSION})", hint="upgrade qwenbench to read it")
                    else:
                        rows.append(lines[begin] if end - begin == 1 else "\n".join(lines[begin:end]))
                begin = end
            break
        except csv.Error as exc:
            notes.append(f"{path}:{begin + 1}: torn or malformed row skipped ({exc})")
            start = begin + 1
    return rows, notes


def read_records_with_notes(path: Path) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """All whole rows of a results CSV, typed, and a note for each line skipped: torn, malformed, or with a value
    that is no number where one belongs. Refuses files of a newer schema."""
    table = read_table(path)
    records, notes = [], list(table.notes)
    for row in table.dicts():
        try:
            records.append(parse_row(row))
        except ValueError as exc:
            notes.append(f"{path}: row {row.get('run_id', '')!r} {row.get('test', '')!r} skipped ({exc})")
    return records, tuple(notes)


def read_records(path: Path) -> list[dict[str, Any]]:
    """All whole rows of a results CSV, typed (torn lines skipped); refuses files of a newer schema."""
    return read_records_with_notes(path)[0]
