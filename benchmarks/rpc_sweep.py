"""The planner's placement on a two-worker topology against the best of a sweep: `qwenbench run` with nothing
pinned (the plan chooses -ngl, --n-cpu-moe and the tensor split) beside runs that pin each point of a sweep of
-ngl, tensor splits over the two workers (and one alone) and, for an MoE model, --n-cpu-moe. Goal: the plan's tg
within 3 % of the sweep's best.

The workers run on this machine (loopback, or through linkproxy.py's emulated link with --link); configurations
are interleaved, --passes times, so the drift of a shared machine falls on all alike; each keeps its median.
Calibrate first (`qwenbench calibrate`): the plan ranks placements by the speed model.

    python benchmarks/rpc_sweep.py --gguf /tmp/qwen3-0.6b-Q4_K_M.gguf [-n 64 -r 3] [--passes 2] [--link lan]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from linkproxy import LinkProxy
from rpc_network import LINKS, start_workers

from qwenbench.gguf_info import read_model_header


def _run(gguf: Path, flags: list[str], args: argparse.Namespace, out: Path) -> dict:
    qwenbench = Path(sys.executable).parent / "qwenbench"
    argv = [str(qwenbench), "run", "--gguf", str(gguf), "-p", "0", "-n", str(args.n), "-r", str(args.r),
            "--no-ttft", "--no-calibrate", "--json", "--out", str(out), *flags]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    [row] = json.loads(done.stdout)["rows"]
    placed = {d["name"]: d["model_bytes"] for d in json.loads(row["devices"] or "[]")}
    return {"tg": row["avg_ts"], "predicted_tg": row["predicted_tg_ts"], "n_gpu_layers": row["n_gpu_layers"],
            "n_cpu_moe": row["n_cpu_moe"], "device_mib": {name: round(b / 2**20) for name, b in placed.items()}}


def sweep(n_layer: int, is_moe: bool, both: str, first: str) -> dict[str, list[str]]:
    """The pinned configurations: the CPU alone, half and all the layers on one worker and on both (even and
    uneven splits), and for MoE all layers on the workers with the experts of half or all of them kept here."""
    configs = {"cpu alone": ["-ngl", "0"]}
    half = str(n_layer // 2)
    configs[f"1 worker, ngl {half}"] = ["-ngl", half, "--rpc", first]
    configs["1 worker, ngl all"] = ["-ngl", "99", "--rpc", first]
    configs[f"2 workers 1:1, ngl {half}"] = ["-ngl", half, "--rpc", both, "-ts", "1,1"]
    configs["2 workers 1:1, ngl all"] = ["-ngl", "99", "--rpc", both, "-ts", "1,1"]
    configs["2 workers 3:1, ngl all"] = ["-ngl", "99", "--rpc", both, "-ts", "3,1"]
    if is_moe:
        configs[f"2 workers 1:1, ngl all, cpu-moe {half}"] = ["-ngl", "99", "-ncmoe", half, "--rpc", both,
                                                                "-ts", "1,1"]
        configs["2 workers 1:1, ngl all, cpu-moe all"] = ["-ngl", "99", "-ncmoe", str(n_layer), "--rpc", both,
                                                          "-ts", "1,1"]
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("-r", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="each worker's threads")
    parser.add_argument("--link", default="loopback", choices=list(LINKS))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    shape = read_model_header(args.gguf).shape()
    results: dict[str, list[dict]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        workers = start_workers(stack, Path(scratch), args.threads)
        addresses = [w.endpoint.address for w in workers]
        if LINKS[args.link] is not None:
            one_way_ms, mbit_s = LINKS[args.link]
            addresses = [stack.enter_context(LinkProxy((w.endpoint.host, w.endpoint.port), one_way_ms, mbit_s))
                         .address for w in workers]
        both = ",".join(addresses)
        configs = {"the plan's": ["--rpc", both], **sweep(shape.n_layer, shape.is_moe, both, addresses[0])}
        csv = Path(scratch) / "rows.csv"
        for number in range(args.passes):
            for label, flags in configs.items():
                figures = _run(args.gguf, flags, args, csv)
                results.setdefault(label, []).append(figures)
                print(f"pass {number + 1} {label}: tg {figures['tg']:.2f} (predicted {figures['predicted_tg']:.2f}), "
                      f"ngl {figures['n_gpu_layers']}, cpu-moe {figures['n_cpu_moe']}, {figures['device_mib']}",
                      file=sys.stderr, flush=True)
    summary = {label: {"tg": statistics.median(r["tg"] for r in runs),
                       "predicted_tg": statistics.median(r["predicted_tg"] for r in runs),
                       "spread": (max(r["tg"] for r in runs) - min(r["tg"] for r in runs))
                       / statistics.median(r["tg"] for r in runs),
                       "placement": {k: runs[-1][k] for k in ("n_gpu_layers", "n_cpu_moe", "device_mib")}}
               for label, runs in results.items()}
    swept = {label: row for label, row in summary.items() if label != "the plan's"}
    best = max(swept, key=lambda label: swept[label]["tg"])
    print(f"{'configuration':<40} {'tg':>7} {'pred':>7} {'spread':>7}  placement")
    for label, row in summary.items():
        print(f"{label:<40} {row['tg']:7.2f} {row['predicted_tg']:7.2f} {row['spread']:6.0%}  {row['placement']}")
    plan = summary["the plan's"]
    print(f"the plan's tg / the sweep's best ({best}): {plan['tg'] / swept[best]['tg']:.3f}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"gguf": str(args.gguf), "json_out": None},
                                             "runs": results, "summary": summary, "best": best}, indent=1))


if __name__ == "__main__":
    main()
