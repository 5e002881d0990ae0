"""Statistics over timing samples, as llama-bench reports them (mean and sample sd of tokens/s)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    avg_ns: float
    stddev_ns: float
    avg_ts: float
    stddev_ts: float
    median_ts: float
    samples_ns: tuple[int, ...]
    samples_ts: tuple[float, ...]


def summarize(samples_ns: tuple[int, ...] | list[int], n_tokens: int) -> Summary:
    """llama-bench's avg_ts is the mean of per-sample tokens/s (not tokens / mean time)."""
    if not samples_ns:
        raise ValueError("no samples")
    if any(ns <= 0 for ns in samples_ns):
        raise ValueError("samples must be positive durations")
    rates = tuple(n_tokens * 1e9 / ns for ns in samples_ns)
    spread = len(samples_ns) > 1
    return Summary(
        avg_ns=statistics.fmean(samples_ns),
        stddev_ns=statistics.stdev(samples_ns) if spread else 0.0,
        avg_ts=statistics.fmean(rates),
        stddev_ts=statistics.stdev(rates) if spread else 0.0,
        median_ts=statistics.median(rates),
        samples_ns=tuple(samples_ns),
        samples_ts=rates,
    )
