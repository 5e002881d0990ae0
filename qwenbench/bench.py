"""Run a bench suite: expand it into jobs (model x device mode), and for each job plan, get the model, run
it in its own child process and record its rows, so that nothing a job does can stop the others.

Every job ends as rows in the CSV: measured, or with the status and reason of what stopped it (skipped
because it cannot fit or has no GPU, failed to download or verify, crashed, killed, timed out). `resume`
skips the jobs whose every test is already recorded as ok or skipped for this machine.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .calibrate import calibration_key, load_speed_calibration
from .calibration import load_calibration
from .catalog import get_model
from .config import BenchConfig, ModelEntry
from .errors import Interrupted, QwenbenchError
from .gguf_info import read_model_header
from .harness import RunLabels, run_benchmark, unrun_records
from .hub import fetch_model
from .machine import MachineInfo
from .modelfile import (
    ModelFile,
    ModelIdentity,
    catalog_identity,
    ensure_synthetic,
    header_identity,
    open_model_file,
)
from .planner import prepare_run, usable_gpu
from .recipe import tensor_table
from .results import Record, append_records, check_appendable, read_records
from .rpc import hardware_with_workers
from .runspec import RunSettings

OnEvent = Callable[[str, dict[str, Any]], None]  # (kind, data): job_started, status, note, run_event, job_finished
GPU_MODES = ("gpu", "gpu-experts-cpu")
DONE_STATUSES = ("ok", "skipped")


@dataclass(frozen=True)
class Job:
    entry: ModelEntry
    mode: str
    weights: str  # real | synthetic: what the job measures, decided before the file exists

    @property
    def label(self) -> str:
        return f"{self.entry.label} {self.mode}" + (" [synthetic]" if self.weights == "synthetic" else "")


@dataclass(frozen=True)
class JobOutcome:
    job: Job
    records: tuple[Record, ...]
    resumed: bool = False  # already recorded: not run again
    wall_s: float = 0.0
    llama_ns: int = 0

    @property
    def status(self) -> str:
        """The job's status: ok when every test is, else the first other status of its rows."""
        if self.resumed:
            return "resumed"
        return next((r.status for r in self.records if r.status != "ok"), "ok")

    @property
    def reason(self) -> str:
        return next((r.error for r in self.records if r.error), "")


@dataclass(frozen=True)
class SuiteResult:
    outcomes: tuple[JobOutcome, ...]
    wall_s: float
    csv_path: Path  # where the rows went: the file asked for, unless it became unusable and they were rescued
    notes: tuple[str, ...] = ()

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def expand_jobs(config: BenchConfig, *, synthetic: bool = False, only: list[str] | None = None) -> list[Job]:
    """Every (model, mode) of the suite in order; gpu-experts-cpu only for MoE models; `only` keeps the jobs whose
    label matches one of the patterns (globs; a bare word matches anywhere in the label)."""
    jobs = []
    for entry in config.models:
        is_moe = get_model(entry.key).is_moe if entry.gguf is None else _gguf_is_moe(entry.gguf)
        for mode in entry.modes or config.modes:
            if mode == "gpu-experts-cpu" and not is_moe:
                continue
            weights = "synthetic" if synthetic and entry.gguf is None else "real"
            jobs.append(Job(entry, mode, weights))
    if only:
        patterns = [p if any(c in p for c in "*?[") else f"*{p}*" for p in only]
        jobs = [j for j in jobs if any(fnmatch.fnmatch(j.label, p) for p in patterns)]
    return jobs


def _gguf_is_moe(path: Path) -> bool:
    try:
        return read_model_header(path).n_expert > 0
    except QwenbenchError:
        return False  # the job will fail on the file and say why


def build_key() -> str:
    """The llama.cpp build rows are measured with: llama-cpp-python's version (which pins the llama.cpp commit it
    vendors) and the backends compiled in. An upgrade or a rebuild for a GPU is another measurement."""
    from .probe.backends import installed_version, read_backends

    return f"llama-cpp-python {installed_version() or 'missing'}|{','.join(read_backends()[0])}"


