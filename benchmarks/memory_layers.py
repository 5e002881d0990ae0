"""Predicted against measured peak memory of hybrid models at two context sizes (goal: within 3 %).

    python benchmarks/memory_layers.py qwen3.5-4b:Q4_K_M qwen3.5-9b:Q4_K_M qwen3.6-35b-a3b:Q3_K_M --ctx 4096 32768

Writes full-size synthetic twins (once, into qwenbench's cache), runs each with real llama.cpp through
`qwenbench run` (CPU, a short prompt and generation: the KV cache and recurrent state are allocated for the whole
context whatever the prompt), and prints the run's predicted host bytes beside its measured peak RSS, with the
memory model's parts and llama.cpp's own KV/RS buffer lines against the predicted KV and state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenbench.catalog import get_model
from qwenbench.fit import RunConfig, estimate_memory
from qwenbench.gguf_info import read_header
from qwenbench.modelfile import ensure_synthetic
from qwenbench.probe.cpu import read_cpu

MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model:quant pairs")
    parser.add_argument("--ctx", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    qwenbench = str(Path(sys.executable).parent / "qwenbench")
    results = []
    for item in args.models:
        key, quant = item.split(":", 1)
        path, written = ensure_synthetic(get_model(key), quant)
        header = read_header(path)
        print(f"{key} {quant}: {path} ({'written' if written else 'reused'}, {path.stat().st_size / 2**30:.2f} GiB)",
              flush=True)
        for ctx in args.ctx:
            with tempfile.TemporaryDirectory() as tmp:
                result = subprocess.run([qwenbench, "run", "--json", "--gguf", str(path), "-p", "64", "-n", "16",
                                         "-r", "1", "--no-ttft", "-c", str(ctx), "--out", str(Path(tmp) / "r.csv")],
                                        capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
            if result.returncode != 0:
                print(f"  -c {ctx}: failed: {result.stderr.strip()[-500:]}", flush=True)
                continue
            payload = json.loads(result.stdout)
            row = payload["rows"][0]
            buffers = payload["llama_cpp_buffers"]
            estimate = estimate_memory(header.table, header.shape(), RunConfig(n_ctx=ctx), read_cpu().features)
            predicted, measured = row["predicted_host_bytes"], row["peak_rss_bytes"]
            error = (predicted - measured) / measured
            entry = {"model": key, "quant": quant, "ctx": ctx, "predicted_host_bytes": predicted,
                     "peak_rss_bytes": measured, "error": error, "parts": estimate.parts,
                     "llama_kv": buffers["kv"].get("CPU", 0), "llama_rs": buffers.get("rs", {}).get("CPU", 0),
                     "llama_compute": buffers["compute"].get("CPU", 0), "llama_model": buffers["model"],
                     "rates": {r["test"]: r["avg_ts"] for r in payload["rows"]}}
            results.append(entry)
            print(f"  -c {ctx}: predicted {predicted / MIB:.0f} MiB, peak RSS {measured / MIB:.0f} MiB "
                  f"({error:+.1%}); KV {estimate.parts['host_kv'] / MIB:.2f} MiB (llama.cpp "
                  f"{entry['llama_kv'] / MIB:.2f}), state {estimate.parts.get('host_recurrent_state', 0) / MIB:.2f} "
                  f"MiB (llama.cpp {entry['llama_rs'] / MIB:.2f}), compute {entry['llama_compute'] / MIB:.0f} MiB",
                  flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
