"""Pure statistics for the benchmarks: medians, percentiles, paired ratios, order and fairness."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def median(values: Iterable[float]) -> float:
    data = sorted(values)
    if not data:
        raise ValueError("median of no values")
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): a value that was measured, never an interpolation."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not within 0..100")
    rank = max(1, math.ceil(p / 100 * len(data)))
    return data[rank - 1]


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p90: float
    p99: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(
            n=len(values),
            median=median(values),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            low=min(values),
            high=max(values),
        )


def paired_ratios(subject: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """subject[i] / baseline[i] for runs measured side by side (the same repetition)."""
    if len(subject) != len(baseline):
        raise ValueError("paired ratios need as many subject runs as baseline runs")
    return [s / b for s, b in zip(subject, baseline, strict=True) if b > 0]


def alternating(repetitions: int, first: str, second: str) -> list[tuple[str, str]]:
    """The order of each repetition's two runs, swapped every time, so drift (a warming cache, a
    neighbour's load) falls on both sides alike."""
    return [(first, second) if i % 2 == 0 else (second, first) for i in range(repetitions)]


def inversions(order: Sequence[int]) -> int:
    """How many pairs ran in the opposite order to their creation (0 for strict FIFO)."""
    count = 0
    for i, a in enumerate(order):
        count += sum(1 for b in order[i + 1 :] if b < a)
    return count


def fifo_fraction(order: Sequence[int]) -> float:
    """1.0 when every pair started in creation order, 0.0 when every pair was reversed."""
    pairs = len(order) * (len(order) - 1) // 2
    return 1.0 if pairs == 0 else 1 - inversions(order) / pairs


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when all shares are equal, 1/n when one takes everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return 1.0 if squares == 0 else total * total / (len(values) * squares)
