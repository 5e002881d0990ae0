"""One benchmark run: start the llama.cpp child, follow its events, measure memory, build the rows.

Every requested test ends as exactly one Record: measured (ok), or with the status and error of
whatever stopped it (failed, crashed, oom, timeout, interrupted, skipped), so nothing that
finished is lost when something later fails.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .calibration import record_efficiency, record_memory, record_speed_observations
from .errors import QwenbenchError
from .fit import MIB, MemoryEstimate, RunConfig, bytes_read_per_token
from .lifetime import stop_reason
from .llamalog import LlamaBuffers, parse_buffers, workers_without_weights
from .machine import MachineInfo
from .memtrack import ChildOutcome, run_child
from .metrics import summarize
from .modelfile import ModelFile, ModelIdentity
from .planner import offload_devices
from .probe.bandwidth import cached_bandwidth
from .results import SCHEMA_VERSION, Record
from .rpc import unanswering
from .runspec import RunSettings, TestResult, TestSpec
from .speed import SpeedObservation

EventHandler = Callable[[dict[str, Any]], None]
_LOG_TAIL_LINES = 12


@dataclass(frozen=True)
class RunLabels:
    """What the caller knows about a run beyond its settings: the bench job it belongs to, and the
    figures that turn its tg t/s into a share of the machine's memory bandwidth."""

    suite: str = ""
    mode: str = ""
    job_key: str = ""
    host_bytes_per_token: int | None = None
    gpu_bytes_per_token: int | None = None
    ram_bandwidth_gbps: float | None = None
    gpu_bandwidth_gbps: float | None = None
    predicted_speed: dict[str, float] = field(default_factory=dict)  # test name -> the speed model's t/s (ttft: ms)
    # the same from the speed calibration alone, and its key: what the run's measurements refine
    unrefined_speed: dict[str, float] = field(default_factory=dict)
    speed_key: str = ""
    # each RPC worker's link as the pre-flight check measured it: (HOST:PORT, round trip ms, upload MB/s)
    links: tuple[tuple[str, float, float], ...] = ()
    predicted_network_ms: dict[str, float] = field(default_factory=dict)  # test name -> the wire's ms (planner)


@dataclass(frozen=True)
class RunReport:
    run_id: str
    records: tuple[Record, ...]
    log_path: Path | None  # kept only when something failed
    notes: tuple[str, ...]
    interrupted: bool
    buffers: LlamaBuffers  # what llama.cpp allocated, from its log
    wall_s: float = 0.0  # the child's life, from start to exit
    llama_ns: int = 0  # of which inside llama.cpp calls (load, contexts, decodes)
    stop_signal: int = 0  # when interrupted: the signal that stopped it (SIGINT, SIGTERM, SIGHUP)

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "skipped") for r in self.records)


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


# a backtrace frame (`libggml-base.so(+0x15f3b) [0x7f..]`, `#3 0x00007f..`): addresses, not a reason
_STACK_FRAME = re.compile(r"\(\S*\+0x[0-9a-f]+\)|\[0x[0-9a-f]+\]|^#\d+\s+0x[0-9a-f]+", re.IGNORECASE)


