"""The qwenbench command line: thin commands over the library, and the only place that prints.

Imports stay light here (no llama_cpp, numpy or pandas) so `qwenbench --help` starts fast; each
command imports what it needs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__, lifetime
from .errors import Interrupted, QwenbenchError, UsageError
from .runspec import CACHE_TYPES, MAX_THREADS

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from .catalog import ModelSpec
    from .fit import MemoryEstimate
    from .harness import RunLabels, RunReport
    from .hub import Resolved
    from .machine import MachineInfo
    from .modelfile import ModelFile
    from .ollama import OllamaModel
    from .rpc import Endpoint
    from .runspec import RunSettings

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


@app.command("models")
def models_command(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """List the model catalog (configs/models.toml) and the quant presets."""
    from rich.table import Table

    from .catalog import load_catalog
    from .quants import PRESETS

    catalog = load_catalog()
    if as_json:
        out.print_json(json.dumps({"models": [
            {"key": s.key, "name": s.name, "arch": s.arch, "is_moe": s.is_moe, "n_layer": s.n_layer,
             "params_total": s.params_total} for s in catalog.values()], "quants": list(PRESETS)}))
        return
    table = Table(title="qwenbench model catalog")
    for column in ("model", "arch", "layers", "hidden", "heads/kv", "experts", "params"):
        table.add_column(column, justify="right" if column not in ("model", "arch") else "left")
    for spec in catalog.values():
        experts = f"{spec.n_expert_used}/{spec.n_expert}" if spec.is_moe else "-"
        table.add_row(spec.key, spec.arch, str(spec.n_layer), str(spec.n_embd), f"{spec.n_head}/{spec.n_head_kv}",
                      experts, f"{spec.params_total / 1e9:.1f} B")
    out.print(table)
    out.print(f"quants: {', '.join(PRESETS)}")


# ------------------------------------------------------------------------------------------ probe


@app.command("probe")
def probe_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    bandwidth: bool = typer.Option(True, "--bandwidth/--no-bandwidth", help="Include the RAM bandwidth figure."),
    refresh: bool = typer.Option(False, "--refresh", help="Measure the bandwidth again instead of the cached figure."),
) -> None:
    """Show what this machine has for llama.cpp: CPU and its ISA features, RAM, GPUs and iGPUs with the
    memory they can really use, the llama.cpp backends of this installation, and RAM bandwidth."""
    from rich.table import Table

    from .machine import machine_id
    from .probe import probe_hardware
    from .probe.bandwidth import cached_bandwidth

    key = machine_id()
    if bandwidth and (refresh or not cached_bandwidth(key)):
        err.print("measuring RAM bandwidth (once per machine, then cached)...")
    hardware = probe_hardware(bandwidth=bandwidth, refresh_bandwidth=refresh, machine_key=key)
    if as_json:
        out.print_json(json.dumps(hardware.to_json()))
        return
    cpu, ram = hardware.cpu, hardware.ram
    out.print(f"[bold]CPU[/bold]   {escape(cpu.model)}: {cpu.physical_cores} cores / {cpu.logical_cores} threads; "
              f"{' '.join(cpu.features) or 'no SIMD features found'}")
    out.print(f"[bold]RAM[/bold]   {_bytes(ram.total_bytes)} total, {_bytes(ram.available_bytes)} available; "
              f"swap {_bytes(ram.swap_total_bytes)}")
    if hardware.disk_free_bytes is not None:
        out.print(f"[bold]disk[/bold]  {_bytes(hardware.disk_free_bytes)} free at {escape(str(hardware.disk_path))}")
    if hardware.gpus:
        table = Table(title="GPUs")
        for column in ("#", "vendor", "name", "kind", "dedicated", "free", "shared", "usable", "source"):
            table.add_column(column)
        for gpu in hardware.gpus:
            table.add_row(str(gpu.index), escape(gpu.vendor), escape(gpu.name), gpu.kind,
                          _bytes(gpu.memory_total_bytes), _bytes(gpu.memory_free_bytes),
                          _bytes(gpu.shared_memory_bytes), _bytes(gpu.budget_bytes), escape(gpu.source))
        out.print(table)
    else:
        out.print("[bold]GPUs[/bold]  none found: llama.cpp runs on the CPU")
    backends = escape(", ".join(hardware.backends)) or "none (llama-cpp-python missing?)"
    out.print(f"[bold]llama.cpp backends[/bold]  {backends}")
    for name, gbps in hardware.bandwidth_gbps.items():
        out.print(f"[bold]{name} bandwidth[/bold]  {gbps:.1f} GB/s (measured copy)")
    for gpu in hardware.gpus:
        for note in gpu.notes:
            out.print(f"[dim]note ({escape(gpu.name)}):[/dim] {escape(note)}")
    for note in hardware.notes:
        out.print(f"[dim]note:[/dim] {escape(note)}")


# -------------------------------------------------------------------------------------- calibrate


CALIBRATE_OPTION = typer.Option(
    True, "--calibrate/--no-calibrate",
    help="Measure this machine's speed first if it never was (about a minute, once; QWENBENCH_CALIBRATE=0 "
         "turns it off for scripts and CI).")


def _speed_calibration(machine: MachineInfo, threads: int, *, refresh: bool = False, allowed: bool = True,
                       asked: bool = False) -> Any:
    """This machine's speed calibration for `threads`: the cached one, else measured now (with a one-line
    notice and progress), or None when measuring is not allowed (--no-calibrate, or QWENBENCH_CALIBRATE=0 for
    the commands that calibrate unasked)."""
    from .calibrate import calibrate, calibration_key, load_speed_calibration

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


@app.command("calibrate")
def calibrate_command(
    threads: int | None = typer.Option(None, "-t", "--threads", min=1, max=MAX_THREADS,
                                       help="CPU threads [physical cores]."),
    refresh: bool = typer.Option(False, "--refresh", help="Measure again, replacing the cached calibration."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Measure what the speed model needs on this machine, with real llama.cpp runs of small probe models: the
    decode and prefill rate of each weight type (Q2_K ... Q8_0, IQ4_XS, IQ4_NL, MXFP4, F16, BF16, F32), the fixed
    cost of a token and of a layer, the extra cost of an MoE layer, and attention over a filled cache; also the
    RAM copy bandwidth (median and spread of several trials). About a minute on 2 cores. Cached per machine,
    llama.cpp build, backend and thread count; plan, run and bench measure it by themselves the first time."""
    from rich.table import Table

    from .calibrate import BANDWIDTH_TRIALS
    from .machine import describe_machine
    from .speed import bits_per_weight

    machine = describe_machine()
    n_threads = threads or machine.n_cpu_physical
    calibration = _speed_calibration(machine, n_threads, refresh=refresh, asked=True)
    if as_json:
        out.print_json(json.dumps(calibration.to_json()))
        return
    table = Table(title=f"speed calibration, {n_threads} threads ({calibration.measured_at}, "
                        f"{calibration.wall_s:.0f} s, rounds disagree by {calibration.spread:.0%})")
    plain = calibration.plain_rates  # the types this CPU repacks, measured without (llama.cpp's -nr) as well
    columns = ("type", "bits/weight", "decode GB/s", "prefill GB·tok/s",
               *(("no-repack decode", "no-repack prefill") if plain else ()))
    for column in columns:
        table.add_column(column, justify="left" if column == "type" else "right")
    for name, rate in calibration.rates.items():
        unpacked = plain.get(name)
        table.add_row(name, f"{bits_per_weight(name):.2f}", f"{rate.tg_bytes_per_s / 1e9:.2f}",
                      f"{rate.pp_bytes_per_s / 1e9:.1f}",
                      *((f"{unpacked.tg_bytes_per_s / 1e9:.2f}" if unpacked else "",
                         f"{unpacked.pp_bytes_per_s / 1e9:.1f}" if unpacked else "") if plain else ()))
    out.print(table)
    if calibration.ram_gbps:
        out.print(f"RAM copy bandwidth: {calibration.ram_gbps:.1f} GB/s (median of {BANDWIDTH_TRIALS} trials, spread "
                  f"{calibration.ram_spread:.0%})", markup=False)
    out.print(f"fixed: {calibration.token_s * 1e3:.2f} ms a token + {calibration.layer_s * 1e3:.3f} ms a layer "
              f"(+{calibration.moe_layer_s * 1e3:.3f} ms an MoE layer)", markup=False)
    for depth, decode_s, prefill_s in calibration.attention:
        # per cell, layer and query head of 128 dimensions: the unit a reader can multiply out for a model
        out.print(f"attention at {depth} cells: {decode_s * 128 * 1e9:.2f} ns decoding, {prefill_s * 128 * 1e9:.2f} ns "
                  "prefilling, a cell x layer x query head", markup=False)


# ------------------------------------------------------------------------------------------- plan


