"""A quality measurement: the reference's distributions computed once (cached), then each model scored against
them, every pass in its own llama.cpp child like every other measurement; one `quality` row per model.

A pass stopped by Ctrl-C (SIGTERM, SIGHUP) keeps what finished: the reference's finished chunks stay in its cache
(the next run goes on from there), a model's finished chunks become an `interrupted` row with their numbers.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import QwenbenchError, UsageError
from .harness import RunLabels, build_record, failure_of, new_run_id
from .lifetime import stop_reason
from .machine import MachineInfo
from .memtrack import ChildOutcome, run_child
from .modelfile import ModelFile
from .paths import cache_dir
from .quality import DEFAULT_TOP_K
from .qualitycache import ReferenceCache, ReferenceKey, reference_folder
from .quants import PRESETS
from .results import Record
from .runspec import QualitySettings, RunSettings, TestResult, TestSpec

EventHandler = Callable[[dict[str, Any]], None]
_SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class Corpus:
    path: Path
    sha256: str
    n_bytes: int

    @property
    def name(self) -> str:
        return self.path.name


def read_corpus(path: Path, n_ctx: int) -> Corpus:
    """A corpus file checked before any model loads: missing, empty, binary or too short for one chunk of n_ctx
    tokens is one line that says so (a token is at least a byte, so fewer bytes can never make a chunk; a longer
    text that tokenizes to fewer is refused by the child, which has the tokenizer)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no corpus file {path}", hint="give --corpus a UTF-8 text file, or leave it out for the "
                                                        "shipped English corpus")
    data = path.read_bytes()
    if not data.strip():
        raise UsageError(f"the corpus {path} is empty", hint="give --corpus a UTF-8 text of some thousand words")
    try:
        if b"\x00" in data[:_SNIFF_BYTES]:
            raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "NUL byte")
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the corpus {path} is not UTF-8 text (binary data?)",
                         hint="give --corpus a plain UTF-8 text file") from None
    if len(data) + 1 < n_ctx:  # + 1: the BOS a vocabulary may add
        raise UsageError(f"the corpus {path} has {len(data)} bytes, too short for one chunk of {n_ctx} tokens",
                         hint="a longer text, or a smaller --ctx")
    return Corpus(path, hashlib.sha256(data).hexdigest(), len(data))  # the bytes just read: no second pass


@dataclass(frozen=True)
class QualityRequest:
    corpus: Corpus
    n_ctx: int = 512
    n_chunks: int = 0  # 0: all the corpus holds
    top_k: int = DEFAULT_TOP_K
    timeout_s: float | None = None


@dataclass(frozen=True)
class QualityReport:
    records: tuple[Record, ...]  # one per model scored (or stopped while scored)
    reference_dir: Path
    reference_chunks_computed: int  # by this run: 0 when the cache had them all
    reference_chunks_cached: int  # found in the cache before it
    interrupted: bool = False
    stop_signal: int = 0
    log_paths: tuple[Path, ...] = ()  # kept where a pass failed

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.status == "ok" for r in self.records)


def _llama_cpp_version() -> str:
    from .probe.backends import installed_version

    return installed_version() or "unknown"


def reference_key(reference: ModelFile, request: QualityRequest) -> ReferenceKey:
    return ReferenceKey(reference.sha256, request.corpus.sha256, request.n_ctx, request.top_k, _llama_cpp_version())


def quality_run_settings(settings: RunSettings, n_ctx: int) -> RunSettings:
    """The llama.cpp settings of a quality pass: a context of one chunk, decoded in batches of at most 512 tokens
    (each batch's logits are read before the next: n_batch rows of the vocabulary in memory, not a chunk's)."""
    step = min(n_ctx, 512)
    return replace(settings, n_ctx=n_ctx, n_batch=step, n_ubatch=step, n_prompt=(n_ctx,), n_gen=(0,), ttft=False)


