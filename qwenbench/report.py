"""Reports and machine comparisons over results CSVs: the only module that imports pandas and matplotlib.

Every CSV of every schema version this qwenbench knows is read (older files lack some columns, which stay
empty); rows are labelled by machine (hostname), model (catalog key or file, quant, and "synthetic" for
random weights) and device mode, and repeated runs of the same job are summarised by their median.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UsageError
from .results import COLUMNS, NUMERIC_COLUMNS, read_table

GPU_BACKEND_NAMES = ("CUDA", "Metal", "Vulkan", "HIP", "ROCm", "SYCL", "OpenCL", "CANN", "MUSA")
MODE_ORDER = ("cpu", "gpu", "gpu-experts-cpu")
GB = 1e9


# ------------------------------------------------------------------------------------------ loading


# what reports read: the per-sample lists (the bulk of a big file) are left on disk
_READ_COLUMNS = tuple(c for c in COLUMNS if c not in ("samples_ns", "samples_ts"))


def _read_all(paths: list[Path]) -> pd.DataFrame:
    """Every whole row of every file in one DataFrame. Files are read once each by the results module's reader
    (which skips torn lines), then the rows of all files with the same header go through pandas' C parser in
    one call: a DataFrame per file costs milliseconds, and thousands of small CSVs took a minute. The readers'
    notes go to frame.attrs["notes"]."""
    by_header: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}
    notes: list[str] = []
    for path in paths:
        table = read_table(Path(path))
        notes += table.notes
        if not table.rows:  # empty, or only a torn header: nothing for pandas to parse
            continue
        rows, sources = by_header.setdefault(table.header, ([], []))
        rows += table.rows
        sources += [Path(path).name] * len(table.rows)
    frames = []
    for header, (rows, sources) in by_header.items():
        wanted = [c for c in header if c in _READ_COLUMNS]
        # numbers are parsed as numbers straight away; text stays text ("" for empty, never NaN)
        frame = pd.read_csv(io.StringIO(",".join(header) + "\n" + "\n".join(rows) + "\n"), usecols=wanted,
                            dtype={c: str for c in wanted if c not in NUMERIC_COLUMNS}, keep_default_na=False,
                            na_values={c: [""] for c in NUMERIC_COLUMNS if c in wanted})
        frame["source"] = sources
        frames.append(frame.reindex(columns=[*_READ_COLUMNS, "source"]))  # an older schema's missing columns
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*_READ_COLUMNS, "source"])
    for column in NUMERIC_COLUMNS:  # a stray word where a number belongs: missing
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame.attrs["notes"] = notes
    return frame


def load_results(paths: list[Path]) -> pd.DataFrame:
    """Every row of the files, typed, with the labels reports group by: machine, model, mode, metric."""
    if not paths:
        raise UsageError("no results files given", hint="e.g. qwenbench report results/*.csv")
    frame = _read_all(paths)
    text_columns = [c for c in frame.columns if c not in NUMERIC_COLUMNS]
    frame[text_columns] = frame[text_columns].fillna("")
    frame["is_moe"] = frame["is_moe"].eq("true")
    # a hostname two machines share (two "laptop"s) gets the machine id to tell them apart
    ids_per_host = frame.groupby("hostname")["machine_id"].transform("nunique")
    frame["machine"] = frame["hostname"].where(ids_per_host <= 1,
                                               frame["hostname"] + "-" + frame["machine_id"].str[:6])
    name = frame["model_key"].where(frame["model_key"] != "", frame["model_filename"].str.removesuffix(".gguf"))
    frame["model"] = (name + " " + frame["quant"]).str.strip() + frame["weights"].map(
        {"synthetic": " (synthetic)"}).fillna("")
    # one label, two different files (a shrunken synthetic beside the full one): tell them apart by size
    sizes = frame.groupby("model")["model_size"].transform("nunique")
    frame["model"] = frame["model"].where(sizes <= 1, frame["model"] + " [" + (frame["model_size"] / GB).map(
        lambda gb: f"{gb:.2f} GB") + "]")
    has_gpu = frame["backends"].str.contains("|".join(GPU_BACKEND_NAMES), regex=True)
    offloads = (has_gpu | (frame["topology"] != "")) & (frame["n_gpu_layers"] != 0)
    derived = pd.Series("gpu", index=frame.index).where(offloads, "cpu")
    # a run's own -nr runs other kernels: another configuration, not the same mode. A suite's mode stays whole:
    # there the plan chose (as it chooses -ngl), and machines that chose differently still compare
    derived = derived.where(frame["repack"] != "off", derived + " no-repack")
    frame["mode"] = frame["mode"].where(frame["mode"] != "", derived)
    # a run split across machines is another topology, not the same mode: compare and report keep them apart
    frame["mode"] = frame["mode"].where(frame["topology"] == "", frame["mode"] + " via " + frame["topology"])
    frame["value"] = frame["avg_ts"].where(frame["test"] != "ttft", frame["ttft_ms"])
    return frame


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    # a quality row's avg_ts is the speed of its scoring pass, not a speed test of the model: not in speed tables
    return frame[(frame["status"] == "ok") & frame["value"].notna() & (frame["test"] != "quality")]


def _machines(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["machine"]))


def _mode_key(modes: pd.Index) -> pd.Index:
    return modes.map(lambda m: MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER))


# ------------------------------------------------------------------------------------------ compare


def compare(frame: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Machines side by side: one row per (model, mode, test), one column per machine (median over runs) and
    for each other machine its ratio to the baseline (>1: faster; for TTFT, lower milliseconds are faster).
    A cell no machine measured stays empty (NaN) rather than dropping the row."""
    ok = _ok(frame)
    if ok.empty:
        if (frame["test"] == "quality").any():
            raise UsageError("no speed rows to compare: these files hold quality rows only",
                             hint="compare puts speed tests side by side; a quality row's figures are its "
                                  "kld_mean, kld_p99, same_top and ppl_ratio columns")
        raise UsageError("no measured rows to compare (every row failed or was skipped)")
    machines = _machines(ok)
    baseline = baseline or machines[0]
    if baseline not in machines:
        raise UsageError(f"no machine called {baseline!r} in these files", hint=f"machines: {', '.join(machines)}")
    table = ok.pivot_table(index=["model", "mode", "test"], columns="machine", values="value", aggfunc="median")
    table = table.reindex(columns=machines)
    for machine in machines:
        if machine == baseline:
            continue
        ratio = table[machine] / table[baseline]
        is_ttft = table.index.get_level_values("test") == "ttft"
        table[f"{machine} / {baseline}"] = ratio.where(~is_ttft, 1 / ratio)
    table = table.reset_index()
    return table.sort_values(["model", "mode", "test"], key=lambda c: _mode_key(pd.Index(c)) if c.name == "mode"
                             else c).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- report


