"""Download throughput: qwenbench's Hub download (huggingface_hub underneath, resumable, verified) against a
plain HTTP client fetching the same bytes from the same loopback server.

    python benchmarks/hub_throughput.py --size-mb 512 --rounds 8 [--rate-mbps 125]

The fake Hub runs in its own process (as a real server would; in-process, its thread and the client's
contend for the GIL) and serves a file from disk. Both clients write to the same folder; qwenbench's figure
includes its SHA-256 check (hashed on a worker thread while the bytes arrive), the plain one does not.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenbench.catalog import get_model
from qwenbench.hub import download, resolve
from tests.fakehub import FakeHub, FakeHubServer, FakeRepo


def serve(payload: Path, urls: multiprocessing.Queue[str], rate: float | None) -> None:
    hub = FakeHub(repos={"Qwen/Qwen3-0.6B-GGUF": FakeRepo({"Qwen3-0.6B-Q8_0.gguf": payload})},
                  rate_bytes_per_s=rate)
    with FakeHubServer(hub) as server:
        hub.sha256("Qwen/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q8_0.gguf")  # hashed before the clock starts
        urls.put(server.url)
        threading.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--rate-mbps", type=float, default=None,
                        help="pace the server like a real link (MB/s); default: loopback as fast as it goes")
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as scratch:
        payload = Path(scratch) / "payload.gguf"
        with payload.open("wb") as out:
            out.write(b"GGUF")
            for _ in range(args.size_mb):
                out.write(os.urandom(1 << 20))
        size = payload.stat().st_size
        urls: multiprocessing.Queue[str] = multiprocessing.Queue()
        rate = args.rate_mbps * 1e6 if args.rate_mbps else None
        server = multiprocessing.Process(target=serve, args=(payload, urls, rate), daemon=True)
        server.start()
        base = urls.get(timeout=60)
        os.environ.update(HF_ENDPOINT=base, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                          QWENBENCH_CACHE_DIR=str(Path(scratch) / "qb"))
        url = f"{base}/Qwen/Qwen3-0.6B-GGUF/resolve/main/Qwen3-0.6B-Q8_0.gguf"

        def ours(round_index: int) -> float:
            os.environ["HF_HUB_CACHE"] = str(Path(scratch) / f"hf{round_index}")
            start = time.perf_counter()
            download(resolve(get_model("qwen3-0.6b"), "Q8_0"))
            speed = size / (time.perf_counter() - start) / 1e6
            shutil.rmtree(os.environ["HF_HUB_CACHE"])
            return speed

        def plain() -> float:
            plain_path = Path(scratch) / "plain.gguf"
            start = time.perf_counter()
            with urllib.request.urlopen(url) as response, plain_path.open("wb") as out:
                shutil.copyfileobj(response, out, 10 << 20)
                out.flush()
            speed = size / (time.perf_counter() - start) / 1e6
            plain_path.unlink()
            return speed

        for round_index in range(args.rounds):
            # A-B then B-A: the disk's and the page cache's drift falls on both clients alike
            if round_index % 2 == 0:
                a, b = ours(round_index), plain()
            else:
                b, a = plain(), ours(round_index)
            ratios.append(a / b)
            print(f"round {round_index + 1}: qwenbench {a:7.0f} MB/s (SHA-256 checked)  plain {b:7.0f} MB/s  "
                  f"ratio {a / b:.2f}", flush=True)
        server.terminate()
    link = f"a {args.rate_mbps:g} MB/s link" if args.rate_mbps else "unpaced loopback"
    print(f"median ratio {statistics.median(ratios):.2f} over {args.rounds} rounds of {args.size_mb} MiB on {link}")


if __name__ == "__main__":
    main()
