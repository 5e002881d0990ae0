"""`run` and `demo`: measure a model like llama-bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from .. import lifetime
from ..errors import UsageError

if TYPE_CHECKING:
    from ..fit import MemoryEstimate
    from ..harness import RunLabels, RunReport
    from ..machine import MachineInfo
    from ..modelfile import ModelFile
    from ..runspec import RunSettings

from .common import (
    CALIBRATE_OPTION,
    EXISTING_FOLDER,
    OLLAMA_OPTION,
    SOURCE_OPTION,
    _append,
    _bytes,
    _check_shares,
    _finite,
    _int_list,
    _kv_type,
    _quant_option,
    _resolve_model_file,
    _results_destination,
    _shares,
    _speed_calibration,
    _with_rpc_devices,
    app,
    err,
    out,
)


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

    from ..harness import run_benchmark

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
    ollama: str | None = OLLAMA_OPTION,
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key (qwenbench models)."),
    quant: str | None = typer.Option(None, "--quant", "-q", callback=_quant_option,
                                     help="Quant preset with --model [Q4_K_M]."),
    synthetic: bool = typer.Option(False, "--synthetic", help="With --model: a cached synthetic twin."),
    repo: str | None = typer.Option(None, "--repo", help="With --model: the Hub repo to take the GGUF from."),
    revision: str | None = typer.Option(None, "--revision", help="With --model: a branch, tag or commit."),
    offline: bool = typer.Option(False, "--offline", help="With --model: only the caches, no network."),
    source: str | None = SOURCE_OPTION,
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
    from ..machine import describe_machine
    from ..rpc import parse_endpoints
    from ..runspec import RunSettings

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
                         "ollama": ollama, "source": source},
                 links=links)


def _execute_run(settings: RunSettings, machine: MachineInfo, *, gguf: Path | None, model: str | None,
                 quant: str | None, synthetic: bool, timeout: float, out_csv: Path | None, as_json: bool,
                 force: bool = False, pinned: set[str] | None = None, source: dict[str, Any] | None = None,
                 calibrate: bool = False, links: tuple[tuple[str, float, float], ...] = ()) -> None:
    from dataclasses import replace

    settings.validate()  # before any file is written or hashed
    if timeout <= 0:
        raise UsageError("--timeout must be > 0 seconds")
    from ..calibration import load_calibration
    from ..harness import RunLabels
    from ..planner import prepare_run

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


@app.command("demo")
def demo_command() -> None:
    """Offline demo: write a synthetic Qwen3-0.6B Q4_K_M, measure it with real llama.cpp, record a CSV."""
    from ..machine import describe_machine
    from ..runspec import RunSettings

    err.print("[bold]qwenbench demo[/bold]: a synthetic Qwen3-0.6B Q4_K_M (the real file's tensors, random "
              "weights) measured with llama.cpp on this machine's CPU")
    machine = describe_machine()
    settings = RunSettings(model_path="", n_threads=machine.n_cpu_physical)
    _execute_run(settings, machine, gguf=None, model="qwen3-0.6b", quant="Q4_K_M", synthetic=True,
                 timeout=3600, out_csv=None, as_json=False)


