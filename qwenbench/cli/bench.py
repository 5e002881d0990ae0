"""`bench`, `report` and `compare`: suites and what they recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from ..errors import UsageError

if TYPE_CHECKING:
    from ..machine import MachineInfo

from .common import (
    CALIBRATE_OPTION,
    EXISTING_FOLDER,
    SOURCE_OPTION,
    _default_results,
    _speed_calibration,
    app,
    err,
    out,
)


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
    source: str | None = SOURCE_OPTION,
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
    from ..bench import build_key, expand_jobs, job_key, run_suite
    from ..config import load_config
    from ..machine import describe_machine

    config = load_config(config_path)
    if rpc:
        from dataclasses import replace

        from ..rpc import parse_endpoints

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
                           models_dirs=models_dir, source=source)
    else:
        result = _bench_with_progress(config, jobs, machine, csv_path, resume, offline, models_dir, source)
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
                         offline: bool, models_dir: list[Path], source: str | None) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..bench import run_suite

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
                         offline=offline, models_dirs=models_dir, source=source)


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
    dense vs MoE (bytes read per token, effective bandwidth and its share of the machine's), speed against quality
    (each quant's t/s beside its mean KLD from `quality` rows, the Pareto front and its knee), predicted vs
    measured memory, runs split over RPC workers beside the CPU alone with the network's share of their time,
    and every failed or skipped job with its reason."""
    from ..report import write_report

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

    from ..report import compare, load_results, markdown_table

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
        from ..report import prediction_errors

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