def _log_excerpt(log_path: Path) -> str:
    """The lines of llama.cpp's log that say what went wrong."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _STACK_FRAME.search(line)]
    telling = [line for line in lines if any(word in line.lower() for word in
                                              ("error", "failed", "assert", "abort", "exception"))]
    chosen = (telling or lines)[-3:]
    return " | ".join(chosen)[:400]


def failure_of(outcome: ChildOutcome, error_event: str | None, log_path: Path) -> tuple[str, str]:
    """(status, error) for the tests a child did not finish."""
    if outcome.interrupted:
        return "interrupted", stop_reason(outcome.stop_signal or signal.SIGINT)
    if outcome.timed_out:
        return "timeout", f"the run exceeded its time limit after {outcome.wall_s:.0f} s"
    if error_event:
        excerpt = _log_excerpt(log_path)
        return "failed", error_event + (f" [llama.cpp: {excerpt}]" if excerpt else "")
    code = outcome.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return "oom", "the benchmark process was killed by the system (out of memory?)"
        return "crashed", f"llama.cpp crashed ({name}): {_log_excerpt(log_path)}"
    if code != 0:
        return "failed", f"the benchmark process exited with code {code}: {_log_excerpt(log_path)}"
    return "failed", "the benchmark process ended without running this test"


class _EventCollector:
    def __init__(self, on_event: EventHandler | None) -> None:
        self.on_event = on_event
        self.loaded: dict[str, Any] = {}
        self.results: dict[TestSpec, TestResult] = {}
        self.partial: dict[str, list[int]] = {}  # samples of a test that did not finish, by test name
        self.error: str | None = None
        self.notes: list[str] = []
        self.llama_ns = 0
        self.peak_rss_bytes = 0  # the child's own high-water mark, as it reported it on its way out
        self.by_model: list[dict[TestSpec, TestResult]] = []  # a batch's results, model by model

    def __call__(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # not ours: the protocol channel carries JSON only
        kind = event.get("event")
        if kind == "model":
            self.results = {}
            self.by_model.append(self.results)
        elif kind == "loaded":
            self.loaded = event
        elif kind == "test_done":
            result = TestResult.from_json(event["result"])
            self.results[result.test] = result
        elif kind == "error":
            self.error = event.get("message", "unknown error")
        elif kind == "note":
            self.notes.append(event.get("message", ""))
        elif kind == "sample":
            self.partial.setdefault(event["test"], []).append(int(event["ns"]))
        elif kind == "timing":
            self.llama_ns = int(event.get("llama_ns", 0))
            self.peak_rss_bytes = int(event.get("peak_rss_bytes") or 0)
        if self.on_event is not None:
            self.on_event(event)


def build_record(settings: RunSettings, model: ModelIdentity, machine: MachineInfo, loaded: dict[str, Any],
                 outcome: ChildOutcome | None, run_id: str, test: TestSpec, result: TestResult | None,
                 status: str, error: str, predicted: MemoryEstimate | None, labels: RunLabels) -> Record:
    """One row of a test: its settings, the model, the machine, and what was measured (None: nothing)."""
    summary = summarize(result.samples_ns, result.n_tokens) if result else None
    is_ttft = test.kind == "ttft"
    return Record(
        schema_version=SCHEMA_VERSION,
        run_id=run_id,
        suite=labels.suite,
        mode=labels.mode,
        job_key=labels.job_key,
        test_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status=status,
        error=error,
        test=test.name,
        n_prompt=result.n_tokens if (is_ttft and result) else test.n_prompt,
        n_gen=test.n_gen,
        n_depth=test.n_depth,
        n_ctx=result.n_ctx if result else (settings.n_ctx or test.n_ctx_needed),
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        n_cpu_moe=settings.n_cpu_moe,
        flash_attn=settings.flash_attn,
        type_k=settings.type_k,
        type_v=settings.type_v,
        load_mode=settings.load_mode,
        repetitions=settings.repetitions,
        avg_ns=summary.avg_ns if summary else None,
        stddev_ns=summary.stddev_ns if summary else None,
        avg_ts=summary.avg_ts if summary else None,
        stddev_ts=summary.stddev_ts if summary else None,
        median_ts=summary.median_ts if summary else None,
        samples_ns=summary.samples_ns if summary else (),
        samples_ts=tuple(round(ts, 4) for ts in summary.samples_ts) if summary else (),
        ttft_ms=summary.avg_ns / 1e6 if (summary and is_ttft) else None,
        load_ms=loaded.get("load_ms"),
        peak_rss_bytes=(outcome.peak_rss_bytes or None) if outcome else None,
        peak_vram_bytes=outcome.peak_vram_bytes if outcome else None,
        predicted_host_bytes=predicted.host_bytes if predicted else None,
        predicted_vram_bytes=predicted.vram_bytes if predicted else None,
        host_bytes_per_token=labels.host_bytes_per_token,
        gpu_bytes_per_token=labels.gpu_bytes_per_token,
        ram_bandwidth_gbps=labels.ram_bandwidth_gbps,
        gpu_bandwidth_gbps=labels.gpu_bandwidth_gbps,
        model_key=model.model_key,
        model_filename=model.filename,
        model_type=loaded.get("model_type", ""),
        quant=model.quant,
        model_size=model.size,
        model_n_params=model.n_params,
        model_n_params_active=model.n_params_active,
        is_moe=model.is_moe,
        weights=model.weights,
        model_sha256=model.sha256,
        model_repo=model.repo,
        model_revision=model.revision,
        machine_id=machine.machine_id,
        hostname=machine.hostname,
        cpu_model=machine.cpu_model,
        n_cpu_physical=machine.n_cpu_physical,
        ram_total_bytes=machine.ram_total_bytes,
        gpu_names=";".join(machine.gpu_names),
        backends=",".join(loaded.get("backends", [])),
        llama_cpp_commit=loaded.get("llama_cpp_commit", ""),
        llama_cpp_python_version=loaded.get("llama_cpp_python_version", ""),
        qwenbench_version=__version__,
        predicted_pp_ts=labels.predicted_speed.get(test.name) if test.kind == "pp" else None,
        predicted_tg_ts=labels.predicted_speed.get(test.name) if test.kind == "tg" else None,
        predicted_ttft_ms=labels.predicted_speed.get(test.name) if is_ttft else None,
        predicted_network_ms=labels.predicted_network_ms.get(test.name),
        repack="on" if settings.repack else "off",
    )


# a model this small is all fixed overhead and noise: it teaches the memory model nothing about real ones
MIN_LEARN_MODEL_BYTES = 256 * MIB
# repetitions that spread wider than this (coefficient of variation) were disturbed: swapping, a busy machine
MAX_LEARN_SPREAD = 0.2


def _trustworthy(model: ModelFile, records: list[Record]) -> bool:
    """Whether a run's figures may calibrate later predictions."""
    if model.header.table.n_bytes < MIN_LEARN_MODEL_BYTES:
        return False
    return all(r.stddev_ts is None or not r.avg_ts or r.stddev_ts / r.avg_ts <= MAX_LEARN_SPREAD
               for r in records if r.status == "ok" and r.test != "ttft")


