"""Small statistics and table helpers for the benchmark (no numpy: these run in the bench driver and the tests)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    rank = (len(data) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)


def fmt(value: float | int | str | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; every row must have the header's width."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells, the header {len(header)}")
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class RatioSummary:
    """Per-round ratios A/B of an interleaved comparison: their median, min and max."""

    ratios: tuple[float, ...]

    @property
    def median(self) -> float | None:
        return median(self.ratios) if self.ratios else None

    @property
    def low(self) -> float | None:
        return min(self.ratios) if self.ratios else None

    @property
    def high(self) -> float | None:
        return max(self.ratios) if self.ratios else None

    def text(self) -> str:
        """`1.23x (1.10-1.40)`: the median ratio with the lowest and highest round."""
        if not self.ratios:
            return "n/a"
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f})"


def round_ratios(a: Sequence[float], b: Sequence[float]) -> RatioSummary:
    """A/B for each round (the two lists are in round order, one value per side and round); a round where B
    measured zero has no ratio."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} rounds of A but {len(b)} of B")
    return RatioSummary(tuple(x / y for x, y in zip(a, b) if y))


def interleaved_order(rounds: int) -> list[tuple[str, str]]:
    """Which side goes first in each round: ("a", "b"), ("b", "a"), ... so that neither side always runs on
    the machine the other has just warmed or left busy."""
    if rounds < 1:
        raise ValueError("at least one round")
    return [("a", "b") if r % 2 == 0 else ("b", "a") for r in range(rounds)]
