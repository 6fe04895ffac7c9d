"""Small, dependency-free statistics used by both workers and the report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile: a value that was really observed, never interpolated."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def ns_to_ms(values: Iterable[int]) -> list[float]:
    """Convert nanosecond durations to milliseconds."""
    return [value / 1e6 for value in values]


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that exist; None when no repetition produced one."""
    present = [value for value in values if value is not None]
    return float(statistics.median(present)) if present else None


def rate(count: int, start_ns: int | None, end_ns: int | None) -> float | None:
    """Events per second between two monotonic timestamps."""
    if start_ns is None or end_ns is None or end_ns <= start_ns or count <= 0:
        return None
    return count / ((end_ns - start_ns) / 1e9)
