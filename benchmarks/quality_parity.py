"""Parity check: qwenbench quality's KLD and perplexity against llama.cpp's llama-perplexity on the same files.

    python benchmarks/quality_parity.py --llama-perplexity /tmp/lp-build/bin/llama-perplexity \\
        --ref base.gguf --gguf quant1.gguf --gguf quant2.gguf [--corpus configs/corpora/en.txt] [--ctx 512]

llama-perplexity writes the reference's log-probabilities (--kl-divergence-base, uint16 over the whole vocabulary),
then reads them back for each quant (--kl-divergence); qwenbench scores the same files over the same corpus and
context. Printed per quant: both tools' mean KLD, 99th-percentile KLD, same-top rate, PPL, reference PPL, and our
figure / theirs - 1 (goal: within 1 %). llama-perplexity is not part of qwenbench: build it from the llama.cpp
source vendored in the llama-cpp-python sdist:

    tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B /tmp/lp-build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build /tmp/lp-build --target llama-perplexity -j 2

Measured (README, "How quality measures"): Gemma 3 270M Q4_K_M against its Q6_K, Q3_K_M and Q2_K copies, en corpus,
ctx 512, 8 chunks: PPL and same-top equal, KLD p99 within 0.1 %, mean KLD -0.6 to -0.7 % at top-k 512.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# llama-perplexity's closing statistics (tools/perplexity/perplexity.cpp, kl_divergence)
_FIGURES = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*([0-9.eE+-]+)",
    "ppl_ref": r"Mean PPL\(base\)\s*:\s*([0-9.eE+-]+)",
    "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([0-9.eE+-]+)",
    "kld_mean": r"Mean\s+KLD:\s*([0-9.eE+-]+)",
    "kld_p99": r"99\.0%\s+KLD:\s*([0-9.eE+-]+)",
    "same_top": r"Same top p:\s*([0-9.eE+-]+)",
}


def llama_perplexity(binary: str, ref: str, models: list[str], corpus: str, ctx: int, chunks: int, threads: int,
                     scratch: Path) -> dict[str, dict[str, float]]:
    base = scratch / "base.kld"
    common = ["-f", corpus, "-c", str(ctx), "-t", str(threads), "-b", str(ctx)]
    if chunks:
        common += ["--chunks", str(chunks)]
    subprocess.run([binary, "-m", ref, *common, "--kl-divergence-base", str(base)], capture_output=True, text=True,
                   check=True)
    found = {}
    for model in models:
        run = subprocess.run([binary, "-m", model, *common, "--kl-divergence-base", str(base), "--kl-divergence"],
                             capture_output=True, text=True, check=True)
        text = run.stdout + run.stderr
        figures = {}
        for name, pattern in _FIGURES.items():
            match = re.search(pattern, text)
            if match:
                figures[name] = float(match.group(1)) / (100 if name == "same_top" else 1)
        found[model] = figures
    return found


def qwenbench(ref: str, models: list[str], corpus: str, ctx: int, chunks: int, threads: int, top_k: int,
              csv: Path) -> dict[str, dict[str, float]]:
    binary = str(Path(sys.executable).with_name("qwenbench"))
    argv = [binary, "quality", "--ref", ref, "--corpus", corpus, "--ctx", str(ctx), "--chunks", str(chunks),
            "--top-k", str(top_k), "-t", str(threads), "--json", "--out", str(csv)]
    for model in models:
        argv += ["--gguf", model]
    rows = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)["rows"]
    return {model: {name: row[name] for name in _FIGURES} for model, row in zip(models, rows, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-perplexity", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--gguf", action="append", required=True)
    parser.add_argument("--corpus", default=str(ROOT / "configs" / "corpora" / "en.txt"))
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        theirs = llama_perplexity(args.llama_perplexity, args.ref, args.gguf, args.corpus, args.ctx, args.chunks,
                                  args.threads, Path(scratch))
        ours = qwenbench(args.ref, args.gguf, args.corpus, args.ctx, args.chunks, args.threads, args.top_k,
                         Path(scratch) / "quality.csv")
    print(f"corpus {Path(args.corpus).name}, ctx {args.ctx}, top-k {args.top_k}; each cell: "
          "qwenbench / llama-perplexity (ours / theirs - 1)")
    print("model".ljust(40) + "".join(name.rjust(34) for name in _FIGURES))
    for model in args.gguf:
        cells = []
        for name in _FIGURES:
            a, b = ours[model].get(name), theirs[model].get(name)
            if a is None or b is None:
                cells.append("-".rjust(34))
                continue
            diff = f"{a / b - 1:+.2%}" if b else "n/a"
            cells.append(f"{a:.6g} / {b:.6g} ({diff})".rjust(34))
        print(Path(model).name[:39].ljust(40) + "".join(cells))


if __name__ == "__main__":
    main()