@app.command("plan")
def plan_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key, e.g. qwen3-30b-a3b."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Plan only this quant (and show neighbours)."),
    gguf: Path | None = typer.Option(None, "--gguf", help="Plan a local GGUF file from its header."),
    ollama: str | None = typer.Option(None, "--ollama", metavar="NAME[:TAG]",
                                      help="A model Ollama has pulled (as `ollama list` names it), used in place."),
    ctx: int = typer.Option(4096, "--ctx", "-c", help="Context size to plan for."),
    min_tg: float = typer.Option(5.0, "--min-tg", callback=_finite(0, strict=False),
                                 help="Slowest generation speed (t/s) still usable."),
    repo: str | None = typer.Option(None, "--repo", help="Read the headers from this repo, not the catalog's list."),
    revision: str | None = typer.Option(None, "--revision", help="A branch, tag or commit to pin."),
    offline: bool = typer.Option(False, "--offline", help="Plan from the catalog's recipe, without the Hub."),
    rpc: str | None = typer.Option(None, "--rpc", metavar="HOST:PORT[@SIZE],...",
                                   help="Plan with the devices of these `qwenbench worker`s as offload devices."),
    auto_calibrate: bool = CALIBRATE_OPTION,
    backend: str | None = typer.Option(None, "--backend", metavar="cuda|vulkan|metal|hip|cpu",
                                       help="Plan as if llama-cpp-python were built for this backend [the one "
                                            "installed; a GPU it cannot drive gets a second plan]."),
    export: str | None = typer.Option(None, "--export", metavar="llama-server|ollama|lmstudio",
                                      help="Write the plan for that tool instead: llama-server's command line, an "
                                           "Ollama Modelfile, LM Studio's `lms load` command."),
    export_out: Path | None = typer.Option(None, "--export-out", dir_okay=False,
                                           help="With --export: write it to this file [standard output]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Choose the quant and GPU offload (layers, MoE experts in RAM, KV type) that fit this machine and
    decode fastest, from exact tensor sizes: quality first, never below Q4-class while one fits.

    With --model, the tensor tables come from the headers of the files the Hub publishes, read with
    range requests (a few MB per file, cached), so nothing is downloaded to plan; offline, or when the
    Hub cannot be reached, from the catalog's recipe of llama-quantize's rules."""
    from rich.table import Table

    from .calibration import load_calibration
    from .catalog import get_model
    from .gguf_info import read_model_header
    from .hub import offline_mode
    from .hubheader import plan_tables
    from .machine import describe_machine
    from .planner import candidate_quants, offload_devices, plan_quants
    from .rpc import parse_endpoints

    if ctx < 1:
        raise UsageError("--ctx must be >= 1")
    from .export import TARGETS

    if export is not None and export not in TARGETS:
        raise UsageError(f"--export {export!r}: not a tool it writes for", hint=f"one of {', '.join(TARGETS)}")
    if export_out is not None and export is None:
        raise UsageError("--export-out goes with --export", hint="e.g. --export ollama --export-out Modelfile")
    label = ""
    if ollama is not None:
        found = _ollama_model(ollama, gguf, model)
        gguf, label = found.blob, f"ollama:{found.reference}"
    if (model is None) == (gguf is None):
        raise UsageError("give --model, --gguf or --ollama", hint="e.g. qwenbench plan --model qwen3-30b-a3b")
    if gguf is not None and (repo or revision or quant):
        raise UsageError("--quant, --repo and --revision go with --model; a local file is planned as it is")
    from dataclasses import replace

    from .planner import BACKEND_BUILDS, as_if_built_for, idle_gpu_build, usable_gpu
    from .probe.backends import install_command

    if backend is not None and backend not in BACKEND_BUILDS:
        raise UsageError(f"--backend {backend!r}: not a build it plans for", hint=f"one of {', '.join(BACKEND_BUILDS)}")
    machine, _ = _with_rpc_devices(describe_machine(bandwidth=True), parse_endpoints(rpc) if rpc else ())
    as_if: dict[str, Any] = {}
    if backend is not None:
        as_if = {"as_if_backend": backend, "installed_backends": list(machine.hardware.backends),
                 "install": install_command(backend)}
        machine = replace(machine, hardware=as_if_built_for(machine.hardware, backend))
    calibration = load_calibration(machine.machine_id)
    speed = _speed_calibration(machine, machine.n_cpu_physical, allowed=auto_calibrate)
    wanted = quant.upper() if quant else None
    source: dict[str, Any] = {"source": "file"}
    if gguf is not None:
        header = read_model_header(gguf)
        name, shape, tables = label or gguf.name, header.shape(), {header.quant: header.table}
    else:
        spec = get_model(model or "")
        with err.status("reading GGUF headers from the Hub") as status:
            found = plan_tables(spec, candidate_quants(wanted), pinned=wanted, repo=repo, revision=revision,
                                offline=offline_mode(offline),
                                on_quant=lambda q, i, n: status.update(f"reading the {q} header ({i}/{n})"))
        name, shape, tables = spec.key, found.shape, found.tables
        source = {"source": found.source, "notes": list(found.notes),
                  "header_bytes_fetched": sum(h.fetched_bytes for h in found.remote.values()),
                  "files": {q: {"repo": h.resolved.repo, "revision": h.resolved.revision,
                                "paths": [f.path for f in h.resolved.files], "size": h.resolved.size,
                                "header_bytes_fetched": h.fetched_bytes} for q, h in found.remote.items()}}
    plan = plan_quants(name, tables, shape, machine.hardware, ctx, calibration, min_tg,
                       wanted if gguf is None else None, speed=speed)
    if export is not None:
        _export_plan(export, export_out, plan, gguf, model, source, shape.n_layer, machine.n_cpu_physical)
        return
    # a GPU this install cannot drive: the plan its build would give, beside this install's
    other = idle_gpu_build(machine.hardware) if backend is None else None
    alternative = (plan_quants(name, tables, shape, as_if_built_for(machine.hardware, other), ctx, calibration,
                               min_tg, wanted if gguf is None else None, speed=speed) if other else None)
    if as_json:
        extra = ({"with_backend": {"backend": other, "install": install_command(other), **alternative.to_json()}}
                 if other and alternative is not None else {})
        out.print_json(json.dumps({**plan.to_json(), **source, **as_if, **extra}))
        return
    if as_if:
        out.print(f"planned as if llama-cpp-python were built for {backend} (this one is built for "
                  f"{', '.join(as_if['installed_backends']) or 'nothing usable'}); that build: {as_if['install']}",
                  markup=False, highlight=False)
    choice = plan.choice
    offloaded = "on the workers" if any(gpu.vendor == "rpc" for gpu in machine.hardware.gpus) else "VRAM"
    if choice is None:
        out.print(f"[red]{escape(name)}: nothing fits this machine at {ctx} tokens of context[/red]")
    else:
        where = ("CPU" if not choice.n_gpu_layers else f"-ngl {choice.n_gpu_layers}" + (
            f" --n-cpu-moe {choice.n_cpu_moe}" if choice.n_cpu_moe else "")) \
            + ("" if choice.use_mmap else " --no-mmap") + ("" if choice.repack else " --no-repack")
        out.print(f"[bold]{escape(name)}: {escape(choice.quant)}[/bold], {where}, KV {choice.type_k}, context {ctx}: "
                  f"host {_bytes(choice.predicted_host_required_bytes)}, {offloaded} "
                  f"{_bytes(choice.predicted_vram_bytes)}, "
                  f"about {choice.predicted_tg_ts:.1f} t/s generation")
        devices = offload_devices(machine.hardware)
        if any(gpu.vendor == "rpc" for gpu in devices) and choice.n_gpu_layers:
            per_device = ", ".join(f"{gpu.name} {_bytes(size)}" for gpu, size in
                                   zip(devices, choice.device_bytes or (choice.predicted_vram_bytes,), strict=False))
            out.print(f"  per device: {per_device}; the network about {choice.predicted_network_ms:.2f} ms of each "
                      "token (a round trip each time the work leaves a worker, and the bytes over each link)",
                      markup=False)
        if choice.predicted_pp_ts is not None:
            out.print(f"  predicted: tg {choice.predicted_tg_ts:.1f} t/s, pp512 {choice.predicted_pp_ts:.0f} t/s, "
                      f"chat TTFT {choice.predicted_ttft_ms:.0f} ms (± {choice.speed_uncertainty:.0%}; "
                      f"{choice.speed_source})", markup=False)
        else:
            out.print("  predicted from the copy bandwidth and a default efficiency (± 50%): "
                      "`qwenbench calibrate` measures this machine", markup=False)
    for reason in plan.reasons:
        out.print(f"  - {reason}", markup=False)
    if other and alternative is not None and alternative.choice is not None:
        gpu_choice = alternative.choice
        card = usable_gpu(as_if_built_for(machine.hardware, other))
        out.print(f"  with a {other} build, the {card.name if card else 'GPU'} would take "
                  f"{gpu_choice.quant}, -ngl {gpu_choice.n_gpu_layers}"
                  + (f" --n-cpu-moe {gpu_choice.n_cpu_moe}" if gpu_choice.n_cpu_moe else "")
                  + f": about {gpu_choice.predicted_tg_ts:.1f} t/s generation ({gpu_choice.speed_source}); "
                  f"that build: {install_command(other)} (`plan --backend {other}` for its whole plan)",
                  markup=False, highlight=False)
    if source["source"] == "hub":
        fetched, size = source["header_bytes_fetched"], sum(f["size"] for f in source["files"].values())
        out.print(f"[dim]tensor tables from the published files' headers ({_bytes(fetched) if fetched else 'cached'}"
                  f"{f', {fetched / size:.2%} of {_bytes(size)}' if fetched else ''}): "
                  + escape(", ".join(f"{q} {f['repo']}" for q, f in source["files"].items())) + "[/dim]")
    for note in source.get("notes", ()):
        out.print(f"[dim]note:[/dim] {escape(note)}")
    table = Table(title=f"every quant's best placement on this machine ({calibration.source} calibration)")
    networked = any(p.predicted_network_ms for p in plan.evaluated)
    for column in ("quant", "fits", "placement", "KV", "host need", "peak RSS", offloaded, "tg t/s", "pp512 t/s",
                   *(("network ms/token",) if networked else ())):
        table.add_column(column)
    for p in plan.evaluated:
        mark = " ←" if p == choice else ""
        placement = ("CPU" if not p.n_gpu_layers else f"ngl {p.n_gpu_layers}" + (
            f", cpu-moe {p.n_cpu_moe}" if p.n_cpu_moe else "")) + ("" if p.use_mmap else ", no-mmap") \
            + ("" if p.repack else ", no-repack")
        table.add_row(escape(p.quant) + mark, "yes" if p.fits else "[red]no[/red]", placement, p.type_k,
                      _bytes(p.predicted_host_required_bytes), _bytes(p.predicted_host_bytes),
                      _bytes(p.predicted_vram_bytes), f"{p.predicted_tg_ts:.1f}",
                      "-" if p.predicted_pp_ts is None else f"{p.predicted_pp_ts:.0f}",
                      *((f"{p.predicted_network_ms:.2f}",) if networked else ()))
    out.print(table)


# ------------------------------------------------------------------------------------------ synth


def _shape_overrides(layers: int | None, hidden: int | None, ff: int | None, heads: int | None,
                     kv_heads: int | None, head_dim: int | None, experts: int | None,
                     experts_used: int | None, expert_ff: int | None) -> dict[str, int]:
    given = {"n_layer": layers, "n_embd": hidden, "n_ff": ff, "n_head": heads, "n_head_kv": kv_heads,
             "head_dim": head_dim, "n_expert": experts, "n_expert_used": experts_used, "n_ff_exp": expert_ff}
    for name, value in given.items():
        if value is not None and value < 1:
            raise UsageError(f"shape override {name} must be >= 1, got {value}")
    return {k: v for k, v in given.items() if v is not None}


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


@app.command("synth")
def synth_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key, e.g. qwen3-30b-a3b."),
    from_hub: str | None = typer.Option(None, "--from-hub", metavar="MODEL",
                                        help="Catalog model key: copy the header of the GGUF the Hub publishes "
                                             "(any quant, e.g. unsloth's UD-Q4_K_XL) instead of using the recipe."),
    quant: str = typer.Option("Q4_K_M", "--quant", "-q", callback=_quant_option, help="Quant, e.g. Q3_K_L."),
    out_path: Path | None = typer.Option(None, "--out", "-o", dir_okay=False,
                                         help="Where to write the .gguf file (default: qwenbench's cache)."),
    seed: int = typer.Option(0, "--seed", **SEED_RANGE, help="Seed of the random weights."),
    repo: str | None = typer.Option(None, "--repo", help="With --from-hub: this repo, not the catalog's list."),
    revision: str | None = typer.Option(None, "--revision", help="With --from-hub: a branch, tag or commit."),
    layers: int | None = typer.Option(None, "--layers", help="Tiny-model override: number of layers."),
    hidden: int | None = typer.Option(None, "--hidden", help="Tiny-model override: embedding width."),
    ff: int | None = typer.Option(None, "--ff", help="Tiny-model override: dense FFN width."),
    heads: int | None = typer.Option(None, "--heads", help="Tiny-model override: attention heads."),
    kv_heads: int | None = typer.Option(None, "--kv-heads", help="Tiny-model override: KV heads."),
    head_dim: int | None = typer.Option(None, "--head-dim", help="Tiny-model override: head size."),
    experts: int | None = typer.Option(None, "--experts", help="Tiny-model override (MoE): experts."),
    experts_used: int | None = typer.Option(None, "--experts-used", help="Tiny-model override (MoE): used."),
    expert_ff: int | None = typer.Option(None, "--expert-ff", help="Tiny-model override (MoE): expert FFN."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Write a shape-faithful synthetic GGUF: the real file's tensors, types and sizes, random weights.

    llama.cpp runs it exactly as it runs the real file, so its speed is the real file's speed;
    the file is marked synthetic so its results are never mistaken for a real model's. With
    --from-hub the twin copies the published file's header (read with range requests, not downloaded):
    its metadata, tokenizer and every tensor's type, so even unusual mixes are measured before a download.
    """
    from .catalog import get_model
    from .gguf_info import read_header

    overrides = _shape_overrides(layers, hidden, ff, heads, kv_heads, head_dim, experts, experts_used, expert_ff)
    if (model is None) == (from_hub is None):
        raise UsageError("give --model (the catalog's recipe) or --from-hub (the published file's header)",
                         hint="e.g. qwenbench synth --from-hub qwen3-30b-a3b --quant UD-Q4_K_XL")
    if from_hub is not None and overrides:
        raise UsageError("the tiny-model overrides go with --model; a --from-hub twin has the real file's shape")
    if model is not None and (repo or revision):
        raise UsageError("--repo and --revision go with --from-hub")
    extra: dict[str, Any] = {}
    if from_hub is not None:
        spec = get_model(from_hub)
        path, written, extra = _write_twin(spec, quant, repo, revision, out_path, seed)
    else:
        from .modelfile import ensure_synthetic

        spec = get_model(model or "")
        if overrides:
            spec = spec.with_overrides(**overrides)
        with _progress_bytes() as progress:
            task = progress.add_task(f"writing {spec.name} {quant.upper()}", total=None)
            path, written = ensure_synthetic(spec, quant, out_path, seed=seed,
                                             on_progress=lambda done, total: progress.update(task, completed=done,
                                                                                             total=total))
    header = read_header(path)
    summary = {"path": str(path), "written": written, "model": spec.key, "quant": header.quant,
               "tensor_bytes": header.table.n_bytes, "file_bytes": path.stat().st_size,
               "n_params": header.table.n_params, "tensor_types": header.table.type_histogram(), **extra}
    if as_json:
        out.print_json(json.dumps(summary))
        return
    verb = "wrote" if written else "kept (already identical)"
    out.print(f"{verb} {path} ({_bytes(summary['file_bytes'])}, {summary['n_params'] / 1e6:.1f} M params, "
              f"types {summary['tensor_types']})", markup=False)
    if "twin_of" in extra:
        out.print(f"twin of {extra['twin_of']} (header: {_bytes(extra['header_bytes_fetched']) or 'cached'} "
                  f"fetched); measure it with: qwenbench run --gguf {path}", markup=False)


def _write_twin(spec: ModelSpec, quant: str, repo: str | None, revision: str | None, out_path: Path | None,
                seed: int) -> tuple[Path, bool, dict[str, Any]]:
    """The synthetic twin of the published file of (spec, quant): its header from the Hub, random weights."""
    from .hub import resolve
    from .hubheader import read_remote_header
    from .modelfile import ensure_twin
    from .paths import twin_model_path

    with err.status(escape(f"reading the {quant.upper()} header of {spec.name} from the Hub")):
        resolved = resolve(spec, quant, repo=repo, revision=revision)
        remote = read_remote_header(resolved, keep_arrays=True)
    first = resolved.files[0].path
    twin_of = f"{resolved.repo}/{first}@{resolved.revision}"
    target = out_path or twin_model_path(resolved.repo, first.rsplit("/", 1)[-1])
    with _progress_bytes() as progress:
        task = progress.add_task(f"writing the twin of {first.rsplit('/', 1)[-1]}", total=None)
        path, written = ensure_twin(remote.header, target, model_key=spec.key, quant=resolved.quant, twin_of=twin_of,
                                    seed=seed, on_progress=lambda d, t: progress.update(task, completed=d, total=t))
    return path, written, {"twin_of": twin_of, "repo": resolved.repo, "revision": resolved.revision,
                           "header_bytes_fetched": remote.fetched_bytes, "real_file_bytes": resolved.size}


# -------------------------------------------------------------------------------------------- run


def _fetch(model: str, quant: str, repo: str | None, revision: str | None, offline: bool,
           models_dirs: list[Path] | None = None) -> tuple[Path, Resolved | None]:
    """A catalog model's GGUF, verified (hub.fetch_model), saying what it does on stderr."""
    from .catalog import get_model
    from .hub import fetch_model

    fetched = fetch_model(get_model(model), quant, repo=repo, revision=revision, offline=offline,
                          models_dirs=models_dirs,
                          on_status=lambda message: err.print(message, highlight=False, markup=False),
                          on_progress=_HashProgress())
    return fetched.path, fetched.resolved


class _HashProgress:
    """A bar for each file's SHA-256 check, shown only while it runs (huggingface_hub draws the download bars)."""

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


@app.command("pull")
def pull_command(
    model: str = typer.Option(..., "--model", "-m", help="Catalog model key, e.g. qwen3-30b-a3b."),
    quant: str = typer.Option("Q4_K_M", "--quant", "-q", callback=_quant_option, help="Quant to fetch, e.g. Q3_K_L."),
    repo: str | None = typer.Option(None, "--repo", help="Take it from this repo instead of the catalog's list."),
    revision: str | None = typer.Option(None, "--revision", help="A branch, tag or commit to pin."),
    offline: bool = typer.Option(False, "--offline", help="Use only the HF cache (also HF_HUB_OFFLINE=1)."),
    models_dir: list[Path] = typer.Option([], "--models-dir", **EXISTING_FOLDER,
                                          help="Also look for the GGUF in this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Download a model's GGUF into the Hugging Face cache: found by listing the repos, resumable, and
    checked against the Hub's SHA-256 (a file that does not match is fetched again, then refused).
    A verified copy in LM Studio's folders or --models-dir is used instead of downloading."""
    path, resolved = _fetch(model, quant, repo, revision, offline, models_dir)
    if as_json:
        out.print_json(json.dumps({"repo": resolved.repo if resolved else None,
                                   "revision": resolved.revision if resolved else None, "quant": quant.upper(),
                                   "files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                                             for f in resolved.files] if resolved else [],
                                   "local_path": str(path)}))
        return
    out.print(f"{quant.upper()} of {model} ready{' and verified' if resolved else ''}: {path}", markup=False)


def _ollama_model(ollama: str, gguf: Path | None, model: str | None) -> OllamaModel:
    """The GGUF behind an Ollama model name (--ollama), which stands instead of --gguf or --model."""
    from .modelfile import remember_sha256
    from .ollama import find_model

    if gguf is not None or model is not None:
        raise UsageError("give one of --gguf, --model or --ollama")
    found = find_model(ollama)
    remember_sha256(found.blob, found.sha256)  # its name is its digest: a 20 GB blob is not read to hash it
    return found


def _export_plan(target: str, path: Path | None, plan: Any, gguf: Path | None, model: str | None,
                 source: dict[str, Any], n_layer: int, n_threads: int) -> None:
    """The plan's choice written for another tool (export.py), to a file or standard output."""
    from .catalog import get_model
    from .export import ModelSource, render

    choice = plan.choice
    if choice is None:
        raise UsageError(f"{plan.model}: nothing fits this machine, so there is no plan to export",
                         hint="`qwenbench plan` without --export says what would fit")
    if gguf is not None:
        where = ModelSource(path=str(gguf))
    else:
        files = source.get("files", {})
        repo = files[choice.quant]["repo"] if choice.quant in files else next(iter(get_model(model or "").hub), "")
        if not repo:
            raise UsageError(f"no Hub repo is known for {model}: nothing for the tool to fetch",
                             hint="plan the file itself: --gguf PATH --export ...")
        where = ModelSource(repo=repo, quant=choice.quant)
    text = render(target, where, choice, n_threads, n_layer)
    if path is None:
        out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        return
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}", hint="give --export-out a writable file") \
            from None
    err.print(f"wrote the {target} export of {plan.model} ({choice.quant}) to {path}", markup=False)


def _resolve_model_file(gguf: Path | None, model: str | None, quant: str | None, synthetic: bool,
                        repo: str | None = None, revision: str | None = None, offline: bool = False,
                        models_dir: list[Path] | None = None, ollama: str | None = None) -> ModelFile:
    from .catalog import get_model
    from .modelfile import ensure_synthetic, open_model_file

    if gguf is not None and model is not None:
        raise UsageError("give either --gguf or --model, not both")
    local = "an --ollama model" if ollama is not None else "a --gguf file"
    if (gguf is not None or ollama is not None) and (quant is not None or synthetic or repo or revision or offline):
        raise UsageError("--quant, --synthetic, --repo, --revision and --offline go with --model; "
                         f"{local} is measured as it is")
    origin: dict[str, str] = {}
    if ollama is not None:
        found = _ollama_model(ollama, gguf, model)
        path, origin = found.blob, {"filename": f"ollama:{found.reference}"}
    elif gguf is not None:
        path = gguf
    elif model is not None and not synthetic:
        path, resolved = _fetch(model, quant or "Q4_K_M", repo, revision, offline, models_dir)
        origin = {"repo": resolved.repo, "revision": resolved.revision} if resolved else {}
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


def _run_with_progress(settings: RunSettings, model_file: ModelFile, machine: MachineInfo, timeout_s: float | None,
                       log_dir: Path, predicted: MemoryEstimate | None = None,
                       labels: RunLabels | None = None) -> RunReport:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from .harness import run_benchmark

    total_samples = len(settings.tests()) * settings.repetitions
    # one redraw a second: the display shares the cores with the llama.cpp threads being timed
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True, refresh_per_second=1) as progress:
        task = progress.add_task(f"loading {model_file.path.name}", total=total_samples)

        def on_event(event: dict[str, Any]) -> None:
            kind = event.get("event")
            if kind == "loaded":
                progress.update(task, description=f"loaded in {event['load_ms'] / 1000:.1f} s")
            elif kind == "test_started":
                progress.update(task, description=f"{event['test']} (warm-up)")
            elif kind == "sample":
                progress.update(task, advance=1,
                                description=f"{event['test']} rep {event['rep']}/{event['reps']}")

        return run_benchmark(settings, model_file, machine, log_dir=log_dir, timeout_s=timeout_s,
                             on_event=on_event, predicted=predicted, labels=labels)


def _print_report(report: RunReport, csv_path: Path) -> None:
    from rich.table import Table

    first = report.records[0]
    from rich.markup import escape

    title = escape(f"{first.model_type or first.model_filename} [{first.weights} weights]")
    table = Table(title=title)
    for column in ("test", "t/s", "± sd", "TTFT ms", "peak RSS", "status"):
        table.add_column(column, justify="left" if column in ("test", "status") else "right")
    for r in report.records:
        table.add_row(r.test, f"{r.avg_ts:.2f}" if r.avg_ts is not None else "-",
                      f"{r.stddev_ts:.2f}" if r.stddev_ts is not None else "-",
                      f"{r.ttft_ms:.0f}" if r.ttft_ms is not None else "-", _bytes(r.peak_rss_bytes),
                      r.status if r.status == "ok" else f"[red]{r.status}[/red]: {escape(r.error)}")
    out.print(table)
    out.print(f"threads {first.n_threads}, ngl {first.n_gpu_layers}, batch {first.n_batch}/{first.n_ubatch}, "
              f"fa {first.flash_attn}, kv {first.type_k}/{first.type_v}, backends {first.backends or '?'}, "
              f"llama.cpp {first.llama_cpp_commit}, load {first.load_ms or 0:.0f} ms", markup=False)
    if first.predicted_host_bytes and first.peak_rss_bytes:
        vram = (f", VRAM {_bytes(first.predicted_vram_bytes)} predicted / {_bytes(first.peak_vram_bytes)} measured"
                if first.predicted_vram_bytes else "")
        out.print(f"memory: host {_bytes(first.predicted_host_bytes)} predicted / {_bytes(first.peak_rss_bytes)} "
                  f"measured peak{vram}", markup=False)
    if first.weights == "synthetic":
        out.print("[yellow]synthetic weights: the speed is the real file's, the text is noise[/yellow]")
    out.print(f"{len(report.records)} rows appended to {csv_path}", markup=False)


@app.command("run", context_settings={"ignore_unknown_options": False})
def run_command(
    gguf: Path | None = typer.Option(None, "--gguf", help="A GGUF file to measure."),
    ollama: str | None = typer.Option(None, "--ollama", metavar="NAME[:TAG]",
                                      help="A model Ollama has pulled (as `ollama list` names it), used in place."),
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key (qwenbench models)."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Quant preset with --model [Q4_K_M]."),
    synthetic: bool = typer.Option(False, "--synthetic", help="With --model: a cached synthetic twin."),
    repo: str | None = typer.Option(None, "--repo", help="With --model: the Hub repo to take the GGUF from."),
    revision: str | None = typer.Option(None, "--revision", help="With --model: a branch, tag or commit."),
    offline: bool = typer.Option(False, "--offline", help="With --model: only the HF cache, no network."),
    models_dir: list[Path] = typer.Option([], "--models-dir", **EXISTING_FOLDER,
                                          help="With --model: also look for the GGUF here."),
    n_prompt: str = typer.Option("512", "-p", "--n-prompt", help="Prompt sizes, e.g. 512 or 128,512."),
    n_gen: str = typer.Option("128", "-n", "--n-gen", help="Generation sizes, e.g. 128."),
    n_depth: str = typer.Option("0", "-d", "--n-depth", help="KV depth prefilled before each test."),
    repetitions: int = typer.Option(5, "-r", "--repetitions", help="Timed repetitions per test."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads [physical cores]."),
    n_gpu_layers: int | None = typer.Option(None, "-ngl", "--n-gpu-layers",
                                            help="Layers on the GPU (-1: all) [the plan's]."),
    n_cpu_moe: int | None = typer.Option(None, "-ncmoe", "--n-cpu-moe",
                                         help="Keep the experts of the first N layers in RAM [the plan's]."),
    rpc: str | None = typer.Option(None, "--rpc", metavar="HOST:PORT[@SIZE],...",
                                   help="Offload to the devices of these `qwenbench worker`s (-ngl layers go there; "
                                        "@12GiB caps what is placed on one)."),
    tensor_split: str | None = typer.Option(None, "-ts", "--tensor-split", metavar="SHARE,SHARE,...",
                                            help="Each offload device's share of the offloaded layers, in the "
                                                 "order plan lists them (3,1: three quarters on the first) "
                                                 "[the plan's: by what each may hold]."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", help="Logical batch size."),
    ubatch_size: int = typer.Option(512, "-ub", "--ubatch-size", help="Physical batch size."),
    ctx_size: int = typer.Option(0, "-c", "--ctx-size", help="Context size (0: n_prompt+n_gen+n_depth per test)."),
    flash_attn: str = typer.Option("auto", "-fa", "--flash-attn", help="Flash attention: auto, on, off."),
    cache_type_k: str | None = typer.Option(None, "-ctk", "--cache-type-k", callback=_kv_type,
                                            help="K cache type (f16, q8_0, ...)."),
    cache_type_v: str | None = typer.Option(None, "-ctv", "--cache-type-v", callback=_kv_type,
                                            help="V cache type (f16, q8_0, ...)."),
    no_mmap: bool = typer.Option(False, "--no-mmap", help="Read the model into memory instead of mapping it."),
    load_mode: str | None = typer.Option(None, "--load-mode", help="llama.cpp load mode (auto, none, mmap, "
                                                                       "mlock, mmap+mlock, dio)."),
    repack: bool | None = typer.Option(None, "--repack/--no-repack", " /-nr",
                                       help="The CPU backend's repacked weight copies (llama.cpp's default; "
                                            "--no-repack is llama-bench's -nr) [the plan's: the faster here]."),
    ttft: bool = typer.Option(True, "--ttft/--no-ttft", help="Also time a chat prompt's first token."),
    think: bool = typer.Option(False, "--think/--no-think", help="Chat template with Qwen3 thinking on."),
    refill_depth: bool = typer.Option(False, "--refill-depth",
                                      help="Decode a -d fill anew every repetition instead of restoring the first "
                                           "one's saved state: much slower; peak memory without the saved copy."),
    timeout: float = typer.Option(3600, "--timeout", callback=_finite(0, strict=True),
                                  help="Seconds before the run is stopped."),
    force: bool = typer.Option(False, "--force", help="Run even when the memory model says it will not fit."),
    out_csv: Path | None = typer.Option(None, "--out", "-o", dir_okay=False, help="Results CSV [results/<host>.csv]."),
    auto_calibrate: bool = CALIBRATE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON for scripts."),
) -> None:
    """Measure a model like llama-bench: prompt (pp) and generation (tg) tokens/s, TTFT, peak memory.

    Each test gets a fresh context, a warm-up, then timed repetitions on random tokens; every test
    becomes one row appended to the results CSV, also when it fails.
    """
    from .machine import describe_machine
    from .rpc import parse_endpoints
    from .runspec import RunSettings

    flash = {"1": "on", "0": "off", "true": "on", "false": "off"}.get(flash_attn.lower(), flash_attn.lower())
    if no_mmap and load_mode not in (None, "none"):
        raise UsageError("--no-mmap contradicts --load-mode " + str(load_mode))
    shares = _shares(tensor_split)
    machine = describe_machine(bandwidth=True)
    endpoints = parse_endpoints(rpc) if rpc else ()
    machine, links = _with_rpc_devices(machine, endpoints)
    _check_shares(shares, machine)
    pinned = {name for name, value in (("n_gpu_layers", n_gpu_layers), ("n_cpu_moe", n_cpu_moe),
                                       ("type_k", cache_type_k), ("type_v", cache_type_v),
                                       ("tensor_split", tensor_split), ("repack", repack)) if value is not None}
    settings = RunSettings(
        model_path="",
        n_prompt=_int_list("-p/--n-prompt", n_prompt),
        n_gen=_int_list("-n/--n-gen", n_gen),
        n_depth=_int_list("-d/--n-depth", n_depth),
        repetitions=repetitions,
        n_threads=threads if threads is not None else machine.n_cpu_physical,
        n_gpu_layers=-1 if n_gpu_layers is None else n_gpu_layers,
        n_cpu_moe=n_cpu_moe or 0,
        rpc_servers=tuple(e.address for e in endpoints),
        tensor_split=shares,
        n_batch=batch_size,
        n_ubatch=ubatch_size,
        n_ctx=ctx_size,
        flash_attn=flash,
        type_k=(cache_type_k or cache_type_v or "f16").lower(),
        type_v=(cache_type_v or cache_type_k or "f16").lower(),
        load_mode="none" if no_mmap else (load_mode or "auto"),
        repack=True if repack is None else repack,
        ttft=ttft,
        think=think,
        refill_depth=refill_depth,
    )
    _execute_run(settings, machine, gguf=gguf, model=model, quant=quant, synthetic=synthetic, timeout=timeout,
                 out_csv=out_csv, as_json=as_json, force=force, pinned=pinned, calibrate=auto_calibrate,
                 source={"repo": repo, "revision": revision, "offline": offline, "models_dir": models_dir,
                         "ollama": ollama},
                 links=links)


def _check_shares(shares: tuple[float, ...], machine: MachineInfo) -> None:
    """A tensor split names each offload device once: more shares than devices, or one without any, is a mistake
    llama.cpp would pass over in silence."""
    from .planner import offload_devices

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

    from .rpc import hardware_with_workers

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


def _execute_run(settings: RunSettings, machine: MachineInfo, *, gguf: Path | None, model: str | None,
                 quant: str | None, synthetic: bool, timeout: float, out_csv: Path | None, as_json: bool,
                 force: bool = False, pinned: set[str] | None = None, source: dict[str, Any] | None = None,
                 calibrate: bool = False, links: tuple[tuple[str, float, float], ...] = ()) -> None:
    from dataclasses import replace

    settings.validate()  # before any file is written or hashed
    if timeout <= 0:
        raise UsageError("--timeout must be > 0 seconds")
    from .calibration import load_calibration
    from .harness import RunLabels
    from .planner import prepare_run

    csv_path = _results_destination(out_csv, machine)  # before any download, hash or hour of measuring
    model_file = _resolve_model_file(gguf, model, quant, synthetic, **(source or {}))
    calibration = load_calibration(machine.machine_id)
    # the rows carry the speed model's figures beside the measured ones, from this machine's calibration
    speed = _speed_calibration(machine, settings.n_threads, allowed=calibrate)
    header = model_file.header
    prepared = prepare_run(replace(settings, model_path=str(model_file.path)), header.quant, header.table,
                           header.shape(), machine.hardware, calibration, pinned if pinned is not None else set(),
                           speed=speed)
    for note in prepared.notes:
        err.print(f"[yellow]warning:[/yellow] {escape(note)}")
    settings = prepared.settings
    settings.validate()
    if prepared.problems and not force:
        raise UsageError(f"{model_file.path.name} with these settings would not fit: {'; '.join(prepared.problems)}",
                         hint="a smaller quant, a shorter context (-c), fewer GPU layers (-ngl) or --n-cpu-moe; "
                              "--force runs it anyway")
    for problem in prepared.problems:
        err.print(f"[yellow]warning:[/yellow] {escape(problem)} (running anyway: --force)")
    labels = RunLabels(host_bytes_per_token=prepared.host_bytes_per_token,
                       gpu_bytes_per_token=prepared.gpu_bytes_per_token, ram_bandwidth_gbps=prepared.ram_gbps,
                       gpu_bandwidth_gbps=prepared.gpu_gbps, predicted_speed=prepared.predicted_speed,
                       unrefined_speed=prepared.unrefined_speed, speed_key=speed.key if speed is not None else "",
                       links=links, predicted_network_ms=prepared.predicted_network_ms)
    report = _run_with_progress(settings, model_file, machine, timeout, csv_path.parent / "logs", prepared.estimate,
                                labels)
    csv_path = _append(csv_path, list(report.records))
    if as_json:
        out.print_json(json.dumps({"run_id": report.run_id, "csv": str(csv_path),
                                   "llama_cpp_buffers": report.buffers.to_json(),
                                   "rows": [r.to_json() for r in report.records]}))
    else:
        _print_report(report, csv_path)
    for note in report.notes:
        err.print(f"note: {note}", markup=False)
    if report.log_path is not None:
        err.print(f"llama.cpp's log of this run: {report.log_path}", markup=False)
    if report.interrupted:
        err.print(f"{lifetime.stop_reason(report.stop_signal)}: the finished repetitions are in {csv_path}",
                  markup=False)
        raise typer.Exit(lifetime.exit_code(report.stop_signal))
    if not report.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------ bench


@app.command("bench")
def bench_command(
    config_path: Path = typer.Option(..., "--config", "-f", exists=True, dir_okay=False,
                                     help="A suite: configs/bench-all.toml, configs/quick.toml or your own."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Measure synthetic twins (nothing is downloaded)."),
    resume: bool = typer.Option(False, "--resume", help="Skip the jobs already recorded as done in the output."),
    out_csv: Path | None = typer.Option(None, "--out", "-o", dir_okay=False, help="Results CSV [results/<host>.csv]."),
    only: list[str] = typer.Option([], "--only", help="Run only jobs whose label matches (glob or word; "
                                                      "repeatable), e.g. --only 30b --only '*cpu'."),
    offline: bool = typer.Option(False, "--offline", help="Models from the caches only (also HF_HUB_OFFLINE=1)."),
    models_dir: list[Path] = typer.Option([], "--models-dir", **EXISTING_FOLDER,
                                          help="Also look for GGUFs in this folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs and exit."),
    rpc: str | None = typer.Option(None, "--rpc", metavar="HOST:PORT[@SIZE],...",
                                   help="The gpu modes offload to these `qwenbench worker`s [the suite's rpc]."),
    auto_calibrate: bool = CALIBRATE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display; the summary only."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON for scripts."),
) -> None:
    """Run a suite: every model in every device mode (cpu, gpu, and gpu-experts-cpu for MoE), each job in its
    own process, rows appended as each job ends. A job that cannot fit or has no GPU is skipped with the
    reason; one that crashes, is killed or times out, or whose model fails to download or verify, becomes
    rows with that status, and the suite goes on. Ctrl-C stops it with the CSV valid; --resume continues."""
    from .bench import build_key, expand_jobs, job_key, run_suite
    from .config import load_config
    from .machine import describe_machine

    config = load_config(config_path)
    if rpc:
        from dataclasses import replace

        from .rpc import parse_endpoints

        config = replace(config, rpc=parse_endpoints(rpc))
    jobs = expand_jobs(config, synthetic=synthetic, only=only)
    if not jobs:
        raise UsageError(f"no job of {config.name} matches --only {' '.join(only)}",
                         hint="--dry-run lists the jobs and their labels")
    if dry_run:
        if as_json:
            out.print_json(json.dumps([{"label": j.label, "model": j.entry.key, "quant": j.entry.quant,
                                        "mode": j.mode, "weights": j.weights,
                                        "job_key": job_key(config, j, build_key())}
                                       for j in jobs]))
        else:
            for number, job in enumerate(jobs, start=1):
                out.print(f"{number:3d}. {job.label}", highlight=False, markup=False)
        return
    machine = describe_machine(bandwidth=True)
    csv_path = out_csv or _default_results(machine)
    # once, before the first job, so that every row carries the speed model's prediction beside its measurement
    _speed_calibration(machine, config.threads or machine.n_cpu_physical, allowed=auto_calibrate)
    if quiet or as_json:
        result = run_suite(config, jobs, machine, out_csv=csv_path, resume=resume, offline=offline,
                           models_dirs=models_dir)
    else:
        result = _bench_with_progress(config, jobs, machine, csv_path, resume, offline, models_dir)
    if as_json:
        out.print_json(json.dumps({"suite": config.name, "csv": str(result.csv_path), "notes": list(result.notes),
                                   "wall_s": round(result.wall_s, 1),
                                   "jobs": [{"label": o.job.label, "mode": o.job.mode, "status": o.status,
                                             "reason": o.reason, "rows": len(o.records)} for o in result.outcomes]}))
        return
    if quiet:
        for note in result.notes:
            err.print(f"[yellow]note:[/yellow] {escape(note)}")
    _print_bench_summary(config.name, result, result.csv_path)
    if any(o.status not in ("ok", "skipped", "resumed") for o in result.outcomes):
        raise typer.Exit(1)


def _results_destination(out_csv: Path | None, machine: MachineInfo) -> Path:
    """The results file rows will go to, checked now so that no work is thrown away at the end."""
    from .results import check_appendable

    path = out_csv or _default_results(machine)
    check_appendable(path)
    return path


def _append(path: Path, records: list[Any]) -> Path:
    """Append rows, saying where they went when it was not `path` (it became unusable) and what was mended."""
    from .results import append_records

    appended = append_records(path, records)
    for note in appended.notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    return appended.path


def _default_results(machine: MachineInfo) -> Path:
    """results/<host>.csv; one an older qwenbench wrote is set aside (renamed, kept) rather than refused."""
    from .paths import default_results_path
    from .results import set_aside_older

    path = default_results_path(machine.hostname)
    moved = set_aside_older(path)
    if moved is not None:
        err.print(f"note: {path} has an older column layout; kept as {moved}, new rows start {path} "
                  "(qwenbench report and compare read both)", markup=False)
    return path


def _job_line(outcome: Any) -> str:
    """One line per finished job: its speeds, or why it has none."""
    status = outcome.status
    if status == "resumed":
        return f"[dim]= {escape(outcome.job.label)}: already recorded[/dim]"
    speeds = ", ".join(f"{r.test} {r.avg_ts:.1f} t/s" if r.test != "ttft" else f"ttft {r.ttft_ms:.0f} ms"
                       for r in outcome.records if r.status == "ok" and r.avg_ts is not None)
    if status == "ok":
        return f"[green]✓[/green] {escape(outcome.job.label)}: {escape(speeds)}"
    colour = "yellow" if status == "skipped" else "red"
    return (f"[{colour}]{status}[/{colour}] {escape(outcome.job.label)}: {escape(outcome.reason)}"
            + (f" ({escape(speeds)})" if speeds else ""))


def _bench_with_progress(config: Any, jobs: list[Any], machine: MachineInfo, csv_path: Path, resume: bool,
                         offline: bool, models_dir: list[Path]) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .bench import run_suite

    # one redraw a second: the display shares the cores with the llama.cpp threads being timed
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
                  refresh_per_second=1) as progress:
        overall = progress.add_task(f"{config.name}: jobs", total=len(jobs))
        current = progress.add_task("", total=None)

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "job_started":
                progress.update(current, description=f"{data['job'].label}", completed=0, total=None)
            elif kind == "status":
                progress.update(current, description=data["message"])
            elif kind == "note":
                progress.console.print(f"[yellow]note:[/yellow] {escape(data['message'])}")
            elif kind == "run_event":
                event = data["event"]
                if event.get("event") == "loaded":
                    progress.update(current, description=f"loaded in {event['load_ms'] / 1000:.1f} s")
                elif event.get("event") == "sample":
                    progress.update(current, description=f"{event['test']} rep {event['rep']}/{event['reps']}")
            elif kind == "job_finished":
                progress.console.print(_job_line(data["outcome"]), highlight=False)
                progress.advance(overall)

        return run_suite(config, jobs, machine, out_csv=csv_path, resume=resume, on_event=on_event,
                         offline=offline, models_dirs=models_dir)


def _print_bench_summary(name: str, result: Any, csv_path: Path) -> None:
    counts = {status: result.count(status) for status in ("ok", "skipped", "resumed")}
    failed = len(result.outcomes) - sum(counts.values())
    out.print(f"{escape(name)}: {len(result.outcomes)} jobs in {result.wall_s / 60:.1f} min: {counts['ok']} ok, "
              f"{counts['skipped']} skipped, {failed} failed" + (f", {counts['resumed']} already recorded"
                                                                   if counts["resumed"] else ""))
    for outcome in result.outcomes:
        if outcome.status not in ("ok", "resumed"):
            out.print("  " + _job_line(outcome), highlight=False)
    out.print(f"rows in {csv_path}; compare machines with: qwenbench report {csv_path} OTHER.csv", markup=False)


# ----------------------------------------------------------------------------------- report, compare


@app.command("report")
def report_command(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False,
                                       help="Results CSVs, from one machine or several."),
    out_dir: Path = typer.Option(Path("report"), "--out", "-o", file_okay=False,
                                 help="Folder for report.md, report.html and PNGs."),
    as_json: bool = typer.Option(False, "--json", help="Print the written paths as JSON."),
) -> None:
    """Markdown and self-contained HTML reports with PNG charts: speed per machine by model and device mode,
    dense vs MoE (bytes read per token, effective bandwidth and its share of the machine's), predicted vs
    measured memory, runs split over RPC workers beside the CPU alone with the network's share of their time,
    and every failed or skipped job with its reason."""
    from .report import write_report

    with err.status("building the report"):
        written = write_report(files, out_dir)
    for note in written.notes:
        err.print(f"note: {note}", markup=False)
    if as_json:
        out.print_json(json.dumps({"markdown": str(written.markdown), "html": str(written.html),
                                   "charts": [str(c) for c in written.charts], "rows": written.rows,
                                   "notes": list(written.notes),
                                   "machines": list(written.machines)}))
        return
    out.print(f"{written.rows} rows from {len(written.machines)} machine(s): {', '.join(written.machines)}",
              markup=False)
    out.print(f"wrote {written.html} (self-contained), {written.markdown} and {len(written.charts)} charts",
              markup=False)


