"""Cell results, their aggregation over repetitions, and the ours-vs-others ratios."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.scenarios.base import Column, Scenario
from benchmarks.stats import median
from benchmarks.subjects import OURS

Metrics = dict[str, Any]


@dataclass
class CellResult:
    """One subject in one scenario in one repetition."""

    rep: int
    scenario: str
    subject: str
    status: str  # "ok", or "error: …", "stuck: …", "unavailable: …", "n/a: …"
    seconds: float = 0.0
    metrics: Metrics = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the measurement completed (it may still report loss or errors)."""
        return self.status == "ok"


@dataclass
class Summary:
    """One table row: a subject's aggregated numbers in one scenario."""

    subject: str
    values: dict[str, float | None]
    ok_reps: int
    reps: int
    statuses: list[str]
    notes: list[str]


def aggregate(scenario: Scenario, subject: str, cells: list[CellResult]) -> Summary:
    """Median (or sum / max, per column) over the repetitions that measured something.

    A failed cell may still carry partial numbers (e.g. the connections a layer opened
    before it got stuck); they count, and the status column says what went wrong.
    """
    done = [cell for cell in cells if cell.ok]
    measured = [cell for cell in cells if cell.metrics]
    values = {column.key: _aggregate(column, measured) for column in scenario.columns}
    statuses = sorted({cell.status for cell in cells if not cell.ok})
    notes: list[str] = []
    for cell in done:
        for note in [*cell.metrics.get("notes", []), *cell.metrics.get("error_samples", [])]:
            if note not in notes:
                notes.append(note)
    return Summary(subject, values, len(done), len(cells), statuses, notes[:4])


def _aggregate(column: Column, cells: list[CellResult]) -> float | None:
    numbers = [cell.metrics.get(column.key) for cell in cells]
    present = [float(n) for n in numbers if isinstance(n, int | float)]
    if not present:
        return None
    if column.agg == "sum":
        return sum(present)
    if column.agg == "max":
        return max(present)
    return median(present)


def ratio(
    scenario_rows: dict[str, Summary], key: str, subject: str, ours_name: str = OURS
) -> float | None:
    """ours ÷ subject for one metric, from the same run's aggregated values; `ours_name`
    picks which configuration of ours (default: the one compared with every peer)."""
    ours = scenario_rows.get(ours_name)
    other = scenario_rows.get(subject)
    if ours is None or other is None:
        return None
    mine, theirs = ours.values.get(key), other.values.get(key)
    if mine is None or theirs is None or theirs == 0:
        return None
    return mine / theirs
