"""Bytes fetched to plan a model from its GGUF headers on the Hub (goal: under 1% of the files).

    python benchmarks/plan_bytes.py qwen3-4b:Q4_K_M qwen3-30b-a3b:Q3_K_L

Serves full-size synthetic files (written once into qwenbench's cache) from the loopback fake Hub and
plans each through huggingface_hub's range requests, with an empty header cache. A synthetic header is
smaller than the real one (its tokenizer has few merges), so the real file's header size is shown too:
the published file size less its tensor bytes (models.md), and what planning from it would fetch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenbench.catalog import get_model
from qwenbench.hubheader import READ_BLOCK, plan_tables
from qwenbench.modelfile import ensure_synthetic, file_sha256
from qwenbench.recipe import tensor_table
from tests.fakehub import FakeHub, FakeHubServer, FakeRepo

# published sizes of real files (bytes), for the real header size: file size less tensor bytes
PUBLISHED = {("qwen3-4b", "Q4_K_M"): 2_497_280_256, ("qwen3-8b", "Q4_K_M"): 5_027_783_488,
             ("qwen3-32b", "Q4_K_M"): 19_762_149_024, ("qwen3-30b-a3b", "Q4_K_M"): 18_556_685_824}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model:quant pairs")
    args = parser.parse_args()
    pairs = [tuple(item.split(":", 1)) for item in args.models]
    repos = {}
    for key, quant in pairs:
        spec = get_model(key)
        path, _ = ensure_synthetic(spec, quant)
        name = f"{spec.name}-{quant}.gguf"
        repos[spec.hub[0]] = FakeRepo({name: path}, known_sha256={name: file_sha256(path)})
    hub = FakeHub(repos=repos)
    with FakeHubServer(hub) as server, tempfile.TemporaryDirectory() as scratch:
        os.environ.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", QWENBENCH_CACHE_DIR=scratch)
        os.environ.pop("HF_HUB_OFFLINE", None)
        for key, quant in pairs:
            spec = get_model(key)
            start = time.perf_counter()
            found = plan_tables(spec, [quant])
            seconds = time.perf_counter() - start
            remote = found.remote[quant]
            header = remote.header
            print(f"{key} {quant}: file {remote.resolved.size / 1e9:.2f} GB, header {header.data_offset / 1e6:.2f} MB, "
                  f"fetched {remote.fetched_bytes / 1e6:.2f} MB in {remote.requests} range requests "
                  f"({remote.fetched_fraction:.3%} of the file), {seconds:.2f} s")
            published = PUBLISHED.get((key, quant))
            if published:
                real_header = published - tensor_table(spec, quant).n_bytes
                projected = (real_header + READ_BLOCK) / published
                print(f"  real file: header {real_header / 1e6:.2f} MB; planning from it fetches at most "
                      f"{(real_header + READ_BLOCK) / 1e6:.2f} MB ({projected:.3%} of {published / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