@app.command("compare")
def compare_command(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False,
                                       help="Results CSVs of the machines to put side by side."),
    baseline: str | None = typer.Option(None, "--baseline", help="The machine the ratios are to [the first]."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records."),
    as_markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
) -> None:
    """Machines side by side: one row per model, device mode and test; one column per machine (t/s, or ms for
    ttft; the median of runs) and each machine's ratio to the baseline (>1: faster). Cells a machine did
    not measure are shown as missing."""
    from rich.table import Table

    from .report import compare, load_results, markdown_table

    if sum((as_csv, as_json, as_markdown)) > 1:
        raise UsageError("choose one of --csv, --json and --markdown")
    frame = load_results(files)
    for note in frame.attrs["notes"]:
        err.print(f"note: {note}", markup=False)
    table = compare(frame, baseline)
    if as_csv:
        sys.stdout.write(table.to_csv(index=False))
    elif as_json:
        out.print_json(table.to_json(orient="records"))
    elif as_markdown:
        sys.stdout.write(markdown_table(table) + "\n")
    else:
        _print_compare(table)
        from .report import prediction_errors

        errors = prediction_errors(frame)
        if not errors.empty:
            view = Table(title="how far to trust a plan: predicted / measured - 1 (positive: predicted too fast)")
            for column in errors.columns:
                view.add_column(str(column), justify="left" if column in ("machine", "kind") else "right")
            for row in errors.itertuples(index=False):
                view.add_row(escape(str(row[0])), str(row[1]), str(row[2]), *(f"{v:+.1%}" for v in row[3:]))
            out.print(view)


