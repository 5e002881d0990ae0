"""`quality`: what a quant costs in quality, as KL divergence and perplexity against a reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from .. import lifetime
from ..errors import UsageError
from .common import EXISTING_FOLDER, _append, _resolve_model_file, _results_destination, app, err, out

if TYPE_CHECKING:
    from ..modelfile import ModelFile
    from ..qualityrun import QualityReport

# the corpora shipped in configs/corpora (see its SOURCES.md), by the name --corpus takes
SHIPPED_CORPORA = {"en": "en.txt", "zh": "zh.txt"}


def _corpus_path(value: str) -> Path:
    from ..catalog import config_dir

    if value in SHIPPED_CORPORA:
        return config_dir() / "corpora" / SHIPPED_CORPORA[value]
    return Path(value)


def _quant_list(text: str | None) -> list[str]:
    names = [name.strip().upper() for name in (text or "").split(",") if name.strip()]
    if text is not None and not names:
        raise UsageError("--quants is empty", hint="e.g. --quants Q8_0,Q4_K_M,Q3_K_L")
    return list(dict.fromkeys(names))


def _models(gguf: list[Path], model: str | None, quants: list[str], ref: str | None, synthetic: bool,
            source: dict[str, Any], n_threads: int, log_dir: Path) -> tuple[ModelFile, list[ModelFile]]:
    """The reference and the models to score. --gguf files are scored against --ref FILE; a catalog model's quants
    against its --ref quant (Q8_0 unless told), fetched from the Hub, or with --synthetic: the reference a synthetic
    twin and each quant llama-quantize'd from it, so the quants carry the reference's own (random) weights."""
    from ..qualityrun import requantize

    if gguf and model:
        raise UsageError("give either --gguf files or --model, not both")
    if gguf:
        if quants or synthetic:
            raise UsageError("--quants and --synthetic go with --model; --gguf files are measured as they are")
        if not ref:
            raise UsageError("--gguf files need a reference: --ref FILE.gguf",
                             hint="the file the others are compared with, e.g. the F16 or Q8_0 of the same model")
        reference = _resolve_model_file(Path(ref), None, None, False)
        return reference, [_resolve_model_file(path, None, None, False) for path in gguf]
    if not model:
        raise UsageError("no model given", hint="use --gguf FILE... --ref FILE, or --model M --quants Q,...")
    if not quants:
        raise UsageError("--model needs --quants", hint="e.g. --quants Q8_0,Q4_K_M,Q3_K_L")
    ref_quant = (ref or "Q8_0").upper()
    if ref_quant.endswith(".GGUF"):
        raise UsageError("--ref with --model is a quant (BF16, F16, Q8_0); a reference file goes with --gguf")
    reference = _resolve_model_file(None, model, ref_quant, synthetic, **source)
    if synthetic:
        copies = []
        for quant in quants:
            if quant == ref_quant:
                copies.append(reference)
                continue
            err.print(f"quantizing the synthetic {ref_quant} to {quant} (llama-quantize, once)", markup=False)
            copies.append(_resolve_model_file(requantize(reference, quant, n_threads=n_threads, log_dir=log_dir),
                                              None, None, False))
        return reference, copies
    return reference, [_resolve_model_file(None, model, quant, False, **source) for quant in quants]


def _measure_with_progress(reference: ModelFile, models: list[ModelFile], settings: Any, request: Any,
                           machine: Any, log_dir: Path) -> QualityReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..qualityrun import measure_quality

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True, refresh_per_second=2) as progress:
        tasks: dict[str, Any] = {}

        def on_event(event: dict[str, Any]) -> None:
            name, kind = event.get("pass", ""), event.get("event")
            label = f"reference {reference.quant or reference.path.name}" if name == "reference" else name
            if kind == "loading" and name not in tasks:
                tasks[name] = progress.add_task(f"{label}: loading", total=None)
            elif kind == "quality_started":
                progress.update(tasks[name], total=event["chunks"], completed=event["chunks_cached"],
                                description=f"{label}: {event['n_tokens']} tokens")
            elif kind == "quality_chunk":
                progress.update(tasks[name], completed=event["index"] + 1,
                                description=f"{label}: chunk {event['index'] + 1}/{event['total']}")

        return measure_quality(reference, models, settings, request, machine, log_dir=log_dir, on_event=on_event)


def _print_report(report: QualityReport, reference: ModelFile, csv_path: Path) -> None:
    from rich.table import Table

    records = report.records
    first = records[0] if records else None
    title = escape(f"against {reference.quant or reference.path.name} ({reference.path.name}), "
                   f"corpus {first.corpus if first else '?'}, ctx {first.n_ctx if first else '?'}")
    table = Table(title=title)
    for column in ("model", "mean KLD", "KLD p99", "same top", "PPL", "PPL ratio", "status"):
        table.add_column(column, justify="left" if column in ("model", "status") else "right")
    for r in records:
        def number(value: float | None, form: str) -> str:
            return format(value, form) if value is not None else "-"
        table.add_row(escape(r.quant or r.model_filename), number(r.kld_mean, ".5g"), number(r.kld_p99, ".5g"),
                      number(None if r.same_top is None else 100 * r.same_top, ".2f") + ("%" if r.same_top else ""),
                      number(r.ppl, ".4f"), number(r.ppl_ratio, ".5f"),
                      r.status if r.status == "ok" else f"[red]{escape(r.status)}[/red]: {escape(r.error)}")
    out.print(table)
    if first is not None:
        metrics = json.loads(first.quality_metrics or "{}")
        out.print(f"{metrics.get('n_tokens', '?')} tokens scored in {metrics.get('chunks', '?')} chunks; reference "
                  f"PPL {first.ppl_ref or 0:.4f}; its top {metrics.get('top_k', '?')} tokens kept per position "
                  f"(mean tail mass beyond them {metrics.get('tail_mass', 0):.4f})", markup=False)
        if first.weights == "synthetic":
            out.print("[yellow]synthetic weights: the mechanics are real, the figures are random weights'[/yellow]")
    cached = report.reference_chunks_cached
    out.print(f"reference: {report.reference_chunks_computed} chunks computed, {cached} from the cache "
              f"({report.reference_dir})", markup=False)
    out.print(f"{len(records)} rows appended to {csv_path}", markup=False)


@app.command("quality")
def quality_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Catalog model key (qwenbench models)."),
    quants: str | None = typer.Option(None, "--quants", help="With --model: the quants to score, e.g. "
                                                              "Q8_0,Q4_K_M,Q3_K_L."),
    ref: str | None = typer.Option(None, "--ref", help="The reference: a quant with --model (BF16, F16, Q8_0) "
                                                        "[Q8_0]; a GGUF file with --gguf."),
    gguf: list[Path] = typer.Option([], "--gguf", help="A GGUF file to score against --ref (repeatable)."),
    synthetic: bool = typer.Option(False, "--synthetic", help="With --model: a synthetic reference twin and its "
                                                              "llama-quantize'd copies."),
    repo: str | None = typer.Option(None, "--repo", help="With --model: the Hub repo to take the GGUFs from."),
    revision: str | None = typer.Option(None, "--revision", help="With --model: a branch, tag or commit."),
    offline: bool = typer.Option(False, "--offline", help="With --model: only the HF cache, no network."),
    models_dir: list[Path] = typer.Option([], "--models-dir", **EXISTING_FOLDER,
                                          help="With --model: also look for the GGUFs here."),
    corpus: str = typer.Option("en", "--corpus", help="A UTF-8 text file, or a shipped corpus: en, zh."),
    ctx: int = typer.Option(512, "--ctx", "-c", help="Tokens per chunk (llama-perplexity's -c)."),
    chunks: int = typer.Option(0, "--chunks", help="Chunks to score (0: all the corpus holds)."),
    top_k: int = typer.Option(512, "--top-k", help="Reference tokens kept per position (the rest as one mass)."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads [physical cores]."),
    n_gpu_layers: int = typer.Option(-1, "-ngl", "--n-gpu-layers", help="Layers on the GPU (-1: all)."),
    timeout: float = typer.Option(36000, "--timeout", help="Seconds before a pass is stopped."),
    out_csv: Path | None = typer.Option(None, "--out", "-o", dir_okay=False, help="Results CSV [results/<host>.csv]."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON for scripts."),
) -> None:
    """Score quants against a reference: mean and 99th-percentile KL divergence of the next-token distributions,
    same-top-token rate, perplexity and its ratio to the reference's, as llama-perplexity defines them.

    The reference's distributions are computed once per model file, corpus, context and top-k, and cached; each
    model then runs over the same tokens in its own process. Ctrl-C keeps the finished chunks.
    """
    from ..machine import describe_machine
    from ..qualityrun import QualityRequest, read_corpus
    from ..runspec import QualitySettings, RunSettings

    if timeout <= 0:
        raise UsageError("--timeout must be > 0 seconds")
    machine = describe_machine()
    settings = RunSettings(model_path="", n_threads=threads if threads is not None else machine.n_cpu_physical,
                           n_gpu_layers=n_gpu_layers)
    QualitySettings(settings, "test", "", n_ctx=ctx, n_chunks=chunks, top_k=top_k).validate()
    request = QualityRequest(read_corpus(_corpus_path(corpus), ctx), ctx, chunks, top_k, timeout)
    csv_path = _results_destination(out_csv, machine)
    log_dir = csv_path.parent / "logs"
    reference, models = _models(gguf, model, _quant_list(quants), ref, synthetic,
                                {"repo": repo, "revision": revision, "offline": offline, "models_dir": models_dir},
                                settings.n_threads, log_dir)
    report = _measure_with_progress(reference, models, settings, request, machine, log_dir)
    if report.records:
        csv_path = _append(csv_path, list(report.records))
    if as_json:
        out.print_json(json.dumps({"csv": str(csv_path), "reference": str(reference.path),
                                   "reference_dir": str(report.reference_dir),
                                   "reference_chunks_computed": report.reference_chunks_computed,
                                   "reference_chunks_cached": report.reference_chunks_cached,
                                   "rows": [r.to_json() for r in report.records]}))
    elif report.records:
        _print_report(report, reference, csv_path)
    for log_path in report.log_paths:
        err.print(f"llama.cpp's log of a failed pass: {log_path}", markup=False)
    if report.interrupted:
        kept = (f"the finished chunks are in {csv_path}" if report.records else
                f"the reference's {report.reference_chunks_cached + report.reference_chunks_computed} finished "
                "chunks are cached; run it again to go on")
        err.print(f"{lifetime.stop_reason(report.stop_signal)}: {kept}", markup=False)
        raise typer.Exit(lifetime.exit_code(report.stop_signal))
    if not report.ok:
        raise typer.Exit(1)