class _Collector:
    def __init__(self, on_event: EventHandler | None) -> None:
        self.on_event = on_event
        self.loaded: dict[str, Any] = {}
        self.started: dict[str, Any] = {}
        self.chunks: list[dict[str, Any]] = []
        self.error: str | None = None
        self.corpus_error = False
        self.peak_rss_bytes = 0

    def __call__(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        kind = event.get("event")
        if kind == "loaded":
            self.loaded = event
        elif kind == "quality_started":
            self.started = event
        elif kind == "quality_chunk":
            self.chunks.append(event)
        elif kind == "error":
            self.error = event.get("message", "unknown error")
            self.corpus_error = bool(event.get("corpus"))
        elif kind == "timing":
            self.peak_rss_bytes = int(event.get("peak_rss_bytes") or 0)
        if self.on_event is not None:
            self.on_event(event)


def _run_pass(settings: QualitySettings, log_dir: Path, timeout_s: float | None, collector: _Collector,
              name: str) -> tuple[ChildOutcome, Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix=f"{new_run_id()}-quality-{name}-", suffix=".log", dir=log_dir,
                                     delete=False) as log:
        log_path = Path(log.name)
        outcome = run_child([sys.executable, "-m", "qwenbench.runner"], json.dumps(settings.to_json()), log,
                            collector, timeout_s=timeout_s)
    return replace(outcome, peak_rss_bytes=max(outcome.peak_rss_bytes, collector.peak_rss_bytes)), log_path


def measure_quality(reference: ModelFile, models: list[ModelFile], settings: RunSettings, request: QualityRequest,
                    machine: MachineInfo, *, log_dir: Path, on_event: EventHandler | None = None) -> QualityReport:
    """Score every model against `reference` over the corpus; the reference's pass only where its cache lacks
    chunks. `on_event` sees every child event, with a `pass` key: "reference" or the model's file name."""
    settings = quality_run_settings(settings, request.n_ctx)
    key = reference_key(reference, request)
    cache = ReferenceCache(reference_folder(key))
    cache.folder.mkdir(parents=True, exist_ok=True)
    cache.describe(key, {"reference": reference.path.name, "quant": reference.quant, "corpus": request.corpus.name,
                         "corpus_bytes": request.corpus.n_bytes})
    cached = cache.chunks_done()
    available = cache.manifest().get("chunks_available")
    wanted = min(request.n_chunks, available) if (request.n_chunks and available) else available
    computed = 0
    logs: list[Path] = []
    if available is None or cached < wanted:
        collector = _Collector(_tagged(on_event, "reference"))
        outcome, log_path = _run_pass(
            QualitySettings(replace(settings, model_path=str(reference.path)), "reference", str(cache.folder),
                            str(request.corpus.path), request.n_ctx, request.n_chunks, request.top_k),
            log_dir, request.timeout_s, collector, "reference")
        computed = len(collector.chunks)
        if outcome.interrupted:
            log_path.unlink(missing_ok=True)
            return QualityReport((), cache.folder, computed, cached, True, outcome.stop_signal or signal.SIGINT)
        if outcome.returncode != 0 or not collector.started:
            if collector.corpus_error:
                log_path.unlink(missing_ok=True)
                raise UsageError(f"{collector.error} ({request.corpus.path}, tokenized by {reference.path.name})",
                                 hint="a longer text, or a smaller --ctx")
            status, error = failure_of(outcome, collector.error, log_path)
            raise QwenbenchError(f"the reference pass over {reference.path.name} {status}: {error}",
                                 hint=f"llama.cpp's log: {log_path}")
        log_path.unlink(missing_ok=True)
    records = []
    for model in models:
        record, outcome, log_path = _score_model(model, reference, cache, settings, request, machine, log_dir,
                                                 on_event)
        records.append(record)
        if record.status != "ok" and log_path is not None:
            logs.append(log_path)
        if outcome.interrupted:
            return QualityReport(tuple(records), cache.folder, computed, cached, True,
                                 outcome.stop_signal or signal.SIGINT, tuple(logs))
    return QualityReport(tuple(records), cache.folder, computed, cached, False, 0, tuple(logs))


def _tagged(on_event: EventHandler | None, name: str) -> EventHandler | None:
    if on_event is None:
        return None
    return lambda event: on_event({**event, "pass": name})


def _score_model(model: ModelFile, reference: ModelFile, cache: ReferenceCache, settings: RunSettings,
                 request: QualityRequest, machine: MachineInfo, log_dir: Path,
                 on_event: EventHandler | None) -> tuple[Record, ChildOutcome, Path | None]:
    collector = _Collector(_tagged(on_event, model.path.name))
    quality = QualitySettings(replace(settings, model_path=str(model.path)), "test", str(cache.folder),
                              n_ctx=request.n_ctx, n_chunks=request.n_chunks, top_k=request.top_k)
    outcome, log_path = _run_pass(quality, log_dir, request.timeout_s, collector, model.quant or "model")
    chunks = collector.chunks
    total = int(collector.started.get("chunks") or 0)
    complete = outcome.returncode == 0 and not outcome.interrupted and total and len(chunks) == total
    status, error = ("ok", "") if complete else failure_of(outcome, collector.error, log_path)
    if not complete and chunks:
        error += f" after {len(chunks)} of {total} chunks"
    row = build_record(replace(settings, repetitions=len(chunks)), model.identity, machine, collector.loaded,
                       outcome, new_run_id(), TestSpec("quality", request.n_ctx, 0, 0),
                       TestResult(TestSpec("quality", request.n_ctx, 0, 0), tuple(int(c["ns"]) for c in chunks),
                                  request.n_ctx, request.n_ctx) if chunks else None,
                       status, error, None, RunLabels())
    row = replace(row, ref_quant=reference.quant, ref_sha256=reference.sha256, corpus=request.corpus.name,
                  corpus_sha256=request.corpus.sha256, **_quality_columns(chunks, request))
    if complete:
        log_path.unlink(missing_ok=True)
        return row, outcome, None
    if outcome.interrupted:
        log_path.unlink(missing_ok=True)
        return replace(row, error=stop_reason(outcome.stop_signal or signal.SIGINT)
                       + (f" after {len(chunks)} of {total} chunks" if chunks else "")), outcome, None
    return row, outcome, log_path


def _quality_columns(chunks: list[dict[str, Any]], request: QualityRequest) -> dict[str, Any]:
    """The row's quality figures from the chunks the child scored (none: the columns stay empty)."""
    if not chunks:
        return {}
    import numpy as np

    from .quality import PositionScores, summarize

    summary = summarize([PositionScores(np.asarray(c["kld"]), np.asarray(c["nll"]), np.asarray(c["nll_ref"]),
                                        np.asarray(c["same_top"], dtype=bool)) for c in chunks])
    extra = {"n_tokens": summary.n_tokens, "chunks": len(chunks), "top_k": request.top_k,
             "tail_mass": round(float(np.mean([c["tail_mass"] for c in chunks])), 6),
             "kld_sd": summary.kld_sd, "kld_median": summary.kld_median, "kld_max": summary.kld_max}
    return {"kld_mean": summary.kld_mean, "kld_p99": summary.kld_p99, "same_top": summary.same_top,
            "ppl": summary.ppl, "ppl_ref": summary.ppl_ref, "ppl_ratio": summary.ppl_ratio,
            "quality_metrics": json.dumps(extra, sort_keys=True, separators=(",", ":"))}


def requantized_path(source: ModelFile, quant: str) -> Path:
    """Where a copy of `source` quantized to `quant` goes: named by the source's digest, so it is made once."""
    stem = source.path.name.removesuffix(".gguf").removesuffix(".synthetic")
    return cache_dir() / "requantized" / f"{stem}-{source.sha256[:12]}-{quant.upper()}.gguf"


def requantize(source: ModelFile, quant: str, *, n_threads: int, log_dir: Path) -> Path:
    """`source` quantized to `quant` by llama.cpp's llama-quantize code (in a child), reused once made: a
    synthetic reference's lower-precision copies carry its very weights, so their KLD is a quantization's."""
    preset = PRESETS.get(quant.upper())
    if preset is None:
        raise UsageError(f"unknown quant {quant}", hint=f"one of {', '.join(PRESETS)}")
    target = requantized_path(source, quant)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    collector = _Collector(None)
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix=f"{new_run_id()}-quantize-", suffix=".log", dir=log_dir,
                                     delete=False) as log:
        log_path = Path(log.name)
        payload = {"quantize": {"source": str(source.path), "target": str(partial),
                                "file_type": int(preset.file_type), "n_threads": n_threads,
                                "quant": preset.name}}
        outcome = run_child([sys.executable, "-m", "qwenbench.runner"], json.dumps(payload), log, collector,
                            timeout_s=None)
    if outcome.interrupted:
        partial.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        raise KeyboardInterrupt
    if outcome.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        status, error = failure_of(outcome, collector.error, log_path)
        raise QwenbenchError(f"quantizing {source.path.name} to {quant.upper()} {status}: {error}",
                             hint=f"llama.cpp's log: {log_path}")
    partial.replace(target)
    log_path.unlink(missing_ok=True)
    return target