def _learn(predicted: MemoryEstimate, peak_rss: int, model: ModelFile, machine: MachineInfo,
           records: list[Record]) -> None:
    """Keep what this CPU run measured beyond the exactly-known buffers, and how close decode came to
    the machine's copy bandwidth, to calibrate later predictions; runs that cannot be trusted teach nothing."""
    if not _trustworthy(model, records):
        return
    label = f"{model.model_key} {model.quant}"
    known = predicted.host_bytes - predicted.parts["host_overhead"]
    record_memory(machine.machine_id, activation_units=predicted.activation_units, residual_bytes=peak_rss - known,
                  model=label)
    ram_gbps = machine.hardware.bandwidth_gbps.get("ram") or (cached_bandwidth(machine.machine_id) or {}).get("ram")
    if not ram_gbps:
        return
    shape = model.header.shape()
    host_read, _ = bytes_read_per_token(model.header.table, shape, RunConfig(n_ctx=512))
    for record in records:
        # a long context slows decode on its own (attention over every cell): learn from short ones only
        if record.test.startswith("tg") and record.n_depth == 0 and record.n_ctx <= 4096 and record.avg_ts:
            record_efficiency(machine.machine_id, efficiency=record.avg_ts * host_read / (ram_gbps * 1e9),
                              moe=shape.is_moe, model=label)


def run_batch(batch: list[RunSettings], *, log_dir: Path, timeout_s: float | None = None,
              on_event: EventHandler | None = None) -> list[dict[TestSpec, TestResult]]:
    """Every test of several models in one child process, one model after another (calibration's probes: a
    process start per probe would cost more than measuring it). All or nothing: a failure raises, with the log."""
    for settings in batch:
        settings.validate()
    log_dir.mkdir(parents=True, exist_ok=True)
    collector = _EventCollector(on_event)
    with tempfile.NamedTemporaryFile(prefix=f"{new_run_id()}-batch-", suffix=".log", dir=log_dir,
                                     delete=False) as log:
        log_path = Path(log.name)
        outcome = run_child([sys.executable, "-m", "qwenbench.runner"],
                            json.dumps([settings.to_json() for settings in batch]), log, collector,
                            timeout_s=timeout_s)
    if outcome.interrupted:
        log_path.unlink(missing_ok=True)
        raise KeyboardInterrupt
    complete = (len(collector.by_model) == len(batch)
                and all(len(results) == len(settings.tests()) for results, settings in
                        zip(collector.by_model, batch, strict=True)))
    if not complete or outcome.returncode != 0:
        status, error = failure_of(outcome, collector.error, log_path)
        raise QwenbenchError(f"a calibration probe {status}: {error}", hint=f"llama.cpp's log: {log_path}")
    log_path.unlink(missing_ok=True)
    return collector.by_model