@dataclass
class _Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    charts: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    charts: tuple[Path, ...]
    rows: int
    machines: tuple[str, ...]
    notes: tuple[str, ...] = ()  # lines of the inputs that were skipped, and why


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower() or "x"


def _save_chart(figure: Any, path: Path, section: _Section, **margins: float) -> None:
    """Fixed margins (tight_layout measures every label: slow on big reports) and fast zlib for flat colours."""
    import matplotlib.pyplot as plt

    figure.subplots_adjust(**margins)
    figure.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})
    plt.close(figure)
    section.charts.append(path)


def _speed_section(ok: pd.DataFrame, machine: str, out_dir: Path) -> _Section:
    import matplotlib.pyplot as plt

    section = _Section(f"{machine}: speed by model and device mode")
    rows = ok[ok["machine"] == machine]
    first = rows.iloc[0]
    section.text.append(f"{first['cpu_model']}, {first['n_cpu_physical']:.0f} cores, "
                        f"{first['ram_total_bytes'] / 2**30:.0f} GiB RAM; GPUs: {first['gpu_names'] or 'none'}; "
                        f"llama.cpp {first['llama_cpp_commit'] or '?'} ({first['backends'] or '?'})")
    table = rows.pivot_table(index="model", columns=["mode", "test"], values="value", aggfunc="median")
    table = table.sort_index(axis=1, key=lambda c: _mode_key(c) if c.name == "mode" else c)
    flat = table.copy()
    flat.columns = [f"{mode} {test}" + (" (ms)" if test == "ttft" else " (t/s)") for mode, test in table.columns]
    section.tables.append(("median of runs; t/s for pp and tg, milliseconds to first token for ttft",
                           flat.reset_index().round(1)))
    kinds = [k for k in ("tg", "pp") if rows["test"].str.startswith(k).any()]
    if kinds:
        figure, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.2), squeeze=False)
        for axis, kind in zip(axes[0], kinds, strict=True):
            subset = rows[rows["test"].str.startswith(kind)]
            bars = subset.pivot_table(index="model", columns="mode", values="value", aggfunc="median")
            bars = bars.reindex(columns=sorted(bars.columns, key=lambda m: _mode_key(pd.Index([m]))[0]))
            bars.plot.bar(ax=axis, rot=30, width=0.8, legend=False)
            axis.legend(title="mode", loc="upper left", fontsize=8)  # a fixed place: "best" searches every bar
            axis.set_title(f"{'generation' if kind == 'tg' else 'prompt processing'} ({kind}) on {machine}")
            axis.set_ylabel("tokens/s")
            axis.set_xlabel("")
            axis.tick_params(axis="x", labelsize=8)
            for label in axis.get_xticklabels():
                label.set_horizontalalignment("right")
        _save_chart(figure, out_dir / f"speed-{_slug(machine)}.png", section, left=0.07, right=0.98, top=0.9,
                    bottom=0.32, wspace=0.22)
    return section


