"""What this machine taught the memory and speed models: measured overhead beyond the exactly-known buffers, and
how measured speeds compare with what the speed calibration alone predicted.

After each CPU run the harness stores (activation units, measured peak RSS minus weights, repacked copies,
KV cache and output buffer); predictions then use a least-squares fit of those residuals for this
machine, or the defaults until there are two different shapes to fit. It also stores, per speed calibration,
each test's measured / predicted speed (speed-runs.json), which refines later predictions (speed.refine_from).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .fit import MIB, Calibration
from .paths import cache_dir, read_json, write_json
from .speed import SpeedObservation

MAX_OBSERVATIONS = 64


def _path() -> Path:
    return cache_dir() / "calibration.json"


def _load() -> dict:
    return read_json(_path())


def _efficiencies(observations: list[dict], base: Calibration) -> Calibration:
    """Median measured decode efficiency per model kind, where this machine has measured one."""
    updates = {}
    for moe, name in ((False, "tg_efficiency_dense"), (True, "tg_efficiency_moe")):
        values = sorted(o["efficiency"] for o in observations if "efficiency" in o and o.get("moe") == moe)
        if values:
            updates[name] = values[len(values) // 2]
    return replace(base, **updates) if updates else base


def _line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares (intercept, slope), or None without two distinct x."""
    n = len(points)
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return mean_y - slope * mean_x, slope


def _without_outliers(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Drop the points far off the first fit (a run measured while something else held memory): beyond three
    robust standard deviations (1.4826 x the median absolute deviation) and 64 MiB."""
    fitted = _line(points)
    if fitted is None or len(points) < 4:
        return points
    base, slope = fitted
    errors = [abs(y - base - slope * x) for x, y in points]
    mad = sorted(errors)[len(errors) // 2]
    limit = max(3 * 1.4826 * mad, 64 * MIB)
    return [p for p, e in zip(points, errors, strict=True) if e <= limit]


def fit_calibration(observations: list[dict]) -> Calibration:
    """Least squares of residual = base + factor * activation_units over this machine's observations (outliers
    dropped), and the median decode efficiencies."""
    points = _without_outliers([(o["activation_units"], o["residual_bytes"]) for o in observations
                                if "residual_bytes" in o])
    efficiencies = _efficiencies(observations, Calibration())
    fitted = _line(points)
    if fitted is None:
        measured = len(observations)
        return replace(efficiencies, source=f"measured ({measured} runs)") if measured else efficiencies
    base, factor = fitted
    source = f"measured ({len(points)} runs)"
    if factor < 0:  # noise, not physics: more activations never need less memory
        return replace(efficiencies, host_base_bytes=sum(y for _, y in points) / len(points),
                       host_activation_factor=0.0, source=source)
    return replace(efficiencies, host_base_bytes=max(0.0, base), host_activation_factor=factor, source=source)


def load_calibration(machine_id: str) -> Calibration:
    return fit_calibration(_load().get(machine_id, {}).get("observations", []))


def record_memory(machine_id: str, *, activation_units: float, residual_bytes: int, model: str) -> None:
    """Keep one measured residual (bounded history); a cache that cannot be written is skipped."""
    if residual_bytes <= 0 or residual_bytes > 4096 * MIB:
        return  # not a plausible overhead: swapping, or a measurement gone wrong
    _append(machine_id, {"model": model, "activation_units": activation_units, "residual_bytes": residual_bytes})


def record_efficiency(machine_id: str, *, efficiency: float, moe: bool, model: str) -> None:
    """Keep one measured decode efficiency (tokens/s x bytes per token / copy bandwidth)."""
    if not 0.01 < efficiency < 2.0:
        return
    _append(machine_id, {"model": model, "moe": moe, "efficiency": round(efficiency, 4)})


def _append(machine_id: str, observation: dict) -> None:
    data = _load()
    entry = data.setdefault(machine_id, {"observations": []})
    entry["observations"] = [*entry["observations"], observation][-MAX_OBSERVATIONS:]
    write_json(_path(), data)  # a calibration that cannot be kept only means defaults next time


def _speed_runs_path() -> Path:
    return cache_dir() / "speed-runs.json"


def record_speed_observations(key: str, observations: list[SpeedObservation]) -> None:
    """Keep what a run measured against its unrefined predictions, under the speed calibration's key (bounded)."""
    if not observations:
        return
    data = read_json(_speed_runs_path())
    kept = data.get(key) if isinstance(data.get(key), list) else []
    data[key] = [*kept, *(o.to_json() for o in observations)][-MAX_OBSERVATIONS:]
    write_json(_speed_runs_path(), data)  # a lesson that cannot be kept only means an unrefined prediction


def speed_observations(key: str) -> list[SpeedObservation]:
    """What measured runs taught the speed calibration `key`; entries that do not read are left out."""
    entries = read_json(_speed_runs_path()).get(key)
    observations = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            observations.append(SpeedObservation.from_json(entry))
        except (KeyError, TypeError, ValueError):
            continue
    return observations


def forget_speed_observations(key: str) -> None:
    """A calibration measured afresh: ratios to the old one's predictions teach it nothing."""
    data = read_json(_speed_runs_path())
    if data.pop(key, None) is not None:
        write_json(_speed_runs_path(), data)
