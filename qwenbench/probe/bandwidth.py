"""A quick RAM bandwidth figure, because decode speed is bandwidth-bound; cached per machine.

Copies a buffer much larger than the CPU caches with one thread per physical core (numpy's copy
releases the GIL), best of a few rounds, counting bytes read plus bytes written.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from ..paths import cache_dir, read_json, write_json

BUFFER_BYTES = 512 << 20
ROUNDS = 4


def measure_ram_bandwidth_gbps(threads: int, buffer_bytes: int = BUFFER_BYTES, rounds: int = ROUNDS) -> float:
    return max(ram_bandwidth_trials(threads, buffer_bytes, rounds))


def ram_bandwidth_trials(threads: int, buffer_bytes: int = BUFFER_BYTES, rounds: int = ROUNDS) -> list[float]:
    """GB/s of each of `rounds` timed copies (after one untimed first touch)."""
    import numpy as np

    source = np.ones(buffer_bytes // 8, dtype=np.float64)
    target = np.empty_like(source)
    slices = np.array_split(np.arange(source.size), max(1, threads))
    bounds = [(int(s[0]), int(s[-1]) + 1) for s in slices if s.size]

    def copy(bound: tuple[int, int]) -> None:
        np.copyto(target[bound[0]:bound[1]], source[bound[0]:bound[1]])

    trials = []
    with ThreadPoolExecutor(max_workers=len(bounds)) as pool:
        list(pool.map(copy, bounds))  # first touch: page faults are not bandwidth
        for _ in range(rounds):
            start = time.perf_counter()
            list(pool.map(copy, bounds))
            trials.append(2 * source.nbytes / (time.perf_counter() - start) / 1e9)
    return trials


def _cache_file() -> Path:
    return cache_dir() / "bandwidth.json"


def cached_bandwidth(machine_key: str) -> dict[str, float] | None:
    entry = read_json(_cache_file()).get(machine_key)
    return entry.get("bandwidth_gbps") if isinstance(entry, dict) else None


def store_bandwidth(machine_key: str, figures: dict[str, float]) -> bool:
    data = read_json(_cache_file())
    data[machine_key] = {"bandwidth_gbps": figures, "measured_at": datetime.now(timezone.utc).isoformat()}
    return write_json(_cache_file(), data)
