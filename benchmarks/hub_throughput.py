"""Download throughput: qwenbench's Hub download (huggingface_hub underneath, resumable, verified) against a
plain HTTP client fetching the same bytes from the same loopback server.

    python benchmarks/hub_throughput.py --size-mb 1024 --rounds 3

Both write to disk in the same folder; qwenbench's figure includes its SHA-256 check, the plain one does not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenbench.catalog import get_model
from qwenbench.hub import download, resolve
from tests.fakehub import FakeHub, FakeHubServer, FakeRepo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    payload = b"GGUF" + os.urandom(args.size_mb << 20)[4:]
    hub = FakeHub(repos={"Qwen/Qwen3-0.6B-GGUF": FakeRepo({"Qwen3-0.6B-Q8_0.gguf": payload})})
    ratios = []
    with FakeHubServer(hub) as server, tempfile.TemporaryDirectory() as scratch:
        os.environ.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                          QWENBENCH_CACHE_DIR=str(Path(scratch) / "qb"))
        url = f"{server.url}/Qwen/Qwen3-0.6B-GGUF/resolve/main/Qwen3-0.6B-Q8_0.gguf"
        for round_index in range(args.rounds):
            os.environ["HF_HUB_CACHE"] = str(Path(scratch) / f"hf{round_index}")
            start = time.perf_counter()
            resolved = resolve(get_model("qwen3-0.6b"), "Q8_0")
            download(resolved)
            ours = len(payload) / (time.perf_counter() - start) / 1e6
            plain_path = Path(scratch) / "plain.gguf"
            start = time.perf_counter()
            with urllib.request.urlopen(url) as response, plain_path.open("wb") as out:
                shutil.copyfileobj(response, out, 10 << 20)
            plain = len(payload) / (time.perf_counter() - start) / 1e6
            plain_path.unlink()
            shutil.rmtree(os.environ["HF_HUB_CACHE"])
            ratios.append(ours / plain)
            print(f"round {round_index + 1}: qwenbench {ours:7.0f} MB/s (SHA-256 checked)  plain {plain:7.0f} MB/s  "
                  f"ratio {ours / plain:.2f}", flush=True)
    print(f"median ratio {statistics.median(ratios):.2f} over {args.rounds} rounds of {args.size_mb} MiB")


if __name__ == "__main__":
    main()
