"""The Pareto front and knee of a speed-against-quality trade-off, on hand-checked numbers."""

from __future__ import annotations

import math

from qwenbench.tradeoff import TradeoffPoint, dominates, knee, pareto_front, tradeoff

# generation t/s and mean KLD shaped like a real ladder (KLDs: llama.cpp's LLaMA-3-8B scoreboard)
LADDER = [TradeoffPoint("F32", 10.0, 0.0), TradeoffPoint("F16", 19.0, 2e-5), TradeoffPoint("BF16", 20.0, 1e-6),
          TradeoffPoint("Q8_0", 36.0, 0.0014), TradeoffPoint("Q6_K", 46.0, 0.0055),
          TradeoffPoint("Q5_K_M", 52.0, 0.011), TradeoffPoint("Q4_K_M", 60.0, 0.031),
          TradeoffPoint("Q3_K_M", 70.0, 0.102)]


def names(points: tuple[TradeoffPoint, ...]) -> list[str]:
    return [p.name for p in points]


def test_the_front_drops_what_another_quant_beats_on_both() -> None:
    result = tradeoff(LADDER)
    # F16 is slower than BF16 and further from the reference: off the front
    assert names(result.front) == ["F32", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M"]
    assert dominates(LADDER[2], LADDER[1]) and not dominates(LADDER[1], LADDER[2])
    assert not dominates(LADDER[0], LADDER[0])  # a point does not beat itself


def test_the_knee_is_the_point_farthest_from_the_chord() -> None:
    # gains (share of the 60 t/s range minus share of the 0.102 KLD range): Q8_0 0.420, Q6_K 0.546, Q5_K_M 0.592,
    # Q4_K_M 0.529
    assert tradeoff(LADDER).knee == TradeoffPoint("Q5_K_M", 52.0, 0.011)
    # the knee depends on the ends: down to Q2_K (0.445), Q4_K_M gains 0.645 against Q5_K_M's 0.575
    longer = tradeoff([*LADDER, TradeoffPoint("Q2_K", 80.0, 0.445)])
    assert longer.knee is not None and longer.knee.name == "Q4_K_M"


def test_no_knee_without_a_bend() -> None:
    assert knee(()) is None
    two = pareto_front([TradeoffPoint("a", 1.0, 0.0), TradeoffPoint("b", 2.0, 1.0)])
    assert len(two) == 2 and knee(two) is None
    line = pareto_front([TradeoffPoint(str(i), float(i), float(i)) for i in range(4)])
    assert len(line) == 4 and knee(line) is None  # collinear
    # bowed away from the ideal corner: every middle point pays more loss than it gains speed
    bowed = pareto_front([TradeoffPoint("a", 0.0, 0.0), TradeoffPoint("b", 0.5, 0.9), TradeoffPoint("c", 1.0, 1.0)])
    assert len(bowed) == 3 and knee(bowed) is None


def test_ties_missing_values_and_equal_gains() -> None:
    same = [TradeoffPoint("a", 5.0, 0.1), TradeoffPoint("b", 5.0, 0.1), TradeoffPoint("c", 4.0, 0.2)]
    assert names(pareto_front(same)) == ["a", "b"]  # identical points both stay; c is beaten by either
    missing = [TradeoffPoint("nan", math.nan, 0.0), TradeoffPoint("inf", 1.0, math.inf), TradeoffPoint("ok", 1.0, 1.0)]
    assert names(pareto_front(missing)) == ["ok"]
    # both middle points gain 0.375: the slower, lower-loss one is the knee
    even = [TradeoffPoint("slow", 0.0, 0.0), TradeoffPoint("m1", 2.0, 0.5), TradeoffPoint("m2", 3.0, 1.5),
            TradeoffPoint("fast", 4.0, 4.0)]
    assert tradeoff(even).knee == TradeoffPoint("m1", 2.0, 0.5)
