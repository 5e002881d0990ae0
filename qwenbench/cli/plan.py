"""`models`, `probe`, `calibrate` and `plan`: what this machine has and what fits it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from ..errors import UsageError
from ..runspec import MAX_THREADS

if TYPE_CHECKING:
    from ..catalog import ModelSpec
    from ..fit import ModelShape
    from ..machine import MachineInfo
    from ..qualityprior import ModelMatch, QualityFigure
from .common import (
    CALIBRATE_OPTION,
    OLLAMA_OPTION,
    SOURCE_OPTION,
    _bytes,
    _finite,
    _ollama_model,
    _quant_option,
    _speed_calibration,
    _with_rpc_devices,
    app,
    err,
    out,
)


@app.command("models")
def models_command(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """List the model catalog (configs/models.toml) and the quant presets."""
    from rich.table import Table

    from ..catalog import load_catalog, unsupported_models
    from ..quants import PRESETS
    from ..recipe import tensor_table

    catalog = load_catalog()
    unsupported = unsupported_models()

    def active(spec: ModelSpec) -> int:
        return tensor_table(spec, "F16").n_params_active(spec.n_expert, spec.n_expert_used)

    if as_json:
        out.print_json(json.dumps({"models": [
            {"key": s.key, "name": s.name, "arch": s.arch, "is_moe": s.is_moe, "n_layer": s.n_layer,
             "attention": s.attention_layout, "n_attention_layers": s.n_attention_layers,
             "context_length": s.context_length, "params_total": s.params_total, "params_active": active(s),
             "mtp_layers": s.mtp_layers} for s in catalog.values()],
            "unsupported": [{"key": u.key, "name": u.name, "arch": u.arch, "reason": u.reason}
                            for u in unsupported.values()],
            "quants": list(PRESETS)}))
        return
    table = Table(title="qwenbench model catalog")
    for column in ("model", "arch", "layers", "attention", "hidden", "heads/kv", "experts", "params", "context"):
        table.add_column(column, justify="left" if column in ("model", "arch", "attention") else "right")
    for spec in catalog.values():
        experts = f"{spec.n_expert_used}/{spec.n_expert}" if spec.is_moe else "-"
        params = f"{spec.params_total / 1e9:.1f} B" + (f" ({active(spec) / 1e9:.1f} active)" if spec.is_moe else "")
        table.add_row(escape(spec.key), spec.arch, str(spec.n_layer), spec.attention_layout, str(spec.n_embd),
                      f"{spec.n_head}/{spec.n_head_kv}", experts, params, f"{spec.context_length // 1024}k")
    out.print(table)
    for model in unsupported.values():
        out.print(f"not supported: {escape(model.key)} ({model.arch}): {escape(model.reason)}")
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

    from ..machine import machine_id
    from ..probe import probe_hardware
    from ..probe.bandwidth import cached_bandwidth

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

    from ..calibrate import BANDWIDTH_TRIALS
    from ..machine import describe_machine
    from ..speed import bits_per_weight

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
    for gqa, depth, decode_s, prefill_s in calibration.attention:
        # per cell, layer and query head of 128 dimensions: the unit a reader can multiply out for a model
        out.print(f"attention at {depth} cells, {gqa} query heads a KV head: {decode_s * 128 * 1e9:.2f} ns decoding, "
                  f"{prefill_s * 128 * 1e9:.2f} ns prefilling, a cell x layer x query head", markup=False)


# ------------------------------------------------------------------------------------------- plan


def _max_kld_option(value: float | None) -> float | None:
    """--max-kld: a mean KLD in nats, finite and >= 0 (click's FloatRange lets nan through)."""
    if value is not None and (not math.isfinite(value) or value < 0):
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}; a mean KL divergence in nats per "
                                 "token, e.g. --max-kld 0.05 (Q4_K_M's published figure is 0.031)")
    return value


