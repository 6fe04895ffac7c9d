"""One chart per scenario, drawn from a run's aggregated numbers (PNG, matplotlib Agg).

Horizontal bars, a row per subject (ours first and in its own colour), one bar per
charted metric; each bar is labelled with its value and its ratio to the raw floor of
the same run. The module takes plain numbers, so drawing needs neither the servers nor
the layers. File names are `<scenario>.png`; the files are generated, never edited.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Values = Mapping[str, Mapping[str, float | None]]  # subject -> metric key -> value

#: The floor the bars are compared with, in order of preference (raw_pg cannot carry
#: every scenario, e.g. 1 MiB messages).
FLOORS = ("raw_pg", "raw_redis")
OURS_COLOURS = ("#1f5fa8", "#6fa0dc")
OTHER_COLOURS = ("#8a8a8a", "#c4c4c4")
FLOOR_COLOURS = ("#3a7d44", "#8cc28f")


@dataclass(frozen=True)
class Series:
    """One charted metric: its key in the results and its legend label."""

    key: str
    label: str


@dataclass(frozen=True)
class ChartSpec:
    """What to draw for one scenario."""

    scenario: str
    title: str
    axis: str  # the value axis label, with its unit
    better: Literal["higher", "lower"]
    series: tuple[Series, ...]


def floor_of(spec: ChartSpec, values: Values) -> str | None:
    """The first raw floor that measured the scenario's first metric."""
    for floor in FLOORS:
        if values.get(floor, {}).get(spec.series[0].key):
            return floor
    return None


def draw(
    spec: ChartSpec,
    values: Values,
    path: Path,
    *,
    ours: Sequence[str] = (),
    statuses: Mapping[str, str] | None = None,
) -> Path:
    """Draw one scenario's chart to `path` (PNG); subjects without a value say why."""
    pyplot = _pyplot()
    statuses = statuses or {}
    subjects = list(values)
    floor = floor_of(spec, values)
    rows = len(subjects)
    height = 0.8 / len(spec.series)
    figure, axes = pyplot.subplots(figsize=(9.0, 1.4 + rows * (0.2 + 0.32 * len(spec.series))))
    try:
        top = max(
            (v for row in values.values() for s in spec.series if (v := row.get(s.key))),
            default=1.0,
        )
        for index, series in enumerate(spec.series):
            positions = [r + (index - (len(spec.series) - 1) / 2) * height for r in range(rows)]
            numbers = [values[subject].get(series.key) for subject in subjects]
            colours = [_colour(subject, index, ours, floor) for subject in subjects]
            bars = axes.barh(
                positions,
                [n or 0.0 for n in numbers],
                height=height * 0.9,
                color=colours,
                label=series.label if len(spec.series) > 1 else None,
            )
            base = values.get(floor, {}).get(series.key) if floor else None
            for bar, subject, number in zip(bars, subjects, numbers, strict=True):
                text = _label(number, base, floor, statuses.get(subject))
                axes.text(
                    bar.get_width() + top * 0.01,
                    bar.get_y() + bar.get_height() / 2,
                    text,
                    va="center",
                    fontsize=8,
                )
        axes.set_yticks(range(rows))
        axes.set_yticklabels(subjects)
        for tick, subject in zip(axes.get_yticklabels(), subjects, strict=True):
            if subject in ours:
                tick.set_fontweight("bold")
        axes.invert_yaxis()  # first subject (ours) on top
        axes.set_xlim(0, top * 1.45)
        axes.set_xlabel(f"{spec.axis} ({spec.better} is better)")
        title = textwrap.fill(f"{spec.scenario}: {spec.title}", 90)
        floor_note = f"\nlabels: value (value ÷ {floor}, same run)" if floor else ""
        axes.set_title(f"{title}{floor_note}", fontsize=10)
        if len(spec.series) > 1:
            axes.legend(loc="lower right", fontsize=8)
        axes.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png", dpi=100, metadata={"Software": None})
    finally:
        pyplot.close(figure)
    return path


def _pyplot() -> Any:
    """matplotlib, imported only when a chart is drawn, on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _colour(subject: str, series: int, ours: Sequence[str], floor: str | None) -> str:
    palette = (
        OURS_COLOURS if subject in ours else FLOOR_COLOURS if subject in FLOORS else OTHER_COLOURS
    )
    return palette[series % len(palette)]


def _label(number: float | None, base: float | None, floor: str | None, status: str | None) -> str:
    if number is None:
        return (status or "no value").split(":", 1)[0]
    shown = f"{number:,.0f}" if number >= 100 else f"{number:.3g}"
    if base:
        return f"{shown} ({number / base:.2f}x)"
    return shown


def draw_run(
    specs: Sequence[ChartSpec],
    values: Mapping[str, Values],
    directory: Path,
    *,
    ours: Sequence[str] = (),
    statuses: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Path]:
    """Draw every scenario of a run into `directory`; returns scenario -> file."""
    statuses = statuses or {}
    return {
        spec.scenario: draw(
            spec,
            values[spec.scenario],
            directory / f"{spec.scenario}.png",
            ours=ours,
            statuses=statuses.get(spec.scenario),
        )
        for spec in specs
        if spec.scenario in values
    }