def _print_compare(table: Any) -> None:
    from rich.table import Table

    view = Table(title="machines side by side (t/s; ttft in ms; ratio > 1: faster than the baseline)")
    for column in table.columns:
        view.add_column(escape(str(column)), justify="left" if column in ("model", "mode", "test") else "right")
    for row in table.itertuples(index=False):
        cells = []
        for column, value in zip(table.columns, row, strict=True):
            if isinstance(value, float):
                missing = value != value  # NaN: not measured there
                ratio = " / " in str(column)
                cells.append("[dim]—[/dim]" if missing else f"{value:.2f}x" if ratio else f"{value:.1f}")
            else:
                cells.append(escape(str(value)))
        view.add_row(*cells)
    out.print(view)


# ------------------------------------------------------------------------------------------ serve


@app.command("serve")
def serve_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key (qwenbench models)."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Quant with --model [Q4_K_M]."),
    gguf: Path | None = typer.Option(None, "--gguf", help="A GGUF file to serve."),
    ollama: str | None = typer.Option(None, "--ollama", metavar="NAME[:TAG]",
                                      help="A model Ollama has pulled (as `ollama list` names it), used in place."),
    synthetic: bool = typer.Option(False, "--synthetic", help="With --model: a synthetic twin (random weights)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback unless you say so)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    ctx: int = typer.Option(4096, "--ctx", "-c", help="Context size."),
    n_gpu_layers: int | None = typer.Option(None, "-ngl", "--n-gpu-layers", help="Layers on the GPU [the plan's]."),
    n_cpu_moe: int | None = typer.Option(None, "-ncmoe", "--n-cpu-moe", help="MoE experts of the first N layers "
                                                                            "in RAM [the plan's; llama-server]."),
    cache_type: str | None = typer.Option(None, "-ctk", "--cache-type", callback=_kv_type,
                                          help="KV cache type [the plan's]."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads [physical cores]."),
    rpc: str | None = typer.Option(None, "--rpc", metavar="HOST:PORT[@SIZE],...",
                                   help="Offload to the devices of these `qwenbench worker`s (-ngl layers go there)."),
    backend: str = typer.Option("auto", "--backend", help="auto (llama-server if on PATH), llama-server, or "
                                                          "llama-cpp-python."),
    force: bool = typer.Option(False, "--force", help="Start even when the memory model says it will not fit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the commands, start nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: the plan as JSON."),
) -> None:
    """Serve a model through an OpenAI-compatible HTTP API (/v1/chat/completions) with the planned settings:
    GPU layers, MoE experts, context, KV type, threads and batch sizes, all pinned and printed, with the exact
    equivalent llama-server command line. Listens on loopback unless --host says otherwise; Ctrl-C stops it."""
    from .rpc import parse_endpoints
    from .serve import (
        LOOPBACK,
        ServerError,
        check_placement,
        check_port,
        find_llama_server,
        start_server,
        stop_server,
        wait_ready,
    )

    if backend not in ("auto", "llama-server", "llama-cpp-python"):
        raise UsageError(f"--backend {backend!r}: use auto, llama-server or llama-cpp-python")
    chosen = ("llama-server" if find_llama_server() else "llama-cpp-python") if backend == "auto" else backend
    if ctx < 1:
        raise UsageError("--ctx must be >= 1")
    check_port(host, port)
    endpoints = parse_endpoints(rpc) if rpc else ()
    plan, notes, _ = _plan_server(gguf, model, quant, synthetic, host, port, ctx, n_gpu_layers, n_cpu_moe,
                                  cache_type, threads, chosen, force, endpoints, ollama)
    equivalent = " ".join(plan.llama_server_argv())
    if dry_run:
        if as_json:
            out.print_json(json.dumps({"backend": chosen, "url": plan.url, "llama_server": plan.llama_server_argv(),
                                       "llama_cpp_python_config": plan.llama_cpp_python_config(), "notes": notes}))
        else:
            out.print(f"would serve {plan.model_path.name} at {plan.url} with {chosen}", highlight=False,
                      markup=False)
            out.print(f"equivalent: {equivalent}", highlight=False, soft_wrap=True, markup=False)
        return
    for note in notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    if host not in LOOPBACK:
        err.print(f"[yellow]warning:[/yellow] listening on {escape(host)}: other machines on the network can use this "
                  "server (it has no API key)")
    log_path = _server_log_path(f"server-{port}.log")
    err.print(f"server log: {log_path}", markup=False)
    with log_path.open("wb") as log:
        process = start_server(plan, chosen, log, log_path.parent)
        try:
            with err.status(escape(f"loading {plan.model_path.name} into {chosen}")):
                model_id = wait_ready(plan.url, process, 600, log_path)
            if plan.rpc_servers:
                placed = check_placement(plan, log_path)
                out.print("weights: " + ", ".join(f"{name} {_bytes(size)}" for name, size in placed.items()),
                          highlight=False, markup=False)
            out.print(f"serving {model_id or plan.alias} at {plan.url}/v1 (OpenAI API) with {chosen}; Ctrl-C stops it",
                      highlight=False, markup=False)
            out.print(f"equivalent: {equivalent}", highlight=False, soft_wrap=True, markup=False)
            process.wait()
            raise ServerError(f"the server stopped on its own (code {process.returncode})", hint=f"its log: {log_path}")
        except KeyboardInterrupt:
            err.print("stopping the server")
        finally:
            stop_server(process)


@app.command("worker")
def worker_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback unless you say so)."),
    port: int = typer.Option(50052, "--port", min=1, max=65535, help="TCP port."),
    threads: int | None = typer.Option(None, "-t", "--threads", min=1, max=MAX_THREADS,
                                       help="CPU threads for a CPU device [physical cores]."),
    cache: bool = typer.Option(False, "--cache", help="Keep uploaded tensors in a local cache, so that a model "
                                                      "sent again loads from disk (llama.cpp rpc-server -c)."),
    device: list[str] = typer.Option([], "--device", "-d", help="A device to serve, e.g. CUDA0 (repeatable) "
                                                                "[every GPU, else the CPU]."),
) -> None:
    """Serve this machine's devices to qwenbench (or llama.cpp) on other machines, through llama.cpp's RPC
    backend: their `--rpc HOST:PORT` offloads layers here. Prints the endpoint, the RPC protocol version, the
    llama.cpp build and each device's free memory; Ctrl-C or SIGTERM stops it. RPC has no authentication and no
    encryption: serve only on networks you trust."""
    from .machine import describe_machine
    from .paths import cache_dir
    from .rpc import Endpoint
    from .rpcworker import Worker
    from .serve import LOOPBACK

    if host not in LOOPBACK:
        err.print(f"[bold red]warning:[/bold red] serving on {escape(host)}: anyone who can reach this port can run "
                  "code on these devices and read what is in them (llama.cpp RPC has no authentication or "
                  "encryption); only on a network you trust", highlight=False)
    n_threads = threads or describe_machine().n_cpu_physical
    endpoint = Endpoint(host, port)
    log_path = _server_log_path(f"worker-{port}.log")
    with log_path.open("wb") as log, Worker(endpoint, n_threads, log, cache_dir() / "rpc" if cache else None,
                                             tuple(device)) as worker:
        with err.status(escape(f"starting the RPC worker at {endpoint.address}")):
            info = worker.start()
        version = ".".join(map(str, info.probe.version))
        out.print(f"RPC worker at {endpoint.address}: protocol {version}, llama.cpp {info.llama_cpp_commit} "
                  f"(llama-cpp-python {info.llama_cpp_python_version}), {n_threads} threads", highlight=False,
                  markup=False)
        for served in info.devices:
            out.print(f"  {served['name']}: {served['description']}, {_bytes(served['free_bytes'])} free of "
                      f"{_bytes(served['total_bytes'])}", highlight=False, markup=False)
        out.print(f"use it with --rpc {endpoint.address}; Ctrl-C stops it (log: {log_path})", highlight=False,
                  markup=False)
        try:
            code = worker.wait()
        except KeyboardInterrupt:
            err.print("stopping the RPC worker")
            raise
        raise QwenbenchError(f"the RPC worker stopped on its own (code {code})", hint=f"its log: {log_path}")