def _bandwidth_columns(tg: pd.DataFrame) -> pd.DataFrame:
    """Bytes read per generated token, the effective bandwidth it implies, and its share of the physical limit."""
    host = tg["host_bytes_per_token"].fillna(0)
    gpu = tg["gpu_bytes_per_token"].fillna(0)
    total = (host + gpu).where(tg["host_bytes_per_token"].notna())
    seconds_at_full_speed = host / (tg["ram_bandwidth_gbps"] * GB) + (gpu / (tg["gpu_bandwidth_gbps"] * GB)).fillna(0)
    return pd.DataFrame({
        "bytes_per_token": total,
        "effective_gbps": tg["value"] * total / GB,
        "bandwidth_share": (tg["value"] * seconds_at_full_speed).where(
            total.notna() & tg["ram_bandwidth_gbps"].notna()),
    }, index=tg.index)


def _dense_moe_section(ok: pd.DataFrame, out_dir: Path) -> _Section | None:
    import matplotlib.pyplot as plt

    tg = ok[ok["test"].str.startswith("tg") & ~ok["test"].str.contains("@")]
    if tg.empty:
        return None
    tg = pd.concat([tg, _bandwidth_columns(tg)], axis=1)
    section = _Section("Dense vs MoE: why a 30B MoE decodes like a small dense model")
    section.text.append(
        "Decoding reads every weight a token touches once per token, so generation speed follows the bytes read "
        "per token, not the parameter count: an MoE model reads its attention and shared weights plus only the "
        "experts the router picks (Qwen3-30B-A3B: 8 of 128 per layer, about 3.3 B active parameters). Effective "
        "bandwidth = tg t/s x bytes per token; its share is how close the run came to the machine's measured RAM "
        "(and GPU) bandwidth.")
    grouped = tg.groupby(["machine", "model", "mode", "test"], sort=False).agg(
        is_moe=("is_moe", "first"),
        params_b=("model_n_params", "first"), active_b=("model_n_params_active", "first"),
        size_gb=("model_size", "first"), tg_ts=("value", "median"), bytes_per_token=("bytes_per_token", "median"),
        effective_gbps=("effective_gbps", "median"), bandwidth_share=("bandwidth_share", "median")).reset_index()
    grouped.insert(4, "kind", grouped.pop("is_moe").map({True: "MoE", False: "dense"}))
    grouped["params_b"] /= 1e9
    grouped["active_b"] /= 1e9
    grouped["size_gb"] /= GB
    grouped["mb_per_token"] = grouped.pop("bytes_per_token") / 1e6
    grouped["bandwidth_share"] *= 100
    for machine in grouped["machine"].unique():
        rows = grouped[grouped["machine"] == machine]
        for _, moe in rows[rows["kind"] == "MoE"].iterrows():
            dense = rows[(rows["kind"] == "dense") & (rows["mode"] == moe["mode"]) & (rows["test"] == moe["test"])]
            if dense.empty or pd.isna(moe["mb_per_token"]):
                continue
            near = dense.iloc[(dense["mb_per_token"] - moe["mb_per_token"]).abs().argsort().iloc[0]]
            section.text.append(
                f"On {machine} ({moe['mode']}, {moe['test']}): {moe['model']} has {moe['params_b']:.1f} B "
                f"parameters but reads "
                f"{moe['mb_per_token']:.0f} MB per token ({moe['active_b']:.1f} B active) and decodes at "
                f"{moe['tg_ts']:.1f} t/s; {near['model']} ({near['params_b']:.1f} B dense) reads "
                f"{near['mb_per_token']:.0f} MB and decodes at {near['tg_ts']:.1f} t/s.")
    columns = {"machine": "machine", "model": "model", "mode": "mode", "test": "test", "kind": "type",
               "params_b": "params (B)",
               "active_b": "active (B)", "size_gb": "tensors (GB)", "tg_ts": "tg t/s",
               "mb_per_token": "MB read / token", "effective_gbps": "effective GB/s",
               "bandwidth_share": "% of bandwidth"}
    section.tables.append(("generation (tg) per model: the median of runs",
                           grouped[list(columns)].rename(columns=columns).round(2)))
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    markers = {"dense": "o", "MoE": "^"}
    longest = grouped.groupby(["machine", "model", "mode"], sort=False)["test"].transform("last")
    for (machine, mode, kind), points in grouped[grouped["test"] == longest].groupby(["machine", "mode", "kind"],
                                                                                      sort=False):
        axis.scatter(points["active_b"], points["tg_ts"], marker=markers[kind], s=60,
                     label=f"{machine} {mode} ({kind})")
        for _, point in points.iterrows():
            axis.annotate(point["model"].split(" ")[0], (point["active_b"], point["tg_ts"]), fontsize=7,
                          xytext=(4, 3), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("parameters read per token (B, log scale; MoE: active only)")
    axis.set_ylabel("generation t/s")
    axis.set_title("generation speed against active parameters")
    axis.legend(fontsize=7, loc="upper right")
    _save_chart(figure, out_dir / "dense-vs-moe.png", section, left=0.1, right=0.97, top=0.92, bottom=0.12)
    return section


def _memory_section(frame: pd.DataFrame, out_dir: Path) -> _Section | None:
    import matplotlib.pyplot as plt

    host = frame["peak_rss_bytes"].notna() & frame["predicted_host_bytes"].notna()
    vram = frame["peak_vram_bytes"].notna() & frame["predicted_vram_bytes"].notna()
    runs = frame[(frame["status"] == "ok") & (host | vram)]
    runs = runs.drop_duplicates("run_id")
    if runs.empty:
        return None
    section = _Section("Predicted vs measured memory")
    section.text.append("The memory model's prediction (from the GGUF's tensor sizes, the KV cache and this "
                        "llama.cpp's buffers) against the kernel's peak resident set of the run, and NVML's VRAM.")
    table = runs.groupby(["machine", "model", "mode"], sort=False).agg(
        runs=("run_id", "count"), predicted_host_gib=("predicted_host_bytes", "median"),
        peak_rss_gib=("peak_rss_bytes", "median"), predicted_vram_gib=("predicted_vram_bytes", "median"),
        peak_vram_gib=("peak_vram_bytes", "median")).reset_index()
    for column in ("predicted_host_gib", "peak_rss_gib", "predicted_vram_gib", "peak_vram_gib"):
        table[column] /= 2**30
    table["host error %"] = (table["predicted_host_gib"] / table["peak_rss_gib"] - 1) * 100
    table = table.rename(columns={"predicted_host_gib": "predicted host GiB", "peak_rss_gib": "peak RSS GiB",
                                  "predicted_vram_gib": "predicted VRAM GiB", "peak_vram_gib": "peak VRAM GiB"})
    section.tables.append(("median of runs", table.round(2)))
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for machine, points in runs.groupby("machine", sort=False):
        axis.scatter(points["peak_rss_bytes"] / 2**30, points["predicted_host_bytes"] / 2**30, label=f"{machine} RAM",
                     s=25)
        if points["peak_vram_bytes"].notna().any():
            axis.scatter(points["peak_vram_bytes"] / 2**30, points["predicted_vram_bytes"] / 2**30, marker="s",
                         s=25, label=f"{machine} VRAM")
    top = max(runs[["peak_rss_bytes", "predicted_host_bytes", "peak_vram_bytes", "predicted_vram_bytes"]].max()
              .max(), 1) / 2**30 * 1.05
    axis.plot([0, top], [0, top], color="grey", linewidth=1, label="prediction = measurement")
    axis.set_xlabel("measured peak (GiB): RSS, or VRAM through NVML")
    axis.set_ylabel("predicted (GiB)")
    axis.set_title("memory: predicted against measured, per run")
    axis.legend(fontsize=7, loc="upper left")
    _save_chart(figure, out_dir / "memory.png", section, left=0.13, right=0.97, top=0.92, bottom=0.11)
    return section


_SPLIT_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$", re.IGNORECASE)


def _base_model(row: pd.Series) -> str:
    """The model a row's file is a quant of: its catalog key, else its file name less the split suffix and quant."""
    if row["model_key"]:
        return str(row["model_key"])
    stem = _SPLIT_SUFFIX.sub("", str(row["model_filename"]).removesuffix(".gguf"))
    if row["quant"]:
        stem = re.sub(rf"[-_.]{re.escape(str(row['quant']))}$", "", stem, flags=re.IGNORECASE)
    return stem


def _file_keys(rows: pd.DataFrame) -> pd.Series:
    # the same file whatever command measured it: bench and quality fetch the same bytes and hash them
    return rows["model_sha256"].where(rows["model_sha256"] != "", rows["model"])


def _speed_of(rows: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per (machine, model, weights, mode, file): the median t/s of one `kind` test (tg or pp) without depth, the
    test the group measured for the most files (ties: the first name), so every quant of a group is timed alike."""
    tests = rows[rows["test"].str.startswith(kind) & ~rows["test"].str.contains("@")]
    if tests.empty:
        return pd.DataFrame(columns=["machine", "base", "weights", "mode", "file", f"{kind}_test", f"{kind}_ts"])
    medians = tests.groupby(["machine", "base", "weights", "mode", "file", "test"], sort=False)["value"].median()
    medians = medians.reset_index()
    coverage = medians.groupby(["machine", "base", "weights", "mode", "test"])["file"].transform("nunique")
    medians = medians.assign(coverage=coverage).sort_values(["coverage", "test"], ascending=[False, True])
    chosen = medians.drop_duplicates(["machine", "base", "weights", "mode"])[
        ["machine", "base", "weights", "mode", "test"]]
    picked = medians.merge(chosen, on=["machine", "base", "weights", "mode", "test"])
    return picked.rename(columns={"test": f"{kind}_test", "value": f"{kind}_ts"}).drop(columns="coverage")


def speed_quality(frame: pd.DataFrame) -> pd.DataFrame:
    """Each quant with both a speed and a quality measurement, one row per (machine, model, weights, quality
    setting, mode, file): generation and prompt t/s (median of runs), mean KLD, tensor bytes, and whether it is on
    that group's Pareto front and its knee (qwenbench.tradeoff: generation speed against mean KLD). A file's KLD
    is the file's wherever it was scored; of several scorings with the same reference, corpus and context, the
    latest counts. Empty where no file has both."""
    from .tradeoff import TradeoffPoint, tradeoff

    columns = ["machine", "model", "weights", "setting", "mode", "quant", "tg_test", "tg_ts", "pp_test", "pp_ts",
               "kld_mean", "size_gb", "front", "knee"]
    quality = frame[(frame["test"] == "quality") & (frame["status"] == "ok") & frame["kld_mean"].notna()]
    speed = _ok(frame)
    speed = speed[speed["test"].str.match(r"^(tg|pp)\d")]
    if quality.empty or speed.empty:
        return pd.DataFrame(columns=columns)
    quality = quality.assign(file=_file_keys(quality), base=quality.apply(_base_model, axis=1))
    quality = quality.assign(setting=("against " + quality["ref_quant"].where(quality["ref_quant"] != "",
                                                                             quality["ref_sha256"].str[:8])
                                      + " on " + quality["corpus"] + ", ctx "
                                      + quality["n_ctx"].map(lambda n: f"{n:.0f}")))
    quality = quality.sort_values("test_time").drop_duplicates(
        ["file", "ref_sha256", "corpus_sha256", "n_ctx"], keep="last")[["file", "setting", "kld_mean"]]
    speed = speed.assign(file=_file_keys(speed), base=speed.apply(_base_model, axis=1))
    files = speed.drop_duplicates(["machine", "mode", "file"])[["machine", "mode", "file", "quant", "model_filename",
                                                                "model_size"]]
    tg, pp = _speed_of(speed, "tg"), _speed_of(speed, "pp")
    keys = ["machine", "base", "weights", "mode", "file"]
    joined = tg.merge(pp, on=keys, how="left").merge(files, on=["machine", "mode", "file"]).merge(quality, on="file")
    if joined.empty:
        return pd.DataFrame(columns=columns)
    joined = joined.assign(quant=joined["quant"].where(joined["quant"] != "", joined["model_filename"]),
                           size_gb=joined["model_size"] / GB, front=False, knee=False)
    for _, group in joined.groupby(["machine", "base", "weights", "setting", "mode"], sort=False):
        points = [TradeoffPoint(str(index), float(row["tg_ts"]), float(row["kld_mean"]))
                  for index, row in group.iterrows()]
        result = tradeoff(points)
        joined.loc[[int(p.name) for p in result.front], "front"] = True
        if result.knee is not None:
            joined.loc[int(result.knee.name), "knee"] = True
    joined = joined.rename(columns={"base": "model"})
    joined = joined.sort_values(["machine", "model", "weights", "setting", "mode", "kld_mean", "tg_ts"],
                                key=lambda c: _mode_key(pd.Index(c)) if c.name == "mode" else c,
                                ascending=[True, True, True, True, True, True, False], kind="stable")
    return joined[columns].reset_index(drop=True)


def _speed_quality_section(frame: pd.DataFrame, out_dir: Path) -> _Section | None:
    import matplotlib.pyplot as plt

    scored = frame[(frame["test"] == "quality") & (frame["status"] == "ok") & frame["kld_mean"].notna()]
    if scored.empty:
        return None
    section = _Section("Speed against quality", [
        "What each quant costs in quality for what it gains in speed: generation t/s (and prompt t/s, for the "
        "record) beside the mean KL divergence of its next-token distributions from the reference's (`qwenbench "
        "quality`), per model, machine and device mode. The Pareto front holds the quants no other quant beats on "
        "both generation speed and mean KLD: the only ones worth running. The knee is the front's point farthest "
        "from the straight line joining its ends (its best-quality and its fastest quant), with speed and KLD each "
        "scaled to the front's range: the quant that buys the largest share of the speed for the smallest share of "
        "the quality loss (the Kneedle rule at its simplest). KLD stays linear: it is already an average cost in "
        "nats per token, and on a log scale the near-zero KLDs of F32, BF16 and F16 (kernel rounding, the "
        "reference's own 0) would weigh as much as the step from Q4_K_M to Q3_K_M. The knee depends on the ends: "
        "a ladder that goes on to Q2_K bends lower. A front of fewer than three quants has none."])
    table = speed_quality(frame)
    if table.empty:
        models = ", ".join(dict.fromkeys(scored["model"]))
        section.text.append(f"Quality rows ({models}) but no speed rows of the same files: measure their speed "
                            "with `qwenbench bench` (configs/precision.toml for the precision ladder) or "
                            "`qwenbench run`, into the same CSV.")
        return section
    groups = table.groupby(["machine", "model", "weights", "setting"], sort=False)
    for number, ((machine, model, weights, setting), rows) in enumerate(groups):
        label = f"{model}{' (synthetic)' if weights == 'synthetic' else ''}"
        for mode, points in rows.groupby("mode", sort=False):
            front = points[points["front"]]
            knee = points[points["knee"]]
            words = f"On {machine} ({mode}), {label} {setting}: the front is {', '.join(front['quant'])}"
            if not knee.empty:
                point, best = knee.iloc[0], front.iloc[0]
                words += (f"; the knee is {point['quant']}, {point['tg_ts']:.1f} t/s "
                          f"({point['tg_ts'] / best['tg_ts']:.1f}x {best['quant']}'s) at mean KLD "
                          f"{point['kld_mean']:.4g}")
            section.text.append(words + ".")
        shown = rows.assign(front=rows["front"].map({True: "yes", False: ""}).where(~rows["knee"], "knee"))
        tests = ", ".join(dict.fromkeys([*rows["tg_test"], *rows["pp_test"].dropna()]))
        # KLDs span decades (1e-06 to 0.1): significant digits, not the tables' two decimals
        shown = shown.assign(kld_mean=shown["kld_mean"].map(lambda v: f"{v:.4g}"))
        shown = shown[["mode", "quant", "tg_ts", "pp_ts", "kld_mean", "size_gb", "front"]].rename(columns={
            "tg_ts": "tg t/s", "pp_ts": "pp t/s", "kld_mean": "mean KLD", "size_gb": "tensors (GB)",
            "front": "Pareto front"})
        section.tables.append((f"{machine}: {label}, {setting}; {tests}, median of runs", shown))
        figure, axis = plt.subplots(figsize=(7.5, 4.8))
        for mode, points in rows.groupby("mode", sort=False):
            dots = axis.scatter(points["kld_mean"], points["tg_ts"], s=30, label=f"{mode}")
            front = points[points["front"]].sort_values("tg_ts")
            axis.plot(front["kld_mean"], front["tg_ts"], color=dots.get_facecolor()[0], linewidth=1)
            knee = points[points["knee"]]
            axis.scatter(knee["kld_mean"], knee["tg_ts"], marker="*", s=220, color=dots.get_facecolor()[0],
                         edgecolors="black", linewidths=0.6, zorder=3)
            for _, point in points.iterrows():
                axis.annotate(point["quant"], (point["kld_mean"], point["tg_ts"]), fontsize=7, xytext=(4, 3),
                              textcoords="offset points")
        positive = rows.loc[rows["kld_mean"] > 0, "kld_mean"]
        # symlog: the reference scored against itself sits at 0, the quants spread over decades above it
        axis.set_xscale("symlog", linthresh=float(positive.min()) if not positive.empty else 1e-6)
        axis.set_xlabel("mean KLD from the reference (nats/token; symlog: linear below the smallest)")
        axis.set_ylabel("generation t/s")
        axis.set_title(f"speed against quality: {label} on {machine} (★ knee, line: Pareto front)", fontsize=10)
        axis.legend(title="mode", fontsize=8, loc="upper left")  # speed rises with KLD: that corner stays empty
        _save_chart(figure, out_dir / f"speed-quality-{_slug(machine)}-{_slug(model)}-{number}.png", section,
                    left=0.1, right=0.97, top=0.92, bottom=0.12)
    return section


def _link_words(links: str) -> str:
    """A row's links (schema 7 JSON) in words: each worker's endpoint, round trip and upload rate."""
    try:
        parsed = json.loads(links) if links else []
    except ValueError:
        return ""
    return "; ".join(f"{link.get('endpoint', '?')} {link.get('rtt_ms', 0):.2f} ms {link.get('upload_mbps', 0):.0f} MB/s"
                     for link in parsed if isinstance(link, dict))


def network_shares(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs split over RPC workers, one row per (machine, model, mode, test): the measured speed, its ratio to the
    same machine, model and test on its CPU alone where the files hold one, the network's milliseconds the speed
    model gives the test (schema 8: per token for pp and tg, per request for ttft) and their share of the
    measured time."""
    ok = _ok(frame)
    split = ok[ok["topology"] != ""]
    if split.empty:
        return pd.DataFrame()
    split = split.assign(links=split["links"].map(_link_words))
    is_ttft = split["test"] == "ttft"
    measured_ms = (1e3 / split["value"]).where(~is_ttft, split["value"])
    split = split.assign(network_share=(split["predicted_network_ms"] / measured_ms).clip(upper=1.0))
    table = split.groupby(["machine", "model", "mode", "test"], sort=False).agg(
        value=("value", "median"), links=("links", "first"), network_ms=("predicted_network_ms", "median"),
        network_share=("network_share", "median")).reset_index()
    alone = ok[ok["mode"] == "cpu"].groupby(
        ["machine", "model", "test"])["value"].median()
    keys = pd.MultiIndex.from_frame(table[["machine", "model", "test"]])
    ratio = table["value"].to_numpy() / alone.reindex(keys).to_numpy()
    table.insert(5, "vs CPU alone", pd.Series(ratio, index=table.index).where(table["test"] != "ttft", 1 / ratio))
    return table.rename(columns={"value": "t/s (ttft: ms)", "network_ms": "network ms (predicted)",
                                 "network_share": "network share"})


def _split_section(frame: pd.DataFrame) -> _Section | None:
    table = network_shares(frame)
    if table.empty:
        return None
    section = _Section("Runs split across machines", [
        "Runs whose layers went to RPC workers (`--rpc`), beside the same model on the machine's CPU alone "
        "(>1: the split is faster). The network's milliseconds are the speed model's, over each link as the "
        "pre-flight check measured it (round trip, upload MB/s): a round trip each time the work leaves a "
        "worker, the hidden state at each boundary, the logits from the output's device. Its share is of the "
        "measured time per token (per request for ttft)."])
    shown = table.copy()
    shown["network share"] = shown["network share"].map(lambda v: f"{v:.0%}" if pd.notna(v) else "")
    shown["vs CPU alone"] = shown["vs CPU alone"].map(lambda v: f"{v:.2f}x" if pd.notna(v) else "")
    section.tables.append(("median of runs per test; the links as each run's pre-flight check measured them", shown))
    return section


def _failures_section(frame: pd.DataFrame) -> _Section | None:
    failed = frame[frame["status"] != "ok"]
    if failed.empty:
        return None
    section = _Section("Failed and skipped jobs")
    table = failed.groupby(["machine", "model", "mode", "status", "error"], sort=False).agg(
        tests=("test", lambda s: ", ".join(dict.fromkeys(s))), rows=("test", "count")).reset_index()
    section.tables.append(("every row that has no measurement, with the reason", table))
    return section


def prediction_errors(frame: pd.DataFrame) -> pd.DataFrame:
    """How far the speed model was off on each machine, per test kind: predicted / measured - 1 (t/s for pp and
    tg, ms for TTFT), over the rows that carry a prediction (schema 6+, machines that were calibrated)."""
    ok = _ok(frame)
    kinds = ok["test"].str.extract(r"^(pp|tg|ttft)", expand=False)
    predicted = ok["predicted_pp_ts"].where(kinds == "pp", ok["predicted_tg_ts"].where(kinds == "tg",
                                                                                         ok["predicted_ttft_ms"]))
    rows = ok.assign(kind=kinds.where(~ok["test"].str.contains(" @ d"), kinds + " at depth"),
                     error=predicted / ok["value"] - 1).dropna(subset=["error"])
    if rows.empty:
        return pd.DataFrame(columns=["machine", "kind", "rows", "median error", "median |error|", "worst"])
    rows = rows.assign(abs_error=rows["error"].abs())
    table = rows.groupby(["machine", "kind"], sort=False).agg(
        rows=("error", "count"), median_error=("error", "median"), median_abs=("abs_error", "median"),
        worst=("error", lambda e: e.loc[e.abs().idxmax()])).reset_index()
    return table.rename(columns={"median_error": "median error", "median_abs": "median |error|"})


def _prediction_section(frame: pd.DataFrame) -> _Section | None:
    table = prediction_errors(frame)
    if table.empty:
        return None
    section = _Section("How far to trust a plan", [
        "The speed model's prediction against the measurement, per machine: predicted / measured - 1 (positive: "
        "predicted too fast). Rows carry a prediction where the machine was calibrated (`qwenbench calibrate`)."])
    shown = table.copy()
    for column in ("median error", "median |error|", "worst"):
        shown[column] = shown[column].map(lambda e: f"{e:+.1%}")
    section.tables.append(("prediction error by machine and test", shown))
    return section


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3g}"


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Numbers as text a reader takes in at a glance (1,234 t/s; 0.85; 3.00), missing cells as a dash."""
    shown = table.astype(object).copy()
    for column in table.columns:
        if pd.api.types.is_float_dtype(table[column]):
            shown[column] = table[column].map(lambda v: "—" if pd.isna(v) else _number(v))
    return shown


def markdown_table(table: pd.DataFrame) -> str:
    return _formatted(table).to_markdown(index=False, disable_numparse=True, colalign=[
        "right" if pd.api.types.is_numeric_dtype(table[c]) else "left" for c in table.columns])


def _markdown(section: _Section, out_dir: Path) -> str:
    parts = [f"## {section.title}", *section.text]
    for caption, table in section.tables:
        parts += [f"*{caption}*", markdown_table(table)]
    parts += [f"![{chart.stem}]({chart.relative_to(out_dir)})" for chart in section.charts]
    return "\n\n".join(parts)


def _html(section: _Section) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>", *(f"<p>{html.escape(t)}</p>" for t in section.text)]
    for caption, table in section.tables:
        parts.append(f"<p class='caption'>{html.escape(caption)}</p>"
                     + _formatted(table).to_html(index=False, border=0))
    for chart in section.charts:
        data = base64.b64encode(chart.read_bytes()).decode()
        parts.append(f"<img alt='{html.escape(chart.stem)}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1.5em}th,td{padding:0.25em 0.6em;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#f7f7f7}
img{max-width:100%;margin:0.5em 0 1.5em}.caption{color:#666;font-style:italic;margin-bottom:0}
.synthetic{background:#fff4d6;padding:0.6em;border-left:4px solid #e0a800}"""


def write_report(paths: list[Path], out_dir: Path) -> ReportFiles:
    """report.md and a self-contained report.html (charts inlined) plus the charts as PNG files in out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    frame = load_results(paths)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot make the report folder {out_dir}: {exc.strerror or exc}",
                         hint="give --out a folder that can be created") from None
    ok = _ok(frame)
    machines = _machines(frame)
    sections = [_speed_section(ok, machine, out_dir) for machine in _machines(ok)]
    sections += [s for s in (_dense_moe_section(ok, out_dir), _speed_quality_section(frame, out_dir),
                             _memory_section(frame, out_dir),
                             _split_section(frame), _prediction_section(frame), _failures_section(frame))
                 if s is not None]
    title = f"qwenbench report: {len(machines)} machine{'s' * (len(machines) != 1)}, {len(frame)} rows"
    sources = ", ".join(dict.fromkeys(frame["source"]))
    notice = ("Rows marked (synthetic) measured synthetic weights: the real file's tensors and types with random "
              "values, so their speed is the real model's and their text is noise."
              if (frame["weights"] == "synthetic").any() else "")
    markdown = [f"# {title}", f"From {sources}.", *([f"> {notice}"] if notice else []),
                *(_markdown(s, out_dir) for s in sections)]
    report_md = out_dir / "report.md"
    report_md.write_text("\n\n".join(markdown) + "\n", encoding="utf-8")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>From {html.escape(sources)}.</p>",
            *([f"<p class='synthetic'>{html.escape(notice)}</p>"] if notice else []), *(_html(s) for s in sections)]
    report_html = out_dir / "report.html"
    report_html.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                           f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n",
                           encoding="utf-8")
    charts = tuple(chart for s in sections for chart in s.charts)
    return ReportFiles(report_md, report_html, charts, len(frame), tuple(machines), tuple(frame.attrs["notes"]))
