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


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: `measured` must reach `factor` x `reference`."""

    label: str
    measured: float | None
    reference: float | None
    factor: float = 1.0

    @property
    def verdict(self) -> str:
        if self.measured is None or self.reference is None:
            return "n/a"
        return "pass" if self.measured >= self.factor * self.reference else "FAIL"

    def row(self) -> list[str]:
        need = "n/a" if self.reference is None else fmt(self.factor * self.reference)
        ratio = ("n/a" if self.measured is None or not self.reference
                 else f"{self.measured / self.reference:.2f}x")
        return [self.label, fmt(self.measured), need, ratio, self.verdict]


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