def _server_log_path(name: str, beside: Path | None = None) -> Path:
    """A server's log (and llama-cpp-python's config file beside it): in a logs folder next to the results file
    the user named, else in qwenbench's cache, never in the current directory unasked."""
    from .paths import logs_dir

    folder = beside.parent / "logs" if beside is not None else logs_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {folder} for the server's log: {exc.strerror or exc}",
                         hint="set QWENBENCH_CACHE_DIR to a writable folder") from None
    return folder / name


def _plan_server(gguf: Path | None, model: str | None, quant: str | None, synthetic: bool, host: str, port: int,
                 ctx: int, n_gpu_layers: int | None, n_cpu_moe: int | None, cache_type: str | None,
                 threads: int | None, backend: str, force: bool,
                 endpoints: tuple[Endpoint, ...] = (), ollama: str | None = None) -> tuple[Any, list[str], ModelFile]:
    """The server's settings from the plan for this model and machine, with what the user pinned; the notes to
    show; and the model file. RPC workers are probed first (a plain error naming one that fails) and planned as
    offload devices."""
    from dataclasses import replace

    from .calibration import load_calibration
    from .machine import describe_machine
    from .planner import prepare_run
    from .runspec import RunSettings
    from .serve import ServerPlan

    if n_cpu_moe and backend == "llama-cpp-python":
        raise UsageError("--n-cpu-moe needs llama-server: llama-cpp-python's server cannot keep experts in RAM",
                         hint="install llama.cpp's llama-server, or leave --n-cpu-moe to the plan")
    machine, _ = _with_rpc_devices(describe_machine(bandwidth=True), endpoints)
    pinned = {name for name, value in (("n_gpu_layers", n_gpu_layers), ("n_cpu_moe", n_cpu_moe),
                                       ("type_k", cache_type), ("type_v", cache_type)) if value is not None}
    pinned.add("repack")  # a server keeps llama.cpp's repacked weights: its command line does not pass -nr
    kv = (cache_type or "f16").lower()
    settings = RunSettings(model_path="", n_ctx=ctx, ttft=False, type_k=kv, type_v=kv,
                           n_threads=threads if threads is not None else machine.n_cpu_physical,
                           n_gpu_layers=-1 if n_gpu_layers is None else n_gpu_layers, n_cpu_moe=n_cpu_moe or 0)
    settings.validate()  # the same checks as `run`, before a model is fetched or loaded
    model_file = _resolve_model_file(gguf, model, quant, synthetic, ollama=ollama)
    header = model_file.header
    prepared = prepare_run(replace(settings, model_path=str(model_file.path)), header.quant, header.table,
                           header.shape(), machine.hardware, load_calibration(machine.machine_id), pinned,
                           expert_offload=backend == "llama-server")
    notes = list(prepared.notes)
    if header.n_expert and backend != "llama-server":
        notes.append("llama-cpp-python's server cannot keep MoE experts in RAM: planned without that option "
                     "(llama-server on PATH would allow it)")
    if prepared.problems and not force:
        raise UsageError(f"{model_file.path.name} at {ctx} tokens would not fit: {'; '.join(prepared.problems)}",
                         hint="a shorter --ctx, a smaller quant, or --force")
    chosen = prepared.settings
    alias = model_file.model_key or model_file.path.stem
    plan = ServerPlan(model_file.path, f"{alias}-{model_file.quant}".lower() if model_file.model_key else alias,
                      host, port, ctx, chosen.n_gpu_layers, chosen.n_cpu_moe, chosen.n_threads, chosen.n_batch,
                      chosen.n_ubatch, prepared.config.flash_attn, chosen.type_k, chosen.type_v,
                      tuple(e.address for e in endpoints), chosen.tensor_split)
    return plan, notes, model_file


