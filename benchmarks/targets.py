"""The lead's performance targets, checked against the same run's numbers."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.results import Summary, ratio
from benchmarks.subjects import OURS

Rows = dict[str, dict[str, Summary]]  # scenario -> subject -> summary


@dataclass(frozen=True)
class Target:
    """Either ours ÷ peer compared with a factor, or ours' own value with a bound."""

    text: str
    scenario: str
    key: str
    op: str  # ">=", "<=", "<", "=="
    bound: float
    peer: str | None = None  # None: absolute bound on ours' value


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}

TARGETS: tuple[Target, ...] = (
    Target("p2p one sender ≥ 3x channels_postgres", "p2p_1", "rate", ">=", 3, "channels_postgres"),
    Target("p2p one sender ≥ 3x redis_core", "p2p_1", "rate", ">=", 3, "redis_core"),
    Target("p2p one sender ≥ 0.7x raw_pg", "p2p_1", "rate", ">=", 0.7, "raw_pg"),
    Target("p2p 50 senders ≥ 2x raw_pg", "p2p_50", "rate", ">=", 2, "raw_pg"),
    Target("rtt p50 ≤ 1.5x raw_pg", "rtt", "p50_ms", "<=", 1.5, "raw_pg"),
    Target("rtt p50 below channels_postgres", "rtt", "p50_ms", "<", 1, "channels_postgres"),
    Target("rtt p50 below redis_core", "rtt", "p50_ms", "<", 1, "redis_core"),
    Target(
        "fanout deliveries/s ≥ 3x channels_postgres", "fanout", "rate", ">=", 3, "channels_postgres"
    ),
    Target("fanout group_send() p50 < 1 ms", "fanout", "call_p50_ms", "<", 1.0),
    Target("idle_500 ≤ 3 server connections", "idle_500", "conns", "<=", 3),
    Target("idle_500 0 errors", "idle_500", "errors", "==", 0),
    Target("idle_500 0 duplicates", "idle_500", "dup", "==", 0),
    Target("idle_500 idle CPU < 0.5 %", "idle_500", "cpu_pct", "<", 0.5),
)


@dataclass(frozen=True)
class Verdict:
    """A target with the measured value and whether it is met (None: not measurable)."""

    target: Target
    measured: float | None
    met: bool | None


def check(rows: Rows) -> list[Verdict]:
    """Evaluate every target whose scenario was run."""
    verdicts = []
    for target in TARGETS:
        scenario_rows = rows.get(target.scenario)
        if scenario_rows is None:
            continue
        if target.peer is None:
            ours = scenario_rows.get(OURS)
            value = ours.values.get(target.key) if ours and ours.ok_reps else None
        else:
            value = ratio(scenario_rows, target.key, target.peer)
        met = None if value is None else _OPS[target.op](value, target.bound)
        verdicts.append(Verdict(target, value, met))
    return verdicts