def job_key(config: BenchConfig, job: Job, build: str = "") -> str:
    """A stable key for resume: what the job measures, every setting it is measured with, and the llama.cpp
    build (build_key) where given."""
    entry = job.entry
    model: dict[str, Any] = {"key": entry.key, "quant": entry.quant, "repo": entry.repo, "revision": entry.revision}
    if entry.gguf is not None:
        stat = entry.gguf.stat() if entry.gguf.exists() else None
        model = {"gguf": str(entry.gguf.resolve()), "size": stat.st_size if stat else None}
    settings = {name: getattr(config, name) for name in (
        "n_prompt", "n_gen", "n_depth", "repetitions", "ttft", "think", "n_ctx", "n_batch", "n_ubatch",
        "flash_attn", "type_k", "type_v", "threads", "load_mode")}
    if config.repack is not None:  # as above: suites that leave it to the plan keep their keys
        settings["repack"] = config.repack
    if config.rpc:  # another topology is another measurement; suites without workers keep their keys
        settings["rpc"] = [(e.address, e.memory_cap_bytes) for e in config.rpc]
    identity: dict[str, Any] = {"model": model, "mode": job.mode, "weights": job.weights, "settings": settings}
    if build:
        identity["build"] = build
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def job_settings(config: BenchConfig, job: Job, machine: MachineInfo, n_layer: int) -> tuple[RunSettings, set[str]]:
    """The suite's settings with the job's mode pinned: cpu keeps every layer in RAM, gpu-experts-cpu puts every
    layer on the GPU but the experts of all of them in RAM, gpu leaves the placement to the plan."""
    pinned: set[str] = set()
    placement: dict[str, int] = {}
    if job.mode == "cpu":
        placement = {"n_gpu_layers": 0, "n_cpu_moe": 0}
    elif job.mode == "gpu-experts-cpu":
        placement = {"n_gpu_layers": -1, "n_cpu_moe": n_layer}
    pinned |= set(placement)
    if config.type_k or config.type_v:
        pinned |= {"type_k", "type_v"}
    if config.repack is not None:
        pinned.add("repack")
    settings = RunSettings(
        model_path="", n_prompt=config.n_prompt, n_gen=config.n_gen, n_depth=config.n_depth,
        repetitions=config.repetitions, n_threads=config.threads or machine.n_cpu_physical,
        n_batch=config.n_batch, n_ubatch=config.n_ubatch, n_ctx=config.n_ctx, flash_attn=config.flash_attn,
        type_k=(config.type_k or config.type_v or "f16"), type_v=(config.type_v or config.type_k or "f16"),
        load_mode=config.load_mode, ttft=config.ttft, think=config.think,
        repack=config.repack is not False,
        # only where layers go to devices: with workers registered, llama.cpp would offload big batches' matmuls
        rpc_servers=tuple(e.address for e in config.rpc) if job.mode in GPU_MODES else (),
        **placement)
    return settings, pinned


def done_jobs(path: Path, machine_id: str) -> dict[str, set[str]]:
    """job_key -> the tests recorded as ok or skipped on this machine."""
    if not path.exists() or not path.stat().st_size:
        return {}
    done: dict[str, set[str]] = {}
    for row in read_records(path):
        if row.get("job_key") and row["machine_id"] == machine_id and row["status"] in DONE_STATUSES:
            done.setdefault(row["job_key"], set()).add(row["test"])
    return done


