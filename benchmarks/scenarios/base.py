"""What a scenario declares: how to run one cell, and how to show its numbers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from benchmarks.scenarios.cell import Cell, Metrics, Payload

Aggregate = Literal["median", "sum", "max"]
Format = Literal["rate", "ms", "count", "pct", "mib", "x"]


@dataclass(frozen=True)
class Column:
    """One metric column. Counts of bad events are summed over repetitions, not medianed."""

    key: str
    header: str
    fmt: Format
    agg: Aggregate = "median"


@dataclass(frozen=True)
class Ratio:
    """An "ours ÷ subject" column for one metric, with which direction is better."""

    key: str
    header: str
    better: Literal["higher", "lower"]


LOST = Column("lost", "lost", "count", "sum")
DUP = Column("dup", "dup", "count", "sum")
ERRORS = Column("errors", "errors", "count", "sum")


@dataclass(frozen=True)
class Scenario:
    """A named, self-describing benchmark scenario."""

    name: str
    title: str
    measures: str
    columns: tuple[Column, ...]
    ratios: tuple[Ratio, ...]
    run: Callable[[Cell], Metrics]
    unsupported: Callable[[Payload], str | None] = lambda _subject: None
    #: Metric keys its chart shows (one bar each per subject); default: the first ratio's.
    chart: tuple[str, ...] = ()
    #: The chart's value axis label with its unit; default: the first charted column's header.
    chart_axis: str = ""
