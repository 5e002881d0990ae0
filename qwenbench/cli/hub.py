"""`synth` and `pull`: model files, synthetic or from the Hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from ..errors import UsageError

if TYPE_CHECKING:
    from ..catalog import ModelSpec

from .common import (
    EXISTING_FOLDER,
    SEED_RANGE,
    SOURCE_OPTION,
    _bytes,
    _fetch,
    _progress_bytes,
    _quant_option,
    app,
    err,
    out,
)


def _shape_overrides(layers: int | None, hidden: int | None, ff: int | None, heads: int | None,
                     kv_heads: int | None, head_dim: int | None, experts: int | None,
                     experts_used: int | None, expert_ff: int | None) -> dict[str, int]:
    given = {"n_layer": layers, "n_embd": hidden, "n_ff": ff, "n_head": heads, "n_head_kv": kv_heads,
             "head_dim": head_dim, "n_expert": experts, "n_expert_used": experts_used, "n_ff_exp": expert_ff}
    for name, value in given.items():
        if value is not None and value < 1:
            raise UsageError(f"shape override {name} must be >= 1, got {value}")
    return {k: v for k, v in given.items() if v is not None}


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
    source: str | None = SOURCE_OPTION,
    layers: int | None = typer.Option(None, "--layers", help="Tiny-model override: number of layers."),
    hidden: int | None = typer.Option(None, "--hidden", help="Tiny-model override: embedding width."),
    ff: int | None = typer.Option(None, "--ff", help="Tiny-model override: dense FFN width."),
    heads: int | None = typer.Option(None, "--heads", help="Tiny-model override: attention heads."),
    kv_heads: int | None = typer.Option(None, "--kv-heads", help="Tiny-model override: KV heads."),
    head_dim: int | None = typer.Option(None, "--head-dim", help="Tiny-model override: head size."),
    experts: int | None = typer.Option(None, "--experts", help="Tiny-model override (MoE): experts."),
    experts_used: int | None = typer.Option(None, "--experts-used", help="Tiny-model override (MoE): used."),
    expert_ff: int | None = typer.Option(None, "--expert-ff", help="Tiny-model override (MoE): expert FFN."),
    mtp: bool = typer.Option(False, "--mtp", help="Keep the model's multi-token-prediction block (Qwen3.5, "
                                                  "Qwen3-Next), as some published files do."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Write a shape-faithful synthetic GGUF: the real file's tensors, types and sizes, random weights.

    llama.cpp runs it exactly as it runs the real file, so its speed is the real file's speed;
    the file is marked synthetic so its results are never mistaken for a real model's. With
    --from-hub the twin copies the published file's header (read with range requests, not downloaded):
    its metadata, tokenizer and every tensor's type, so even unusual mixes are measured before a download.
    """
    from ..catalog import get_model
    from ..gguf_info import read_header

    overrides = _shape_overrides(layers, hidden, ff, heads, kv_heads, head_dim, experts, experts_used, expert_ff)
    if (model is None) == (from_hub is None):
        raise UsageError("give --model (the catalog's recipe) or --from-hub (the published file's header)",
                         hint="e.g. qwenbench synth --from-hub qwen3-30b-a3b --quant UD-Q4_K_XL")
    if from_hub is not None and overrides:
        raise UsageError("the tiny-model overrides go with --model; a --from-hub twin has the real file's shape")
    if model is not None and (repo or revision or source):
        raise UsageError("--repo, --revision and --source go with --from-hub")
    if from_hub is not None and mtp:
        raise UsageError("--mtp goes with --model; a --from-hub twin has the published file's tensors")
    extra: dict[str, Any] = {}
    if from_hub is not None:
        spec = get_model(from_hub)
        path, written, extra = _write_twin(spec, quant, repo, revision, out_path, seed, source)
    else:
        from ..modelfile import ensure_synthetic

        spec = get_model(model or "")
        if overrides:
            spec = spec.with_overrides(**overrides)
        with _progress_bytes() as progress:
            task = progress.add_task(f"writing {spec.name} {quant.upper()}", total=None)
            if mtp and not spec.mtp_layers:
                raise UsageError(f"{spec.name} has no MTP block", hint="--mtp is for Qwen3.5/3.6/3.8 and Qwen3-Next")
            path, written = ensure_synthetic(spec, quant, out_path, seed=seed, mtp=mtp,
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
                seed: int, source: str | None = None) -> tuple[Path, bool, dict[str, Any]]:
    """The synthetic twin of the published file of (spec, quant): its header from the Hub (or ModelScope), random
    weights."""
    from ..hub import resolve_from
    from ..hubheader import read_remote_header
    from ..modelfile import ensure_twin
    from ..paths import twin_model_path

    with err.status(escape(f"reading the {quant.upper()} header of {spec.name} from the Hub")):
        resolved = resolve_from(spec, quant, repo=repo, revision=revision, source=source,
                                on_status=lambda message: err.print(message, highlight=False, markup=False))
        remote = read_remote_header(resolved, keep_arrays=True)
    first = resolved.files[0].path
    twin_of = f"{resolved.origin['repo']}/{first}@{resolved.revision}"
    target = out_path or twin_model_path(resolved.repo, first.rsplit("/", 1)[-1])
    with _progress_bytes() as progress:
        task = progress.add_task(f"writing the twin of {first.rsplit('/', 1)[-1]}", total=None)
        path, written = ensure_twin(remote.header, target, model_key=spec.key, quant=resolved.quant, twin_of=twin_of,
                                    seed=seed, on_progress=lambda d, t: progress.update(task, completed=d, total=t))
    return path, written, {"twin_of": twin_of, "repo": resolved.repo, "source": resolved.source,
                           "revision": resolved.revision,
                           "header_bytes_fetched": remote.fetched_bytes, "real_file_bytes": resolved.size}


# -------------------------------------------------------------------------------------------- run


@app.command("pull")
def pull_command(
    model: str = typer.Option(..., "--model", "-m", help="Catalog model key, e.g. qwen3-30b-a3b."),
    quant: str = typer.Option("Q4_K_M", "--quant", "-q", callback=_quant_option, help="Quant to fetch, e.g. Q3_K_L."),
    repo: str | None = typer.Option(None, "--repo", help="Take it from this repo instead of the catalog's list."),
    revision: str | None = typer.Option(None, "--revision", help="A branch, tag or commit to pin."),
    offline: bool = typer.Option(False, "--offline",
                                 help="Use only the caches, HF's and ModelScope's (also HF_HUB_OFFLINE=1)."),
    models_dir: list[Path] = typer.Option([], "--models-dir", **EXISTING_FOLDER,
                                          help="Also look for the GGUF in this folder."),
    source: str | None = SOURCE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Download a model's GGUF into the Hugging Face cache (ModelScope's, from ModelScope): found by listing
    the repos, resumable, and checked against the source's SHA-256 (a file that does not match is fetched
    again, then refused). A verified copy in LM Studio's folders or --models-dir is used instead of
    downloading. Where the Hub cannot be reached, ModelScope is tried, with a note."""
    path, resolved = _fetch(model, quant, repo, revision, offline, models_dir, source)
    if as_json:
        out.print_json(json.dumps({"repo": resolved.repo if resolved else None,
                                   "source": resolved.source if resolved else None,
                                   "revision": resolved.revision if resolved else None, "quant": quant.upper(),
                                   "files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                                             for f in resolved.files] if resolved else [],
                                   "local_path": str(path)}))
        return
    out.print(f"{quant.upper()} of {model} ready{' and verified' if resolved else ''}: {path}", markup=False)


