"""What the commands share: the app, the consoles (the only place that prints), option checks, model resolution and
rendering helpers."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import UsageError
from ..runspec import CACHE_TYPES

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ..hub import Resolved
    from ..machine import MachineInfo
    from ..modelfile import ModelFile
    from ..ollama import OllamaModel
    from ..rpc import Endpoint


app = typer.Typer(
    name="qwenbench",
    help="Which Qwen model, at which quantization, runs how fast on this machine, and why.\n\n"
         "Measures llama.cpp (through llama-cpp-python) the way llama-bench does and records every "
         "result as a CSV row that compares across machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # help texts are plain: "[physical cores]", "[the plan's]" are the defaults they name, not rich markup
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
MIN_WIDTH = 40
# COLUMNS=0 (or a handful) makes rich, ours and typer's, lay everything out zero columns wide: print nothing
# at all, errors included. Such a value is dropped before any console reads it; the terminal's width stands.
if not (os.environ.get("COLUMNS", "").isdigit() and int(os.environ["COLUMNS"]) >= MIN_WIDTH):
    os.environ.pop("COLUMNS", None)
# One escaping rule: markup ([bold], [red]) only in our own literals; every value from outside (paths, names,
# labels, notes, errors, server strings) goes through escape() or is printed with markup=False.
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"qwenbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


# -- where input enters: option types and callbacks that every command shares, so a value is checked once,
# -- the same way, before any work starts

SEED_RANGE = {"min": 0, "max": 2**32 - 1}  # numpy's and llama.cpp's seeds are 32-bit
EXISTING_FOLDER = {"exists": True, "file_okay": False, "dir_okay": True}


def _quant_option(value: str | None) -> str | None:
    """Quants as llama.cpp names them, whatever the spacing or case typed: ' q4_k_m' is Q4_K_M."""
    if value is None:
        return None
    if not value.strip():
        raise typer.BadParameter("is empty; e.g. --quant Q4_K_M")
    return value.strip().upper()


_SOURCE_NAMES = {"hf": "hf", "huggingface": "hf", "hub": "hf", "modelscope": "modelscope", "ms": "modelscope"}


def _source_option(value: str | None) -> str | None:
    """Where model files come from: hf (the Hugging Face Hub) or modelscope; None: the Hub, and ModelScope when
    the Hub cannot be reached."""
    if value is None:
        return None
    source = _SOURCE_NAMES.get(value.strip().lower())
    if source is None:
        raise typer.BadParameter(f"{value!r} is not a model source; hf or modelscope")
    return source


SOURCE_OPTION = typer.Option(None, "--source", metavar="hf|modelscope", callback=_source_option,
                             help="Take the GGUF from the Hugging Face Hub or from ModelScope [the Hub, and "
                                  "ModelScope when the Hub cannot be reached and publishes the quant].")


def _kv_type(value: str | None) -> str | None:
    """A KV cache type llama.cpp knows, named for the flag it came with (click names the flag in the error)."""
    if value is None:
        return None
    if value.strip().lower() not in CACHE_TYPES:
        raise typer.BadParameter(f"{value!r} is not a KV cache type; one of {', '.join(CACHE_TYPES)}")
    return value.strip().lower()


def _finite(minimum: float, *, strict: bool) -> Callable[[float], float]:
    """A callback refusing nan, inf and numbers below `minimum` (click's FloatRange lets nan through)."""
    def check(value: float) -> float:
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise typer.BadParameter(f"must be a finite number {'>' if strict else '>='} {minimum:g}, got {value}")
        return value
    return check


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    """llama-bench style value lists: '512' or '128,512'."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(int(part))
        except ValueError:
            raise UsageError(f"{flag}: {part!r} is not a whole number",
                             hint=f"give a number or a comma-separated list, e.g. {flag.split('/')[0]} 512") from None
    return tuple(values)


def _shares(text: str | None) -> tuple[float, ...]:
    """-ts/--tensor-split '3,1': each offload device's share of the offloaded layers, as llama.cpp takes them."""
    if text is None:
        return ()
    shares = []
    for part in text.split(","):
        try:
            share = float(part.strip())
        except ValueError:
            share = math.nan
        if not math.isfinite(share) or share < 0:
            raise UsageError(f"-ts/--tensor-split: {part.strip()!r} is not a share (a number >= 0)",
                             hint="one share per offload device, e.g. -ts 3,1 for three quarters on the first")
        shares.append(share)
    if not sum(shares):
        raise UsageError("-ts/--tensor-split: every share is 0", hint="e.g. -ts 3,1")
    return tuple(shares)


def _bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------------------- models


OLLAMA_OPTION = typer.Option(None, "--ollama", metavar="NAME[:TAG]",
                             help="A model Ollama has pulled (as `ollama list` names it), used in place.")
CALIBRATE_OPTION = typer.Option(
    True, "--calibrate/--no-calibrate",
    help="Measure this machine's speed first if it never was (about a minute, once; QWENBENCH_CALIBRATE=0 "
         "turns it off for scripts and CI).")


def _speed_calibration(machine: MachineInfo, threads: int, *, refresh: bool = False, allowed: bool = True,
                       asked: bool = False) -> Any:
    """This machine's speed calibration for `threads`: the cached one, else measured now (with a one-line
    notice and progress), or None when measuring is not allowed (--no-calibrate, or QWENBENCH_CALIBRATE=0 for
    the commands that calibrate unasked)."""
    from ..calibrate import calibrate, calibration_key, load_speed_calibration

    cached, note = (None, None) if refresh else load_speed_calibration(calibration_key(machine, threads))
    if note:
        err.print(f"note: {note}", markup=False)
    if cached is not None or not allowed or (not asked and os.environ.get("QWENBENCH_CALIBRATE") == "0"):
        return cached
    err.print(f"calibrating speed on this machine with {threads} threads (once; `qwenbench calibrate --refresh` "
              "measures again)", markup=False)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True, refresh_per_second=2) as progress:
        task = progress.add_task("calibrating", total=None)
        return calibrate(machine, threads, on_progress=lambda what, done, total: progress.update(
            task, description=what, completed=done, total=total))