def _plan_quality(quants: list[str], match: ModelMatch, files: list[Path],
                  machine: MachineInfo) -> tuple[dict[str, QualityFigure], list[str], list[str]]:
    """Each quant's quality figure for the plan, the results files its measurements were read from, and notes.

    Measured rows come from --quality-from, or else the file `qwenbench quality` writes by default
    (results/<host>.csv, where the command runs), when it exists; a default file that cannot be read is a note,
    a named one an error. The rest is the published prior (configs/quant_quality.toml)."""
    from ..catalog import config_dir
    from ..errors import QwenbenchError
    from ..paths import default_results_path
    from ..qualityprior import PRIORS_FILE, load_priors, measured_figures, quality_figures
    from ..results import read_records

    priors = load_priors(config_dir() / PRIORS_FILE)
    named = bool(files)
    paths = files or [path for path in [default_results_path(machine.hostname)] if path.is_file()]
    rows: list[dict[str, Any]] = []
    read: list[str] = []
    notes: list[str] = []
    for path in paths:
        try:
            rows += read_records(path)
        except QwenbenchError as exc:
            if named:
                raise
            notes.append(f"measured quality not read from {path}: {exc}")
            continue
        read.append(str(path))
    return quality_figures(quants, priors, measured_figures(rows, match)), read, notes


