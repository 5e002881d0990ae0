"""A speed-against-quality trade-off: its Pareto front and the front's knee, as plain arithmetic over points.

The report's "Speed against quality" puts each quant of a model at (generation t/s, mean KL divergence from the
reference); this module decides which quants are worth running at all (the front) and which one is the bend of
the curve (the knee). No pandas here: the rule is small enough to test with a handful of numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# the knee must be off the chord by more than rounding: three collinear points have no bend
_MIN_GAIN = 1e-9


@dataclass(frozen=True)
class TradeoffPoint:
    name: str
    speed: float  # higher is better (tokens/s)
    loss: float  # lower is better (mean KLD, nats per token)


@dataclass(frozen=True)
class Tradeoff:
    front: tuple[TradeoffPoint, ...]  # slowest (lowest loss) first
    knee: TradeoffPoint | None  # None: fewer than three front points, or no bend


def dominates(a: TradeoffPoint, b: TradeoffPoint) -> bool:
    """a is at least as fast and as good as b, and better in one of the two."""
    return a.speed >= b.speed and a.loss <= b.loss and (a.speed > b.speed or a.loss < b.loss)


def pareto_front(points: Iterable[TradeoffPoint]) -> tuple[TradeoffPoint, ...]:
    """The points no other point dominates, slowest first (on a front, loss then rises with speed). Points with a
    missing (NaN) or infinite coordinate are left out: they cannot be compared. Identical points are all kept."""
    usable = [p for p in points if math.isfinite(p.speed) and math.isfinite(p.loss)]
    front = [p for p in usable if not any(dominates(q, p) for q in usable)]
    return tuple(sorted(front, key=lambda p: (p.speed, p.loss, p.name)))


def knee(front: Sequence[TradeoffPoint]) -> TradeoffPoint | None:
    """The front's point farthest from the straight line joining its ends (the lowest-loss point and the fastest),
    on the side of the ideal (fast, lossless) corner, with speed and loss each scaled to the front's range: the
    point that gains the largest share of the speed range for the smallest share of the loss range (the Kneedle
    rule, Satopää et al. 2011, at its simplest). Both axes linear: a loss such as mean KLD is itself an average
    cost, and a log scale would make the near-zero losses of the full-precision files (rounding in the kernels,
    the reference's own 0) as far apart as two low-bit quants. Ties go to the slower, lower-loss point.

    `front` as pareto_front returns it; None where it has fewer than three points or no point bends off the line.
    """
    if len(front) < 3:
        return None
    slow, fast = front[0], front[-1]
    speed_span, loss_span = fast.speed - slow.speed, fast.loss - slow.loss
    if speed_span <= 0 or loss_span <= 0:
        return None

    def gain(point: TradeoffPoint) -> float:
        # share of the speed range gained minus share of the loss range paid: sqrt(2) x the distance to the chord
        return (point.speed - slow.speed) / speed_span - (point.loss - slow.loss) / loss_span

    best = max(front[1:-1], key=gain)  # max keeps the first of equals: the slower one
    return best if gain(best) > _MIN_GAIN else None


def tradeoff(points: Iterable[TradeoffPoint]) -> Tradeoff:
    front = pareto_front(points)
    return Tradeoff(front, knee(front))