def _learn_speed(labels: RunLabels, model: ModelFile, records: list[Record]) -> None:
    """Keep how a CPU run's measured speeds compare with the calibration's own predictions, to refine later ones
    (speed.refine_from); runs that cannot be trusted teach nothing."""
    if not labels.speed_key or labels.gpu_bytes_per_token or not _trustworthy(model, records):
        return
    if any(record.repack == "off" for record in records):
        return  # other kernels than the repacked ones most runs use: their lesson would be another's
    observations = []
    for record in records:
        predicted = labels.unrefined_speed.get(record.test)
        if record.status != "ok" or not predicted:
            continue
        if record.test == "ttft":
            kind, ratio = "ttft", predicted / record.ttft_ms if record.ttft_ms else 0.0
        else:
            kind = ("pp" if record.n_prompt and not record.n_gen else "tg") + ("-deep" if record.n_depth else "")
            ratio = (record.avg_ts or 0.0) / predicted
        if ratio > 0:
            observations.append(SpeedObservation(kind, model.is_moe, f"{model.identity.model_key} {model.quant}",
                                                 ratio))
    record_speed_observations(labels.speed_key, observations)


def unrun_records(settings: RunSettings, model: ModelIdentity, machine: MachineInfo, status: str, error: str, *,
                  labels: RunLabels | None = None, predicted: MemoryEstimate | None = None) -> list[Record]:
    """One row per test of a run that never started (skipped, or its model could not be had), with the reason."""
    run_id = new_run_id()
    labels = labels or RunLabels()
    placement = topology_columns(settings, machine, LlamaBuffers(), predicted, labels)
    return [replace(build_record(settings, model, machine, {}, None, run_id, test, None, status, error, predicted,
                                 labels), **placement) for test in settings.tests()]


def _is_host_buffer(name: str) -> bool:
    """llama.cpp's buffers in this machine's RAM: CPU, CPU_REPACK, CPU_Mapped, CUDA_Host, ..."""
    return name.startswith("CPU") or name.endswith("_Host")


def topology_columns(settings: RunSettings, machine: MachineInfo, buffers: LlamaBuffers,
                     predicted: MemoryEstimate | None, labels: RunLabels) -> dict[str, str]:
    """A row's topology, devices and links (schema 7): where llama.cpp put buffers beyond this machine's CPU, as
    its log says, beside the offload devices the planner knew and the workers' links."""
    hosts = [address.rsplit(":", 1)[0] for address in settings.rpc_servers]
    known = {gpu.name: gpu for gpu in machine.hardware.gpus}
    order = [gpu.name for gpu in offload_devices(machine.hardware)]  # llama.cpp's order: the workers' first
    names = [name for name in dict.fromkeys([*buffers.model, *buffers.kv, *buffers.compute])
             if not _is_host_buffer(name)]
    devices = []
    for index, name in enumerate(names):
        entry: dict[str, Any] = {"name": name, "model_bytes": buffers.model.get(name, 0),
                                 "kv_bytes": buffers.kv.get(name, 0), "compute_bytes": buffers.compute.get(name, 0)}
        gpu = known.get(name)
        if gpu is not None and gpu.vendor == "rpc":
            entry |= {"endpoint": name[name.index("[") + 1:-1], "memory_total_bytes": gpu.memory_total_bytes,
                      "budget_bytes": gpu.budget_bytes}
        at = order.index(name) if name in order else index  # a local GPU's buffers say CUDA0, not its name
        if predicted is not None and at < len(predicted.device_bytes):
            entry["predicted_bytes"] = predicted.device_bytes[at]
        devices.append(entry)
    links = [{"endpoint": address, "rtt_ms": round(rtt, 3), "upload_mbps": round(mbps, 1)}
             for address, rtt, mbps in labels.links]
    return {"topology": "rpc:" + "+".join(hosts) if hosts else "",
            "devices": json.dumps(devices, separators=(",", ":")) if devices else "",
            "links": json.dumps(links, separators=(",", ":")) if links else ""}