@app.command("plan")
def plan_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key, e.g. qwen3-30b-a3b."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Plan only this quant (and show neighbours)."),
    gguf: Path | None = typer.Option(None, "--gguf", help="Plan a local GGUF file from its header."),
    ollama: str | None = OLLAMA_OPTION,
    ctx: int = typer.Option(4096, "--ctx", "-c", help="Context size to plan for."),
    min_tg: float = typer.Option(5.0, "--min-tg", callback=_finite(0, strict=False),
                                 help="Slowest generation speed (t/s) still usable."),
    max_kld: float | None = typer.Option(None, "--max-kld", callback=_max_kld_option, metavar="KLD",
                                         help="Most quality loss accepted: mean KL divergence (nats per token) from "
                                              "full precision, e.g. 0.05. Quants over it, or without a figure, are "
                                              "left out; it replaces the Q4-class floor."),
    quality_from: list[Path] = typer.Option([], "--quality-from", exists=True, dir_okay=False, metavar="CSV",
                                            help="Results files to take this model's measured KLD from (`qwenbench "
                                                 "quality` rows; repeatable) [results/<host>.csv here, where "
                                                 "quality writes]. A quant not measured takes its published "
                                                 "prior (configs/quant_quality.toml)."),
    repo: str | None = typer.Option(None, "--repo", help="Read the headers from this repo, not the catalog's list."),
    revision: str | None = typer.Option(None, "--revision", help="A branch, tag or commit to pin."),
    offline: bool = typer.Option(False, "--offline", help="Plan from the catalog's recipe, without the Hub."),
    model_source: str | None = SOURCE_OPTION,
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

    Quality is each quant's mean KL divergence from full precision: this model's own where `qwenbench quality`
    measured it (the latest row per quant in --quality-from, or results/<host>.csv), else the published figure of
    its type (LLaMA-3-8B, configs/quant_quality.toml); the quality column says which.

    With --model, the tensor tables come from the headers of the files the Hub publishes, read with
    range requests (a few MB per file, cached), so nothing is downloaded to plan; offline, or when the
    Hub cannot be reached, from the catalog's recipe of llama-quantize's rules."""
    from dataclasses import replace

    from rich.table import Table

    from ..calibration import load_calibration
    from ..catalog import get_model
    from ..export import TARGETS
    from ..gguf_info import read_model_header
    from ..hub import offline_mode
    from ..hubheader import plan_tables
    from ..machine import describe_machine
    from ..modelfile import cached_sha256
    from ..planner import (
        as_if_built_for,
        candidate_quants,
        idle_gpu_build,
        kld_words,
        offload_devices,
        plan_quants,
        usable_gpu,
    )
    from ..probe.backends import BUILDS, install_command
    from ..qualityprior import ModelMatch
    from ..rpc import parse_endpoints

    if ctx < 1:
        raise UsageError("--ctx must be >= 1")
    if export is not None and export not in TARGETS:
        raise UsageError(f"--export {export!r}: not a tool it writes for", hint=f"one of {', '.join(TARGETS)}")
    if export_out is not None and export is None:
        raise UsageError("--export-out goes with --export", hint="e.g. --export ollama --export-out Modelfile")
    label = ""
    if ollama is not None:
        pulled = _ollama_model(ollama, gguf, model)
        gguf, label = pulled.blob, f"ollama:{pulled.reference}"
    if (model is None) == (gguf is None):
        raise UsageError("give --model, --gguf or --ollama", hint="e.g. qwenbench plan --model qwen3-30b-a3b")
    if gguf is not None and (repo or revision or quant or model_source):
        raise UsageError("--quant, --repo, --revision and --source go with --model; a local file is planned as it is")
    if backend is not None and backend not in BUILDS:
        raise UsageError(f"--backend {backend!r}: not a build it plans for", hint=f"one of {', '.join(BUILDS)}")
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
        match = ModelMatch(sha256=cached_sha256(gguf), filename=gguf.name, size=header.table.n_bytes)
    else:
        spec = get_model(model or "")
        with err.status("reading GGUF headers from the Hub") as status:
            found = plan_tables(spec, candidate_quants(wanted), pinned=wanted, repo=repo, revision=revision,
                                offline=offline_mode(offline), source=model_source,
                                on_quant=lambda q, i, n: status.update(f"reading the {q} header ({i}/{n})"))
        name, shape, tables = spec.key, found.shape, found.tables
        match = ModelMatch(model_key=spec.key)
        source = {"source": found.source, "notes": list(found.notes),
                  "header_bytes_fetched": sum(h.fetched_bytes for h in found.remote.values()),
                  "files": {q: {"repo": h.resolved.repo, "revision": h.resolved.revision,
                                "source": h.resolved.source,
                                "paths": [f.path for f in h.resolved.files], "size": h.resolved.size,
                                "header_bytes_fetched": h.fetched_bytes} for q, h in found.remote.items()}}
    quality, quality_read, quality_notes = _plan_quality(list(tables), match, quality_from, machine)
    plan = plan_quants(name, tables, shape, machine.hardware, ctx, calibration, min_tg,
                       wanted if gguf is None else None, speed=speed, quality=quality, max_kld=max_kld)
    if export is not None:
        _export_plan(export, export_out, plan, gguf, model, source, shape.n_layer, machine.n_cpu_physical,
                     label.removeprefix("ollama:"))
        return
    # a GPU this install cannot drive: the plan its build would give, beside this install's
    other = idle_gpu_build(machine.hardware) if backend is None else None
    alternative = (plan_quants(name, tables, shape, as_if_built_for(machine.hardware, other), ctx, calibration,
                               min_tg, wanted if gguf is None else None, speed=speed, quality=quality,
                               max_kld=max_kld) if other else None)
    if as_json:
        extra = ({"with_backend": {"backend": other, "install": install_command(other), **alternative.to_json()}}
                 if other and alternative is not None else {})
        measured = {"max_kld": max_kld, "quality_from": quality_read, "quality_notes": quality_notes}
        out.print_json(json.dumps({**plan.to_json(), **source, **as_if, **extra, **measured}))
        return
    if as_if:
        out.print(f"planned as if llama-cpp-python were built for {backend} (this one is built for "
                  f"{', '.join(as_if['installed_backends']) or 'nothing usable'}); that build: {as_if['install']}",
                  markup=False, highlight=False)
    choice = plan.choice
    offloaded = "on the workers" if any(gpu.vendor == "rpc" for gpu in machine.hardware.gpus) else "VRAM"
    if choice is None and max_kld is not None and any(p.fits for p in plan.evaluated):
        out.print(f"[red]{escape(name)}: nothing within --max-kld {max_kld:g} fits this machine at {ctx} tokens of "
                  "context[/red]")
    elif choice is None:
        out.print(f"[red]{escape(name)}: nothing fits this machine at {ctx} tokens of context[/red]")
    else:
        where = ("CPU" if not choice.n_gpu_layers else f"-ngl {choice.n_gpu_layers}" + (
            f" --n-cpu-moe {choice.n_cpu_moe}" if choice.n_cpu_moe else "")) \
            + ("" if choice.use_mmap else " --no-mmap") + ("" if choice.repack else " --no-repack")
        out.print(f"[bold]{escape(name)}: {escape(choice.quant)}[/bold], {where}, KV {choice.type_k}, context {ctx}: "
                  f"host {_bytes(choice.predicted_host_required_bytes)}, {offloaded} "
                  f"{_bytes(choice.predicted_vram_bytes)}, "
                  f"about {choice.predicted_tg_ts:.1f} t/s generation"
                  + (f"; {escape(kld_words(choice))}" if kld_words(choice) else ""))
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
    layout = _attention_note(shape, ctx, choice.type_k if choice else "f16")
    if layout:
        out.print(f"  {layout}", markup=False)
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
                  + escape(", ".join(f"{q} {'' if f['source'] == 'hf' else f['source'] + ':'}{f['repo']}"
                                     for q, f in source["files"].items())) + "[/dim]")
    for note in (*source.get("notes", ()), *quality_notes):
        out.print(f"[dim]note:[/dim] {escape(note)}")
    table = Table(title=f"every quant's best placement on this machine ({calibration.source} calibration)")
    networked = any(p.predicted_network_ms for p in plan.evaluated)
    for column in ("quant", "fits", "placement", "KV", "host need", "peak RSS", offloaded, "tg t/s", "pp512 t/s",
                   *(("network ms/token",) if networked else ()), "mean KLD", "KLD from"):
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
                      *((f"{p.predicted_network_ms:.2f}",) if networked else ()),
                      *_quality_cells(p.quality, max_kld))
    out.print(table)


def _quality_cells(figure: QualityFigure | None, max_kld: float | None) -> tuple[str, str]:
    """The table's mean KLD and where it comes from; a figure over --max-kld in red."""
    if figure is None or figure.kld is None:
        return "-", "unknown"
    value = f"{figure.kld:.4g}"
    if max_kld is not None and figure.kld > max_kld:
        value = f"[red]{value}[/red]"
    return value, escape(figure.label)