def _progress_bytes() -> Progress:
    """A byte-progress display; each task's description is shown as it is (a file name is not markup)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True)


def _fetch(model: str, quant: str, repo: str | None, revision: str | None, offline: bool,
           models_dirs: list[Path] | None = None, source: str | None = None) -> tuple[Path, Resolved | None]:
    """A catalog model's GGUF, verified (hub.fetch_model), saying what it does on stderr."""
    from ..catalog import get_model
    from ..hub import fetch_model

    fetched = fetch_model(get_model(model), quant, repo=repo, revision=revision, offline=offline,
                          models_dirs=models_dirs, source=source,
                          on_status=lambda message: err.print(message, highlight=False, markup=False),
                          on_progress=_HashProgress())
    return fetched.path, fetched.resolved


class _HashProgress:
    """A bar for each file's SHA-256 check (and ModelScope download), shown only while it runs (huggingface_hub
    draws its download bars)."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, name: str, done: int, total: int) -> None:
        if self._progress is None:
            self._progress = _progress_bytes()
            self._progress.start()
            self._task = self._progress.add_task(name, total=total)
        assert self._task is not None
        self._progress.update(self._task, completed=done, total=total)
        if done >= total:
            self._progress.stop()
            self._progress = None


def _ollama_model(ollama: str, gguf: Path | None, model: str | None) -> OllamaModel:
    """The GGUF behind an Ollama model name (--ollama), which stands instead of --gguf or --model."""
    from ..ollama import find_model

    if gguf is not None or model is not None:
        raise UsageError("give one of --gguf, --model or --ollama")
    return find_model(ollama)


def _resolve_model_file(gguf: Path | None, model: str | None, quant: str | None, synthetic: bool,
                        repo: str | None = None, revision: str | None = None, offline: bool = False,
                        models_dir: list[Path] | None = None, ollama: str | None = None,
                        source: str | None = None) -> ModelFile:
    from ..catalog import get_model
    from ..modelfile import ensure_synthetic, open_model_file

    if gguf is not None and model is not None:
        raise UsageError("give either --gguf or --model, not both")
    local = "an --ollama model" if ollama is not None else "a --gguf file"
    if (gguf is not None or ollama is not None) and (quant is not None or synthetic or repo or revision or offline
                                                     or source):
        raise UsageError("--quant, --synthetic, --repo, --revision, --source and --offline go with --model; "
                         f"{local} is measured as it is")
    origin: dict[str, str] = {}
    if ollama is not None:
        found = _ollama_model(ollama, gguf, model)
        path, origin = found.blob, {"filename": f"ollama:{found.reference}"}
    elif gguf is not None:
        path = gguf
    elif model is not None and not synthetic:
        path, resolved = _fetch(model, quant or "Q4_K_M", repo, revision, offline, models_dir, source)
        origin = resolved.origin if resolved else {}
    elif model is not None:
        spec = get_model(model)
        with _progress_bytes() as progress:
            task = progress.add_task(f"writing synthetic {spec.name} {(quant or 'Q4_K_M').upper()}", total=None)
            path, _ = ensure_synthetic(spec, quant or "Q4_K_M",
                                       on_progress=lambda d, t: progress.update(task, completed=d, total=t))
    else:
        raise UsageError("no model given",
                         hint="use --gguf PATH, --ollama NAME, or --model M --quant Q --synthetic")
    with _progress_bytes() as progress:
        task = progress.add_task(f"hashing {path.name}", total=None)
        return open_model_file(path, on_hash_progress=lambda d, t: progress.update(task, completed=d, total=t),
                               **origin)


def _check_shares(shares: tuple[float, ...], machine: MachineInfo) -> None:
    """A tensor split names each offload device once: more shares than devices, or one without any, is a mistake
    llama.cpp would pass over in silence."""
    from ..planner import offload_devices

    if not shares:
        return
    devices = offload_devices(machine.hardware)
    if len(shares) > len(devices):
        names = ", ".join(d.name for d in devices) or "none"
        raise UsageError(f"-ts/--tensor-split has {len(shares)} shares for {len(devices)} offload "
                         f"device{'s' * (len(devices) != 1)} ({names})",
                         hint="one share per device, in this order; --rpc adds a worker's devices")


def _with_rpc_devices(machine: MachineInfo, endpoints: tuple[Endpoint, ...]
                      ) -> tuple[MachineInfo, tuple[tuple[str, float, float], ...]]:
    """The machine as the planner sees it with RPC workers (each worker's devices are offload devices with its
    free memory, or cap), and each worker's link (HOST:PORT, round trip ms, upload MB/s). Every endpoint is
    checked first, with a plain error naming the one that fails."""
    if not endpoints:
        return machine, ()
    from dataclasses import replace

    from ..rpc import hardware_with_workers

    with err.status("checking the RPC workers"):
        hardware, probes = hardware_with_workers(machine.hardware, endpoints)
    for probe in probes:
        err.print(f"RPC worker {probe.endpoint.address}: protocol {'.'.join(map(str, probe.version))}, "
                  f"{len(probe.devices)} device(s), {_bytes(probe.free_bytes)} usable, round trip "
                  f"{probe.rtt_ms:.2f} ms, upload {probe.upload_mbps:.0f} MB/s", markup=False, highlight=False)
        if probe.endpoint.memory_cap_bytes is None and any(d.free_bytes == d.total_bytes for d in probe.devices):
            # ggml's CPU device (Linux, macOS) says all of its RAM is free, whatever else the machine runs
            err.print(f"[yellow]note:[/yellow] RPC worker {probe.endpoint.address} counts all its memory as free "
                      f"(a CPU device does): cap what goes there with {probe.endpoint.address}@SIZE if that machine "
                      "is in use", highlight=False)
    return replace(machine, hardware=hardware), tuple(probe.link for probe in probes)


def _results_destination(out_csv: Path | None, machine: MachineInfo) -> Path:
    """The results file rows will go to, checked now so that no work is thrown away at the end."""
    from ..results import check_appendable

    path = out_csv or _default_results(machine)
    check_appendable(path)
    return path


def _append(path: Path, records: list[Any]) -> Path:
    """Append rows, saying where they went when it was not `path` (it became unusable) and what was mended."""
    from ..results import append_records

    appended = append_records(path, records)
    for note in appended.notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    return appended.path


def _default_results(machine: MachineInfo) -> Path:
    """results/<host>.csv; one an older qwenbench wrote is set aside (renamed, kept) rather than refused."""
    from ..paths import default_results_path
    from ..results import set_aside_older

    path = default_results_path(machine.hostname)
    moved = set_aside_older(path)
    if moved is not None:
        err.print(f"note: {path} has an older column layout; kept as {moved}, new rows start {path} "
                  "(qwenbench report and compare read both)", markup=False)
    return path


def _server_log_path(name: str, beside: Path | None = None) -> Path:
    """A server's log (and llama-cpp-python's config file beside it): in a logs folder next to the results file
    the user named, else in qwenbench's cache, never in the current directory unasked."""
    from ..paths import logs_dir

    folder = beside.parent / "logs" if beside is not None else logs_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {folder} for the server's log: {exc.strerror or exc}",
                         hint="set QWENBENCH_CACHE_DIR to a writable folder") from None
    return folder / name
