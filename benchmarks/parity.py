"""Interleaved parity check: qwenbench vs llama.cpp's llama-bench on the same file, threads and tests.

    python benchmarks/parity.py --llama-bench /path/to/llama-bench --gguf model.gguf --rounds 6

Each round runs the tools A-B-B-A (the order flips between rounds), so drift and thermal
state hit both alike, and prints qwenbench/llama-bench for every test. llama-bench is not
part of qwenbench: build it from the llama.cpp source vendored in the llama-cpp-python sdist.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def llama_bench(binary: str, gguf: str, threads: int, reps: int, n_prompt: int, n_gen: int) -> dict[str, float]:
    out = subprocess.run([binary, "-m", gguf, "-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps),
                          "-t", str(threads), "-o", "json"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    return {(f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"): r["avg_ts"] for r in rows}


def qwenbench(gguf: str, threads: int, reps: int, n_prompt: int, n_gen: int, csv: Path) -> dict[str, float]:
    qwenbench_bin = str(Path(sys.executable).with_name("qwenbench"))
    out = subprocess.run([qwenbench_bin, "run", "--gguf", gguf, "-p", str(n_prompt), "-n", str(n_gen),
                          "-r", str(reps), "-t", str(threads), "--no-ttft", "--json", "--out", str(csv)],
                         capture_output=True, text=True, check=True).stdout
    return {row["test"]: row["avg_ts"] for row in json.loads(out)["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-bench", required=True)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        csv = Path(scratch) / "parity.csv"
        for round_index in range(args.rounds):
            tools = {"llama-bench": lambda: llama_bench(args.llama_bench, args.gguf, args.threads, args.reps,
                                                        args.n_prompt, args.n_gen),
                     "qwenbench": lambda: qwenbench(args.gguf, args.threads, args.reps, args.n_prompt,
                                                    args.n_gen, csv)}
            # A-B-B-A: a linear drift (turbo budget, a neighbour's load) cancels out of each round's ratio
            order = ["llama-bench", "qwenbench", "qwenbench", "llama-bench"]
            if round_index % 2:
                order.reverse()
            runs: dict[str, list[dict[str, float]]] = {"llama-bench": [], "qwenbench": []}
            for name in order:
                runs[name].append(tools[name]())
            for test in runs["llama-bench"][0]:
                reference = statistics.fmean(r[test] for r in runs["llama-bench"])
                measured = statistics.fmean(r[test] for r in runs["qwenbench"])
                ratio = measured / reference
                ratios.setdefault(test, []).append(ratio)
                print(f"round {round_index + 1} {test}: llama-bench {reference:8.2f} t/s  "
                      f"qwenbench {measured:8.2f} t/s  ratio {ratio:.3f}", flush=True)
    for test, values in ratios.items():
        print(f"{test}: median ratio {statistics.median(values):.3f}, geometric mean "
              f"{statistics.geometric_mean(values):.3f}, range {min(values):.3f}-{max(values):.3f} "
              f"over {len(values)} interleaved rounds")


if __name__ == "__main__":
    main()