@app.command("bench-serve")
def bench_serve_command(
    url: str | None = typer.Option(None, "--url", help="A running OpenAI-compatible server, e.g. "
                                                       "http://127.0.0.1:8080 (ours, llama-server, Ollama...)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Start our server for this catalog model instead."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Quant with --model [Q4_K_M]."),
    gguf: Path | None = typer.Option(None, "--gguf", help="Start our server for this GGUF instead."),
    synthetic: bool = typer.Option(False, "--synthetic", help="With --model: a synthetic twin."),
    concurrency: str = typer.Option("1,4", "--concurrency", help="Requests in flight, e.g. 1,4."),
    requests: int = typer.Option(8, "--requests", "-n", help="Requests per concurrency level."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Tokens to generate per request."),
    seed: int = typer.Option(0, "--seed", **SEED_RANGE, help="Seed of the prompt choice and sampling."),
    timeout: float = typer.Option(300, "--timeout", callback=_finite(0, strict=True),
                                  help="Seconds before one request counts as timed out."),
    ctx: int = typer.Option(4096, "--ctx", "-c", help="With --model/--gguf: the server's context size."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="With --model/--gguf: the server's CPU "
                                                                     "threads [physical cores]."),
    out_csv: Path | None = typer.Option(None, "--out", "-o", dir_okay=False, help="Results CSV [results/<host>.csv]."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON for scripts."),
) -> None:
    """What a chat user feels from a server: seeded chat prompts at each concurrency level, streamed; TTFT
    (first token of any kind, and first visible token after Qwen3's thinking), inter-token latency, time per
    output token and end-to-end latency as p50/p90/p99, requests and tokens per second. Failed and timed-out
    requests are counted. One row per level (test serve_c<N>) in the results CSV."""
    from .harness import new_run_id
    from .machine import describe_machine
    from .modelfile import ModelIdentity
    from .serve import free_port, start_server, stop_server, wait_ready
    from .servebench import level_record, run_level, server_identity

    levels = _int_list("--concurrency", concurrency)
    if any(level < 1 for level in levels) or requests < 1 or max_tokens < 1 or timeout <= 0:
        raise UsageError("--concurrency, --requests and --max-tokens must be >= 1, --timeout > 0")
    if (url is None) == (model is None and gguf is None):
        raise UsageError("give --url (a running server) or --model/--gguf (qwenbench starts one)",
                         hint="e.g. qwenbench bench-serve --url http://127.0.0.1:8080")
    if url is not None and not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8080")
    machine = describe_machine()
    csv_path = _results_destination(out_csv, machine)
    process = None
    identity = ModelIdentity("", "", "", 0, 0, 0, False, "")
    log_path = _server_log_path("bench-serve-server.log", out_csv)
    try:
        if url is None:
            plan, notes, model_file = _plan_server(gguf, model, quant, synthetic, "127.0.0.1", free_port(), ctx,
                                                   None, None, None, threads, "llama-cpp-python", False)
            for note in notes:
                err.print(f"note: {note}", markup=False)
            identity = model_file.identity
            err.print(f"server log: {log_path}", markup=False)
            with log_path.open("wb") as log:
                process = start_server(plan, "llama-cpp-python", log, log_path.parent)
            with err.status(escape(f"starting a server for {plan.model_path.name}")):
                wait_ready(plan.url, process, 600, log_path)
            url = plan.url
        model_id, server = server_identity(url)
        run_id = new_run_id()
        run_level(url, model_id, 1, 1, min(max_tokens, 16), seed=seed, timeout_s=timeout)  # warm-up, not counted
        records = []
        for level in levels:
            with err.status(f"concurrency {level}: {requests} requests") as status:
                done = [0]

                def on_done(result: Any, level: int = level, done: list[int] = done) -> None:
                    done[0] += 1
                    status.update(f"concurrency {level}: {done[0]}/{requests} requests")

                result = run_level(url, model_id, level, requests, max_tokens, seed=seed, timeout_s=timeout,
                                   on_done=on_done)
            records.append(level_record(result, url=url, model_id=model_id, server=server, max_tokens=max_tokens,
                                        seed=seed, model=identity, machine=machine, run_id=run_id))
    finally:
        if process is not None:
            stop_server(process)
    csv_path = _append(csv_path, records)
    if as_json:
        out.print_json(json.dumps({"csv": str(csv_path), "rows": [r.to_json() for r in records]}))
    else:
        _print_serve_table(records, url, model_id, server, csv_path)
    if any(r.status != "ok" for r in records):
        raise typer.Exit(1)  # a server that failed requests is not a clean measurement, for scripts too


def _print_serve_table(records: list[Any], url: str, model_id: str, server: str, csv_path: Path) -> None:
    from rich.table import Table

    table = Table(title=escape(f"{model_id or 'model'} at {url}" + (f" ({server})" if server else "")))
    columns = ("level", "ok/failed", "TTFT p50/p90/p99 ms", "visible p50 ms", "ITL p50/p99 ms", "TPOT p50 ms",
               "e2e p50/p99 ms", "req/s", "tok/s")
    for column in columns:
        table.add_column(column, justify="left" if column == "level" else "right")

    def ms(*values: Any) -> str:
        return "/".join("-" if v is None else f"{v:.0f}" for v in values)

    for record in records:
        m = json.loads(record.serve_metrics)
        table.add_row(record.test, f"{m['requests'] - m['failed']}/{m['failed']}",
                      ms(m["ttft_ms_p50"], m["ttft_ms_p90"], m["ttft_ms_p99"]), ms(m["ttfvt_ms_p50"]),
                      ms(m["itl_ms_p50"], m["itl_ms_p99"]), ms(m["tpot_ms_p50"]), ms(m["e2e_ms_p50"], m["e2e_ms_p99"]),
                      f"{m['request_throughput'] or 0:.2f}", f"{m['token_throughput'] or 0:.1f}")
    out.print(table)
    for record in records:
        if record.error:
            out.print(f"[red]{record.test}[/red]: {escape(record.error)}", highlight=False)
    out.print(f"{len(records)} rows appended to {csv_path}", markup=False)


# ------------------------------------------------------------------------------------------- chat


@app.command("chat")
def chat_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key (qwenbench models)."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Quant with --model [Q4_K_M]."),
    gguf: Path | None = typer.Option(None, "--gguf", help="A GGUF file to chat with."),
    ollama: str | None = typer.Option(None, "--ollama", metavar="NAME[:TAG]",
                                      help="A model Ollama has pulled (as `ollama list` names it), used in place."),
    synthetic: bool = typer.Option(False, "--synthetic", help="With --model: a synthetic twin (random weights: "
                                                              "the text is noise, the speed is real)."),
    think: bool = typer.Option(True, "--think/--no-think", help="Qwen3 thinking (switch with /think, /no_think)."),
    ctx: int = typer.Option(4096, "--ctx", "-c", help="Context size."),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="Longest reply, in tokens."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads [physical cores]."),
    n_gpu_layers: int | None = typer.Option(None, "-ngl", "--n-gpu-layers", help="Layers on the GPU [the plan's]."),
    rpc: str | None = typer.Option(None, "--rpc", metavar="HOST:PORT[@SIZE],...",
                                   help="Offload to the devices of these `qwenbench worker`s (-ngl layers go there)."),
    seed: int = typer.Option(0, "--seed", **SEED_RANGE, help="Sampling seed."),
) -> None:
    """Chat with a model in the terminal, with the planned settings: its own chat template, streamed replies
    (thinking shown apart, dimmed), history within the session, and tokens, TTFT and t/s after each reply.
    \"\"\" starts and ends a multi-line message; /think, /no_think, /clear, /bye; Ctrl-C stops a reply,
    Ctrl-D (or Ctrl-C at the prompt) leaves."""
    from .chat import ChatSession, ChatSettings
    from .rpc import parse_endpoints

    if max_tokens < 1 or ctx < 16:
        raise UsageError("--max-tokens must be >= 1 and --ctx >= 16")
    plan, notes, model_file = _plan_server(gguf, model, quant, synthetic, "127.0.0.1", 0, ctx, n_gpu_layers, None,
                                           None, threads, "llama-cpp-python", False,
                                           parse_endpoints(rpc) if rpc else (), ollama)
    for note in notes:
        err.print(f"[dim]note: {escape(note)}[/dim]")
    settings = ChatSettings(n_ctx=ctx, n_gpu_layers=plan.n_gpu_layers, n_threads=plan.n_threads,
                            n_batch=plan.n_batch, n_ubatch=plan.n_ubatch, flash_attn=plan.flash_attn,
                            type_k=plan.type_k, type_v=plan.type_v, max_tokens=max_tokens, seed=seed,
                            rpc_servers=plan.rpc_servers, tensor_split=plan.tensor_split)
    with err.status(escape(f"loading {model_file.path.name}")):
        session = ChatSession(model_file.path, settings, think=think)
    name = model_file.model_key or model_file.path.name
    out.print(f"[bold]{escape(name)}[/bold] {escape(model_file.quant)}: ngl {plan.n_gpu_layers}, "
              f"{plan.n_threads} threads, context {ctx}, KV {plan.type_k}; thinking {'on' if think else 'off'}",
              highlight=False)
    if session.placement:
        out.print("weights: " + ", ".join(f"{name} {_bytes(size)}" for name, size in session.placement.items()),
                  highlight=False, markup=False)
    if model_file.weights == "synthetic":
        out.print("[yellow]synthetic weights: replies are random tokens; the speed is the real model's[/yellow]")
    out.print('[dim]/think /no_think /clear /bye; """ for several lines; Ctrl-D leaves[/dim]')
    try:
        while True:
            try:
                text = _read_message()
            except (EOFError, KeyboardInterrupt):
                out.print()
                break
            if not text.strip():
                continue
            answer = session.command(text)
            if answer is not None:
                if text.strip().lower() == "/bye":
                    break
                out.print(f"[dim]{escape(answer)}[/dim]")
                continue
            _stream_reply(session, text)
    finally:
        session.close()


def _read_line(prompt: str) -> str:
    """input() that Ctrl-C always interrupts: llama.cpp's worker threads can take the SIGINT, and Python then
    only notices it when the main thread runs again, which a read() blocked on the terminal never does."""
    import select

    out.print(prompt, end="", highlight=False, markup=False)
    sys.stdout.flush()
    while not select.select([sys.stdin], [], [], 0.1)[0]:
        pass  # back in Python ten times a second: a pending Ctrl-C is raised here
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def _read_message() -> str:
    line = _read_line(">>> ")
    if line.strip() != '"""':
        return line
    lines = []
    while (line := _read_line("... ")).strip() != '"""':
        lines.append(line)
    return "\n".join(lines)


def _stream_reply(session: Any, text: str) -> None:
    styles = {"think": "dim italic", "text": ""}
    try:
        for kind, piece in session.reply(text):
            out.print(piece, style=styles[kind], end="", highlight=False, markup=False, soft_wrap=True)
    except KeyboardInterrupt:
        out.print(" [stopped]", style="yellow", end="", markup=False)
    out.print()
    if session.last_stats is not None:
        out.print(session.last_stats.line(), style="dim", highlight=False)


@app.command("demo")
def demo_command() -> None:
    """Offline demo: write a synthetic Qwen3-0.6B Q4_K_M, measure it with real llama.cpp, record a CSV."""
    from .machine import describe_machine
    from .runspec import RunSettings

    err.print("[bold]qwenbench demo[/bold]: a synthetic Qwen3-0.6B Q4_K_M (the real file's tensors, random "
              "weights) measured with llama.cpp on this machine's CPU")
    machine = describe_machine()
    settings = RunSettings(model_path="", n_threads=machine.n_cpu_physical)
    _execute_run(settings, machine, gguf=None, model="qwen3-0.6b", quant="Q4_K_M", synthetic=True,
                 timeout=3600, out_csv=None, as_json=False)


def _tolerant_streams() -> None:
    """Text that cannot be encoded or decoded (a Latin-1 byte on stdin, PYTHONIOENCODING=ascii) becomes a
    replacement character instead of a UnicodeError after the work is done."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")


def main() -> None:
    """Entry point: every QwenbenchError becomes one line and a hint, never a traceback; Ctrl-C, SIGTERM and
    SIGHUP stop the work the same way (what finished is kept) with the shell's exit code for that signal."""
    _tolerant_streams()
    lifetime.install_stop_handlers()
    try:
        app()
    except QwenbenchError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
        if exc.hint:
            err.print(f"[dim]hint:[/dim] {escape(exc.hint)}", highlight=False)
        code = lifetime.exit_code(lifetime.stop_signal()) if isinstance(exc, Interrupted) else exc.exit_code
        sys.exit(code)
    except KeyboardInterrupt as exc:
        signum = lifetime.stop_signal(exc)
        err.print(lifetime.stop_reason(signum))
        sys.exit(lifetime.exit_code(signum))
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.EIO):
            raise
        # the reader of our output went away (`| head`, a closed terminal): nothing left to say it to
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
