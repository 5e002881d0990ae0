"""How far to trust a plan on a machine: predicted against measured speed for models that never ran here.

On the current cache (use a fresh QWENBENCH_CACHE_DIR to start from nothing): calibrate (timed), then for each
model write its synthetic twin (the catalog's recipe), predict tg, pp and TTFT from the calibration alone, and
measure them with `qwenbench run`, one model at a time. Prints a table and the calibration's figures.

    QWENBENCH_CACHE_DIR=$(mktemp -d) python benchmarks/prediction.py \\
        --models qwen3-4b:Q4_K_M qwen3-8b:Q4_K_M qwen3-30b-a3b:Q3_K_L qwen3-30b-a3b:Q4_K_M [-n 128] [-r 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from qwenbench.calibrate import calibrate, calibration_key, load_speed_calibration
from qwenbench.catalog import get_model
from qwenbench.fit import RunConfig
from qwenbench.machine import describe_machine
from qwenbench.modelfile import ensure_synthetic
from qwenbench.recipe import tensor_table
from qwenbench.speed import predict_speed


def _measure(path: Path, n_prompt: int, n_gen: int, depth: int, repetitions: int, threads: int) -> dict[str, float]:
    qwenbench = Path(sys.executable).parent / "qwenbench"
    argv = [str(qwenbench), "run", "--gguf", str(path), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(repetitions),
            "-t", str(threads), "--json", "--out", str(Path(path).with_suffix(".prediction.csv"))]
    if depth:
        argv += ["-d", f"0,{depth}"]
    rows = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)["rows"]
    return {r["test"]: (r["ttft_ms"] if r["test"] == "ttft" else r["avg_ts"]) for r in rows if r["status"] == "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["qwen3-4b:Q4_K_M", "qwen3-8b:Q4_K_M",
                                                       "qwen3-30b-a3b:Q3_K_L", "qwen3-30b-a3b:Q4_K_M"])
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-d", type=int, default=4096, help="also tg at this depth (0: not)")
    parser.add_argument("-r", type=int, default=3)
    args = parser.parse_args()
    machine = describe_machine()
    threads = machine.n_cpu_physical
    print(f"machine: {machine.cpu_model}, {threads} cores, features {' '.join(machine.hardware.cpu.features)}")
    calibration, _ = load_speed_calibration(calibration_key(machine, threads))
    if calibration is None:
        start = time.monotonic()
        calibration = calibrate(machine, threads)
        print(f"calibrated in {time.monotonic() - start:.0f} s (rounds disagree by {calibration.spread:.0%})")
    else:
        print(f"calibration cached from {calibration.measured_at} ({calibration.wall_s:.0f} s)")
    header = ["model", "test", "predicted", "measured", "error"]
    print(" | ".join(header))
    for item in args.models:
        key, quant = item.split(":")
        spec = get_model(key)
        path, _ = ensure_synthetic(spec, quant)
        table = tensor_table(spec, quant)
        measured = _measure(path, args.p, args.n, args.d, args.r, threads)
        config = RunConfig(n_ctx=args.p + args.n + args.d)
        base = predict_speed(table, spec.shape(), config, calibration)
        predicted = {f"pp{args.p}": base.pp_ts, f"tg{args.n}": base.tg_ts, "ttft": base.ttft_ms}
        if args.d:
            deep = predict_speed(table, spec.shape(), config, calibration, depth=args.d)
            predicted[f"tg{args.n} @ d{args.d}"] = deep.tg_ts
            predicted[f"pp{args.p} @ d{args.d}"] = deep.pp_ts
        for test, value in predicted.items():
            if test in measured:
                error = value / measured[test] - 1
                print(f"{key} {quant} | {test} | {value:.2f} | {measured[test]:.2f} | {error:+.1%}", flush=True)


if __name__ == "__main__":
    main()