def _rpc_devices_missing(settings: RunSettings, buffers: LlamaBuffers, loaded: bool) -> list[str]:
    """RPC workers the run was told to offload to that llama.cpp's log shows no weights on (never a silent local
    run). Only for a run that loaded and offloaded layers."""
    if not settings.rpc_servers or settings.n_gpu_layers == 0 or not loaded:
        return []
    return workers_without_weights(settings.rpc_servers, buffers)


def run_benchmark(settings: RunSettings, model: ModelFile, machine: MachineInfo, *, log_dir: Path,
                  timeout_s: float | None = None, on_event: EventHandler | None = None,
                  predicted: MemoryEstimate | None = None, labels: RunLabels | None = None) -> RunReport:
    """Run every test of `settings` on `model` in one child process and return one Record per test."""
    settings.validate()
    labels = labels or RunLabels()
    run_id = new_run_id()
    log_dir.mkdir(parents=True, exist_ok=True)
    collector = _EventCollector(on_event)
    with tempfile.NamedTemporaryFile(prefix=f"{run_id}-", suffix=".log", dir=log_dir, delete=False) as log:
        log_path = Path(log.name)
        outcome = run_child([sys.executable, "-m", "qwenbench.runner"], json.dumps(settings.to_json()), log,
                            collector, timeout_s=timeout_s)
    outcome = replace(outcome, peak_rss_bytes=max(outcome.peak_rss_bytes, collector.peak_rss_bytes))
    records = []
    failure: tuple[str, str] | None = None
    for test in settings.tests():
        result = collector.results.get(test)
        if result is not None:
            status, error = "ok", ""
        elif (test.kind == "ttft" and outcome.returncode == 0 and not outcome.interrupted
              and not outcome.timed_out):
            status, error = "skipped", "; ".join(collector.notes) or "no TTFT measurement"
        else:
            failure = failure or failure_of(outcome, collector.error, log_path)
            status, error = failure
            done = collector.partial.get(test.name)
            if done and status == "interrupted" and test.kind != "ttft":  # keep the repetitions done before Ctrl-C
                result = TestResult(test, tuple(done), settings.n_ctx or test.n_ctx_needed,
                                    test.n_prompt + test.n_gen)
                error += f" after {len(done)} of {settings.repetitions} repetitions"
        records.append(build_record(settings, model.identity, machine, collector.loaded, outcome, run_id, test,
                                    result, status, error, predicted, labels))
    buffers = parse_buffers(log_path.read_text(errors="replace"))
    placement = topology_columns(settings, machine, buffers, predicted, labels)
    records = [replace(r, **placement) for r in records]
    missing = _rpc_devices_missing(settings, buffers, failure is None)
    if missing:
        failure = ("failed", f"llama.cpp put no weights on RPC worker {', '.join(missing)}: the run was not the "
                             "planned split")
        records = [replace(r, status=failure[0], error=failure[1]) for r in records]
    elif failure is not None and settings.rpc_servers and not outcome.interrupted:
        # llama.cpp aborts when a worker goes away mid-run ("Remote RPC server crashed"): name the one gone
        gone = unanswering(settings.rpc_servers)
        if gone:
            said = f"RPC worker {', '.join(gone)} stopped answering; "
            records = [replace(r, error=said + r.error) if r.status != "ok" else r for r in records]
    # a deep test's saved fill is memory beyond the model's: such a peak would teach the memory model too much
    saved_fill = any(d > 0 for d in settings.n_depth) and not settings.refill_depth
    if (predicted is not None and failure is None and not predicted.vram_bytes and outcome.peak_rss_bytes
            and not saved_fill):
        _learn(predicted, outcome.peak_rss_bytes, model, machine, records)
    if failure is None:
        _learn_speed(labels, model, records)
    kept_log = log_path if failure else None
    if kept_log is None:
        log_path.unlink(missing_ok=True)
    return RunReport(run_id, tuple(records), kept_log, tuple(collector.notes), outcome.interrupted, buffers,
                     outcome.wall_s, collector.llama_ns, outcome.stop_signal)
