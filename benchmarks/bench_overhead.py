"""The bench harness's own overhead: a suite's wall time against the time its jobs spent inside llama.cpp
calls (model load, context creation, decodes, synchronizes, tokenizing), as reported by each child.

    python benchmarks/bench_overhead.py [--config configs/quick.toml] [--out /tmp/overhead.csv]

Runs the suite with synthetic twins (written first, so their writing is not counted) exactly as
`qwenbench bench --synthetic` does; the overhead is everything else: process starts, Python imports, planning,
hashing, random token generation, event parsing, CSV appends. Goal: under 5% of the wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenbench.bench import expand_jobs, run_suite
from qwenbench.catalog import get_model
from qwenbench.config import load_config
from qwenbench.machine import describe_machine
from qwenbench.modelfile import ensure_synthetic, file_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/quick.toml"))
    parser.add_argument("--out", type=Path, default=None, help="results CSV (default: a temporary file)")
    args = parser.parse_args()
    config = load_config(args.config)
    jobs = expand_jobs(config, synthetic=True)
    for entry in config.models:  # the synthetic files and their hashes exist before the clock starts
        path, _ = ensure_synthetic(get_model(entry.key), entry.quant)
        file_sha256(path)
    machine = describe_machine(bandwidth=True)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "overhead.csv"
        start = time.perf_counter()
        result = run_suite(config, jobs, machine, out_csv=out)
        wall = time.perf_counter() - start
    llama = sum(o.llama_ns for o in result.outcomes) / 1e9
    print(f"{config.name}: {len(jobs)} jobs ({result.count('ok')} ok, {result.count('skipped')} skipped) "
          f"in {wall:.1f} s on {machine.cpu_model} ({machine.n_cpu_physical} cores)")
    for outcome in result.outcomes:
        inside = outcome.llama_ns / 1e9
        print(f"  {outcome.job.label:40s} {outcome.status:8s} wall {outcome.wall_s:7.2f} s, "
              f"inside llama.cpp {inside:7.2f} s, outside {outcome.wall_s - inside:5.2f} s")
    print(f"inside llama.cpp: {llama:.1f} s; harness overhead {wall - llama:.1f} s = {(wall - llama) / wall:.1%} "
          f"of the wall time")


if __name__ == "__main__":
    main()
