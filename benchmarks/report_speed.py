"""`qwenbench report` on a large results file (goal: 100,000 rows in under 3 s).

    python benchmarks/report_speed.py [--rows 100000]

Writes a CSV of the given size through results.append_records (5 machines, 12 models, 3 device modes,
pp512/tg128/ttft, a share of failed and skipped rows), then times the report in-process and as the command a
user runs (Python start and imports included).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenbench.report import write_report
from qwenbench.results import SCHEMA_VERSION, Record, append_records

MODELS = [(f"model-{i}", "Q4_K_M", i % 4 == 0) for i in range(12)]
MACHINES = [(f"host{i}", f"id{i:04d}", "CPU,CUDA" if i % 2 else "CPU") for i in range(5)]


def make_rows(n: int) -> list[Record]:
    rng = random.Random(0)
    base = {f.name: None for f in fields(Record)}
    rows = []
    while len(rows) < n:
        host, machine_id, backends = rng.choice(MACHINES)
        key, quant, moe = rng.choice(MODELS)
        mode = rng.choice(("cpu", "gpu", "gpu-experts-cpu") if moe else ("cpu", "gpu"))
        run = f"run{len(rows) // 3}"
        for test in ("pp512", "tg128", "ttft"):
            status = rng.choices(("ok", "failed", "skipped"), (0.9, 0.05, 0.05))[0]
            speed = rng.uniform(5, 500) if status == "ok" else None
            rows.append(Record(**{
                **base, "schema_version": SCHEMA_VERSION, "run_id": run, "suite": "bench-all", "mode": mode,
                "job_key": f"{key}-{mode}", "test_time": "2026-11-22T00:00:00+00:00", "status": status,
                "error": "" if status == "ok" else f"{status} for a reason", "test": test, "n_prompt": 512,
                "n_gen": 128, "n_depth": 0, "n_ctx": 640, "n_batch": 2048, "n_ubatch": 512, "n_threads": 8,
                "n_gpu_layers": -1, "n_cpu_moe": 0, "flash_attn": "auto", "type_k": "f16", "type_v": "f16",
                "load_mode": "auto", "repetitions": 5, "avg_ts": speed if test != "ttft" else None,
                "stddev_ts": 0.5, "median_ts": speed, "samples_ns": (1, 2, 3, 4, 5), "samples_ts": (1.0,) * 5,
                "ttft_ms": speed if test == "ttft" else None, "load_ms": 900.0,
                "peak_rss_bytes": rng.randint(1, 20) << 30, "predicted_host_bytes": rng.randint(1, 20) << 30,
                "host_bytes_per_token": 2_000_000_000, "gpu_bytes_per_token": 0, "ram_bandwidth_gbps": 50.0,
                "model_key": key, "model_filename": f"{key}.gguf", "model_type": "qwen3", "quant": quant,
                "model_size": 2_000_000_000, "model_n_params": 4_000_000_000,
                "model_n_params_active": 400_000_000 if moe else 4_000_000_000, "is_moe": moe, "weights": "real",
                "model_sha256": "ab" * 32, "model_repo": "", "model_revision": "", "machine_id": machine_id,
                "hostname": host, "cpu_model": "cpu", "n_cpu_physical": 8, "ram_total_bytes": 32 << 30,
                "gpu_names": "", "backends": backends, "llama_cpp_commit": "0c1e570",
                "llama_cpp_python_version": "0.3.36", "qwenbench_version": "0.1.0"}))
    return rows[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        csv_path = Path(scratch) / "big.csv"
        append_records(csv_path, make_rows(args.rows))
        print(f"{args.rows:,} rows, {csv_path.stat().st_size / 1e6:.1f} MB")
        start = time.perf_counter()
        written = write_report([csv_path], Path(scratch) / "report")
        print(f"in-process: {time.perf_counter() - start:.2f} s ({len(written.charts)} charts)")
        qwenbench = Path(sys.executable).parent / "qwenbench"
        start = time.perf_counter()
        subprocess.run([str(qwenbench), "report", str(csv_path), "--out", str(Path(scratch) / "cli")], check=True,
                       capture_output=True)
        print(f"`qwenbench report`: {time.perf_counter() - start:.2f} s, Python start and imports included")


if __name__ == "__main__":
    main()