class _Runner:
    """One suite's run: the state its jobs share (machine, calibration, output file, callbacks)."""

    def __init__(self, config: BenchConfig, machine: MachineInfo, out_csv: Path, log_dir: Path,
                 on_event: OnEvent, offline: bool, models_dirs: list[Path] | None, source: str | None = None) -> None:
        self.config = config
        self.source = source
        self.machine = machine
        self.out_csv = out_csv
        self.log_dir = log_dir
        self.on_event = on_event
        self.offline = offline
        self.models_dirs = models_dirs
        self.calibration = load_calibration(machine.machine_id)
        threads = config.threads or machine.n_cpu_physical
        self.speed = load_speed_calibration(calibration_key(machine, threads))[0]  # rows carry its figures if any
        self.notes: list[str] = []

    def _say(self, message: str) -> None:
        self.on_event("status", {"message": message})

    def _record(self, job: Job, records: list[Record], **extra: Any) -> JobOutcome:
        appended = append_records(self.out_csv, records)
        self.out_csv = appended.path  # rescued elsewhere: the rest of the suite follows its rows there
        for note in appended.notes:
            self.notes.append(note)
            self.on_event("note", {"message": note})
        return JobOutcome(job, tuple(records), **extra)

    def _model_file(self, job: Job) -> ModelFile:
        entry = job.entry
        if entry.gguf is not None:
            return open_model_file(entry.gguf, filename=entry.filename)
        spec = get_model(entry.key)
        if job.weights == "synthetic":
            self._say(f"writing synthetic {spec.name} {entry.quant} (once, then cached)")
            path, _ = ensure_synthetic(spec, entry.quant)
            return open_model_file(path)
        fetched = fetch_model(spec, entry.quant, repo=entry.repo, revision=entry.revision, offline=self.offline,
                              models_dirs=self.models_dirs, source=self.source, on_status=self._say)
        origin = fetched.resolved.origin if fetched.resolved else {}
        return open_model_file(fetched.path, **origin)

    def _identity(self, job: Job) -> ModelIdentity:
        """A job's model for rows written before (or instead of) opening its file."""
        entry = job.entry
        if entry.gguf is not None:
            try:
                return header_identity(read_model_header(entry.gguf), entry.filename, model_key=entry.key)
            except QwenbenchError:
                return ModelIdentity(entry.key, entry.filename, "", 0, 0, 0, False, "real")
        spec = get_model(entry.key)
        return catalog_identity(spec, entry.quant, tensor_table(spec, entry.quant), job.weights)

    def failed_job(self, job: Job, key: str, reason: str) -> JobOutcome:
        """Rows for a job that failed before it measured anything."""
        settings, _ = job_settings(self.config, job, self.machine, 0)
        labels = RunLabels(suite=self.config.name, mode=job.mode, job_key=key)
        return self._record(job, unrun_records(settings, self._identity(job), self.machine, "failed", reason,
                                               labels=labels))

    def run_job(self, job: Job, key: str) -> JobOutcome:
        started = time.monotonic()
        hardware = self.machine.hardware
        labels = RunLabels(suite=self.config.name, mode=job.mode, job_key=key)
        identity = self._identity(job)
        n_layer = get_model(job.entry.key).n_layer if job.entry.gguf is None else 0
        settings, pinned = job_settings(self.config, job, self.machine, n_layer)

        def unrun(status: str, reason: str) -> JobOutcome:
            return self._record(job, unrun_records(settings, identity, self.machine, status, reason, labels=labels),
                                wall_s=time.monotonic() - started)

        if self.config.rpc and job.mode in GPU_MODES:
            # probed for every job: a worker that went away fails only its jobs, one that came back is used again
            try:
                hardware, probes = hardware_with_workers(hardware, self.config.rpc)
            except QwenbenchError as exc:
                return unrun("failed", exc.message)
            labels = replace(labels, links=tuple(probe.link for probe in probes))
        if job.mode in GPU_MODES and usable_gpu(hardware) is None:
            backends = ", ".join(hardware.backends) or "none"
            return unrun("skipped", f"{job.mode} mode needs a GPU that this llama.cpp build can use "
                                    f"(GPUs: {len(hardware.gpus)}, backends: {backends})")
        if job.entry.gguf is None:  # the recipe is exact for catalog presets: refuse before downloading
            spec = get_model(job.entry.key)
            early = prepare_run(settings, job.entry.quant, tensor_table(spec, job.entry.quant), spec.shape(),
                                hardware, self.calibration, pinned)
            if early.problems:
                return unrun("skipped", "does not fit: " + "; ".join(early.problems))
        try:
            model_file = self._model_file(job)
        except Interrupted:
            raise KeyboardInterrupt from None  # Ctrl-C during a download stops the suite, as anywhere else
        except QwenbenchError as exc:
            return unrun("failed", exc.message + (f" ({exc.hint})" if exc.hint else ""))
        header = model_file.header
        if job.mode == "gpu-experts-cpu":
            settings = replace(settings, n_cpu_moe=header.shape().n_layer)
        prepared = prepare_run(replace(settings, model_path=str(model_file.path)), header.quant, header.table,
                               header.shape(), hardware, self.calibration, pinned, speed=self.speed)
        identity = model_file.identity
        if prepared.problems:
            return unrun("skipped", "does not fit: " + "; ".join(prepared.problems))
        labels = replace(labels, host_bytes_per_token=prepared.host_bytes_per_token,
                         gpu_bytes_per_token=prepared.gpu_bytes_per_token, ram_bandwidth_gbps=prepared.ram_gbps,
                         gpu_bandwidth_gbps=prepared.gpu_gbps, predicted_speed=prepared.predicted_speed,
                         unrefined_speed=prepared.unrefined_speed, predicted_network_ms=prepared.predicted_network_ms,
                         speed_key=self.speed.key if self.speed is not None else "")
        report = run_benchmark(prepared.settings, model_file, replace(self.machine, hardware=hardware),
                               log_dir=self.log_dir,
                               timeout_s=self.config.timeout_s, predicted=prepared.estimate, labels=labels,
                               on_event=lambda event: self.on_event("run_event", {"event": event}))
        outcome = self._record(job, list(report.records), wall_s=time.monotonic() - started, llama_ns=report.llama_ns)
        if report.interrupted:
            raise _Stopped(outcome)
        return outcome