# ------------------------------------------------------------------------------------------ synth


def _attention_note(shape: ModelShape, ctx: int, type_kv: str) -> str:
    """What a model's attention layout costs at this context, where not every layer keeps a full KV cache: the
    KV of its attention layers, the fixed recurrent state, and what the same model would need with a full KV
    cache in every layer."""
    from ..fit import RunConfig, kv_bytes_per_layer, layer_cache_bytes

    if shape.attention_layout == "full":
        return ""
    config = RunConfig(n_ctx=ctx, type_k=type_kv, type_v=type_kv)
    caches = [layer_cache_bytes(shape, config, layer) for layer in range(shape.n_layer)]
    kv, state = sum(c[0] for c in caches), sum(c[1] for c in caches)
    every = shape.n_layer_trunk * kv_bytes_per_layer(shape, ctx, type_kv, type_kv)
    return (f"attention: {shape.attention_layout}; at {ctx} tokens KV {_bytes(kv)}"
            + (f" + recurrent state {_bytes(state)} (fixed, any context)" if state else "")
            + f", against {_bytes(every)} of KV were every layer full attention")


def _export_plan(target: str, path: Path | None, plan: Any, gguf: Path | None, model: str | None,
                 source: dict[str, Any], n_layer: int, n_threads: int, ollama: str = "") -> None:
    """The plan's choice written for another tool (export.py), to a file or standard output."""
    from ..catalog import get_model
    from ..export import ModelSource, render

    choice = plan.choice
    if choice is None:
        raise UsageError(f"{plan.model}: {plan.reasons[0] if plan.reasons else 'nothing fits this machine'}, so "
                         "there is no plan to export",
                         hint="`qwenbench plan` without --export says what would fit")
    if gguf is not None:
        where = ModelSource(path=str(gguf), ollama=ollama)
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


