"""What RPC costs per token, predicted against measured: a model on this CPU, on one loopback worker and on two,
each worker reached directly and through emulated links (linkproxy.py: a one-way delay and a line rate).

The measured network cost of a link is the time per token it adds over the same topology reached directly
(1/tg through the link - 1/tg direct, the same for pp per prompt token); the predicted one is the same
difference of the speed model's figures, which rest on what qwenbench's endpoint probe measured of each link.
Topologies and links are interleaved, --passes times, so the drift of a shared machine falls on all alike.

    python benchmarks/rpc_network.py --gguf /tmp/qwen3-0.6b-Q4_K_M.gguf [-p 512 -n 64 -r 3] [--passes 2]
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

from qwenbench.rpc import Endpoint
from qwenbench.rpcworker import Worker
from qwenbench.serve import free_port

LINKS = {"loopback": None, "lan": (0.25, 1000.0), "wifi": (1.5, 200.0)}  # one-way ms, Mbit/s


def _measure(gguf: Path, flags: list[str], args: argparse.Namespace, out: Path) -> dict[str, float]:
    qwenbench = Path(sys.executable).parent / "qwenbench"
    argv = [str(qwenbench), "run", "--gguf", str(gguf), "-p", str(args.p), "-n", str(args.n), "-r", str(args.r),
            "--no-ttft", "--no-calibrate", "--json", "--out", str(out), *flags]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    figures = {}
    for row in json.loads(done.stdout)["rows"]:
        kind = "pp" if row["test"].startswith("pp") else "tg"
        figures[kind] = row["avg_ts"]
        figures["predicted_" + kind] = row[f"predicted_{kind}_ts"]
    return figures


def start_workers(stack: ExitStack, scratch: Path, threads: int, count: int = 2) -> list[Worker]:
    """`count` RPC workers on loopback, each logging under scratch, stopped when the stack closes."""
    logs = [stack.enter_context((scratch / f"worker{i}.log").open("wb")) for i in range(count)]
    workers = [Worker(Endpoint("127.0.0.1", free_port()), threads, log) for log in logs]
    for worker in workers:
        worker.start()
        stack.callback(worker.stop)
    return workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("-r", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="each worker's threads")
    parser.add_argument("--links", default=",".join(LINKS), help=f"of {', '.join(LINKS)}")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    links = args.links.split(",")
    results: dict[str, list[dict[str, float]]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        workers = start_workers(stack, Path(scratch), args.threads)
        addresses: dict[str, list[str]] = {}
        for name in links:
            if LINKS[name] is None:
                addresses[name] = [w.endpoint.address for w in workers]
                continue
            one_way_ms, mbit_s = LINKS[name]
            proxies = [stack.enter_context(LinkProxy((w.endpoint.host, w.endpoint.port), one_way_ms, mbit_s))
                       for w in workers]
            addresses[name] = [p.address for p in proxies]
        configs = {"local": ["-ngl", "0"]}
        for name in links:
            configs[f"1 worker, {name}"] = ["-ngl", "99", "--rpc", addresses[name][0]]
            configs[f"2 workers, {name}"] = ["-ngl", "99", "--rpc", ",".join(addresses[name])]
        csv = Path(scratch) / "rows.csv"
        for number in range(args.passes):
            for label, flags in configs.items():
                figures = _measure(args.gguf, flags, args, csv)
                results.setdefault(label, []).append(figures)
                print(f"pass {number + 1} {label}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()),
                      file=sys.stderr, flush=True)
    summary = _summarize(results, links)
    print(f"{'configuration':<22} {'tg':>6} {'pred':>6} {'spread':>7} {'pp':>7} {'pred':>7}  "
          f"{'net ms/token: measured':>22} {'predicted':>9}")
    for label, row in summary.items():
        net = row.get("network_ms")
        print(f"{label:<22} {row['tg']:6.1f} {row['predicted_tg']:6.1f} {row['tg_spread']:6.0%} "
              f"{row['pp']:7.1f} {row['predicted_pp']:7.1f}  "
              + (f"{net[0]:22.2f} {net[1]:9.2f}" if net else ""))
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"gguf": str(args.gguf), "json_out": None},
                                             "runs": results, "summary": summary}, indent=1))


def _summarize(results: dict[str, list[dict[str, float]]], links: list[str]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for label, runs in results.items():
        row: dict = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        tgs = [r["tg"] for r in runs]
        row["tg_spread"] = (max(tgs) - min(tgs)) / statistics.median(tgs)
        summary[label] = row
    for label, row in summary.items():
        topology, _, link = label.partition(", ")
        direct = summary.get(f"{topology}, loopback")
        if link and link != "loopback" and direct:
            row["network_ms"] = (1e3 * (1 / row["tg"] - 1 / direct["tg"]),
                                 1e3 * (1 / row["predicted_tg"] - 1 / direct["predicted_tg"]))
    return summary


if __name__ == "__main__":
    main()