class _Stopped(Exception):
    def __init__(self, outcome: JobOutcome) -> None:
        super().__init__("interrupted")
        self.outcome = outcome


def run_suite(config: BenchConfig, jobs: list[Job], machine: MachineInfo, *, out_csv: Path, resume: bool = False,
              on_event: OnEvent | None = None, offline: bool = False,
              models_dirs: list[Path] | None = None, source: str | None = None) -> SuiteResult:
    """Run the jobs in order, each in its own child process, appending each job's rows as it ends.

    Ctrl-C stops the job running (its finished repetitions are kept), records it and raises Interrupted."""
    check_appendable(out_csv)
    emit = on_event or (lambda kind, data: None)
    runner = _Runner(config, machine, out_csv, out_csv.parent / "logs", emit, offline, models_dirs, source)
    done = done_jobs(out_csv, machine.machine_id) if resume else {}
    build = build_key()
    started = time.monotonic()
    outcomes: list[JobOutcome] = []
    for number, job in enumerate(jobs, start=1):
        key = job_key(config, job, build)
        emit("job_started", {"job": job, "number": number, "total": len(jobs)})
        tests = {t.name for t in job_settings(config, job, machine, 0)[0].tests()}
        if resume and tests <= done.get(key, set()):
            outcome = JobOutcome(job, (), resumed=True)
        else:
            try:
                outcome = runner.run_job(job, key)
            except _Stopped as stop:
                outcomes.append(stop.outcome)
                emit("job_finished", {"outcome": stop.outcome})
                raise Interrupted(f"stopped at job {number} of {len(jobs)} ({job.label}); finished rows are in "
                                  f"{runner.out_csv}",
                                  hint="run the same command with --resume to do what is left") from None
            except KeyboardInterrupt:
                raise Interrupted(f"stopped at job {number} of {len(jobs)} ({job.label}) before it ran",
                                  hint="run the same command with --resume to do what is left") from None
            except QwenbenchError as exc:  # whatever one job meets, the others still run
                outcome = runner.failed_job(job, key, exc.message + (f" ({exc.hint})" if exc.hint else ""))
            except Exception as exc:  # a qwenbench bug in one job must not cost the suite either
                outcome = runner.failed_job(job, key, f"internal error, please report it: {type(exc).__name__}: "
                                                      f"{exc}")
        outcomes.append(outcome)
        emit("job_finished", {"outcome": outcome})
    return SuiteResult(tuple(outcomes), time.monotonic() - started, runner.out_csv, tuple(runner.notes))
