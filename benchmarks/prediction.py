"""How far to trust a plan on a machine: predicted against measured speed for models that never ran here.

On the current cache (use a fresh QWENBENCH_CACHE_DIR to start from nothing): calibrate (timed), then for each
model write its synthetic twin (the catalog's recipe), measure it with `qwenbench run`, calibrate again, and set
the measurement beside what the calibration alone predicts: the first one's (as a user's plan would), and the
geometric mean of the two around it (what the model predicts, without the drift of a shared machine between
calibration and measurement, which the last column shows). Prints a table; --json-out keeps it.

    QWENBENCH_CACHE_DIR=$(mktemp -d) python benchmarks/prediction.py \\
        --models qwen3-4b:Q4_K_M qwen3-8b:Q4_K_M qwen3-30b-a3b:Q3_K_L qwen3-30b-a3b:Q4_K_M [-n 128] [-r 3]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from qwenbench.calibrate import calibrate, calibration_key, load_speed_calibration
from qwenbench.catalog import ModelSpec, get_model
from qwenbench.fit import RunConfig
from qwenbench.machine import MachineInfo, describe_machine
from qwenbench.modelfile import ensure_synthetic
from qwenbench.recipe import tensor_table
from qwenbench.speed import SpeedCalibration, predict_speed
from qwenbench.tensors import TensorTable


def _measure(path: Path, threads: int, *flags: str) -> tuple[dict[str, float], bool]:
    """(each test's measured figure, whether the run kept the CPU backend's repacked weights: its plan chooses, and
    the prediction set beside it must be for what ran)."""
    qwenbench = Path(sys.executable).parent / "qwenbench"
    argv = [str(qwenbench), "run", "--gguf", str(path), "-t", str(threads), "--json",
            "--out", str(Path(path).with_suffix(".prediction.csv")), *flags]
    rows = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    return ({r["test"]: (r["ttft_ms"] if r["test"] == "ttft" else r["avg_ts"]) for r in ok},
            all(r["repack"] != "off" for r in ok))


def _predictions(table: TensorTable, spec: ModelSpec, config: RunConfig, calibration: SpeedCalibration,
                 args: argparse.Namespace) -> dict[str, float]:
    base = predict_speed(table, spec.shape(), config, calibration)
    predicted = {f"pp{args.p}": base.pp_ts, f"tg{args.n}": base.tg_ts, "ttft": base.ttft_ms}
    if args.d:
        deep = predict_speed(table, spec.shape(), config, calibration, depth=args.d)
        predicted[f"tg{args.depth_n} @ d{args.d}"] = deep.tg_ts
        predicted[f"pp{args.p} @ d{args.d}"] = deep.pp_ts
    return predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["qwen3-4b:Q4_K_M", "qwen3-8b:Q4_K_M",
                                                       "qwen3-30b-a3b:Q3_K_L", "qwen3-30b-a3b:Q4_K_M"])
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-d", type=int, default=4096, help="also tg at this depth (0: not)")
    parser.add_argument("--depth-n", type=int, default=64, help="tokens generated at depth")
    parser.add_argument("--depth-pp", action="store_true", help="also pp at depth (a long fill per test)")
    parser.add_argument("-r", type=int, default=3)
    parser.add_argument("--json-out", type=Path, help="also write the rows here")
    parser.add_argument("--no-bracket", dest="bracket", action="store_false",
                        help="do not calibrate again after each model (the machine's drift goes unmeasured)")
    args = parser.parse_args()
    machine = describe_machine()
    threads = machine.n_cpu_physical
    print(f"machine: {machine.cpu_model}, {threads} cores, features {' '.join(machine.hardware.cpu.features)}")
    calibration, _ = load_speed_calibration(calibration_key(machine, threads))
    if calibration is None:
        calibration = _calibrate(machine, threads)
    else:
        print(f"calibration cached from {calibration.measured_at} ({calibration.wall_s:.0f} s)")
    first = before = calibration
    print(" | ".join(["model", "test", "measured", "predicted (first calibration)", "error",
                      "predicted (calibrations around)", "error", "machine drift"]))
    rows: list[dict] = []
    for item in args.models:
        key, quant = item.split(":")
        spec = get_model(key)
        path, _ = ensure_synthetic(spec, quant)
        table = tensor_table(spec, quant)
        # the runs pin the repacking the first one's plan chose, so that one prediction serves every test
        measured, repack = _measure(path, threads, "-p", str(args.p), "-n", str(args.n), "-r", str(args.r))
        if args.d:
            # the depth fill is decoded once per run and restored for every repetition: two are enough
            deep, _ = _measure(path, threads, "-p", str(args.p) if args.depth_pp else "0", "-n", str(args.depth_n),
                               "-d", str(args.d), "-r", "2", "--no-ttft", "--repack" if repack else "--no-repack")
            measured |= deep
        # a shared VM's speed moves by tens of percent within minutes (its neighbours, the host's clocks): the
        # calibrations just before and after a model bracket what its measurement saw
        after = _calibrate(machine, threads) if args.bracket else before
        config = RunConfig(n_ctx=args.p + args.n + args.d, repack=repack)
        from_first, around_before, around_after = (_predictions(table, spec, config, c, args)
                                                   for c in (first, before, after))
        for test, value in from_first.items():
            if test not in measured:
                continue
            around = math.sqrt(around_before[test] * around_after[test])
            row = {"model": key, "quant": quant, "test": test, "repack": repack, "measured": round(measured[test], 2),
                   "predicted_first": round(value, 2), "error_first": round(value / measured[test] - 1, 4),
                   "predicted_around": round(around, 2), "error_around": round(around / measured[test] - 1, 4),
                   "drift": round(around_after[test] / around_before[test] - 1, 4)}
            rows.append(row)
            print(f"{key} {quant} | {test} | {measured[test]:.2f} | {value:.2f} | {row['error_first']:+.1%} | "
                  f"{around:.2f} | {row['error_around']:+.1%} | {row['drift']:+.1%}", flush=True)
        before = after
        if args.json_out:
            args.json_out.write_text(json.dumps({"machine": machine.cpu_model, "calibration": first.to_json(),
                                                 "rows": rows}, indent=1))


def _calibrate(machine: MachineInfo, threads: int) -> SpeedCalibration:
    start = time.monotonic()
    calibration = calibrate(machine, threads)
    print(f"calibrated in {time.monotonic() - start:.0f} s (rounds disagree by {calibration.spread:.0%})", flush=True)
    return calibration


if __name__ == "__main__":
    main()
