"""The lead's performance targets, checked against the same run's numbers."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.results import Summary, ratio
from benchmarks.subjects import OURS, OURS_POSTGRES, OURS_REDIS

Rows = dict[str, dict[str, Summary]]  # scenario -> subject -> summary

#: A target on `EVERY_CELL` adds up its key over every scenario's row of the target's
#: subject and the other configurations on its engine (for ours on postgres: without
#: encryption, with hooks, when they ran), so one lost message anywhere fails it.
EVERY_CELL = "*"

#: The rows an `EVERY_CELL` target of each subject adds up.
FAMILIES: dict[str, tuple[str, ...]] = {OURS: OURS_POSTGRES, OURS_REDIS: (OURS_REDIS,)}


@dataclass(frozen=True)
class Target:
    """Either subject ÷ peer compared with a factor, or the subject's own value with a
    bound. The subject is a configuration of ours: `OURS` (postgres) unless given."""

    text: str
    scenario: str
    key: str
    op: str  # ">=", "<=", "<", "=="
    bound: float
    peer: str | None = None  # None: absolute bound on the subject's value
    subject: str = OURS


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}

#: Ratios of the run published on 2026-12-04 (full sizes, 3 repetitions): the targets
#: below hold later runs to "no worse than that".
PUBLISHED = {
    "idle_500 wake ÷ raw_pg": 0.52,
    "idle_500 conns ÷ raw_pg": 2.00,
    "large_1mib msgs/s ÷ redis_core": 0.89,
    "large_1mib msgs/s ÷ raw_redis": 0.25,
    "p2p_50 msgs/s ÷ raw_pg": 3.74,
    "p2p_50 msgs/s ÷ channels_postgres": 6.59,
    "sync_group_send calls/s ÷ channels_postgres": 1.57,
    "sync_group_send calls/s ÷ redis_core": 2.17,
}


def _published(text: str, scenario: str, key: str, op: str, peer: str) -> Target:
    """A "no worse than the published ratio" target."""
    bound = PUBLISHED[text]
    shown = "≥" if op == ">=" else "≤"
    return Target(f"{text} {shown} {bound:.2f}x (published)", scenario, key, op, bound, peer)


TARGETS: tuple[Target, ...] = (
    Target("p2p one sender ≥ 0.9x raw_pg", "p2p_1", "rate", ">=", 0.9, "raw_pg"),
    Target("p2p one sender ≥ 3x redis_core", "p2p_1", "rate", ">=", 3, "redis_core"),
    _published("p2p_50 msgs/s ÷ raw_pg", "p2p_50", "rate", ">=", "raw_pg"),
    _published("p2p_50 msgs/s ÷ channels_postgres", "p2p_50", "rate", ">=", "channels_postgres"),
    Target("rtt p50 ≤ 1.3x raw_pg", "rtt", "p50_ms", "<=", 1.3, "raw_pg"),
    Target("rtt p50 below channels_postgres", "rtt", "p50_ms", "<", 1, "channels_postgres"),
    Target("rtt p50 below redis_core", "rtt", "p50_ms", "<", 1, "redis_core"),
    Target("fanout deliveries/s ≥ 0.6x raw_pg", "fanout", "rate", ">=", 0.6, "raw_pg"),
    Target(
        "fanout deliveries/s ≥ 6x channels_postgres", "fanout", "rate", ">=", 6, "channels_postgres"
    ),
    Target("fanout group_send() p50 < 1 ms", "fanout", "call_p50_ms", "<", 1.0),
    Target(
        "group_fanout_procs group_send() p50: R=8 ≤ 1.5x R=1",
        "group_fanout_procs",
        "call_p50_growth",
        "<=",
        1.5,
    ),
    Target(
        "group_fanout_procs server CPU per call: R=8 ≤ 1.5x R=1",
        "group_fanout_procs",
        "cpu_growth",
        "<=",
        1.5,
    ),
    Target("idle_500 ≤ 3 server connections", "idle_500", "conns", "<=", 3),
    _published("idle_500 conns ÷ raw_pg", "idle_500", "conns", "<=", "raw_pg"),
    _published("idle_500 wake ÷ raw_pg", "idle_500", "wake_ms", "<=", "raw_pg"),
    Target("idle_500 0 errors", "idle_500", "errors", "==", 0),
    Target("idle_500 idle CPU < 0.5 %", "idle_500", "cpu_pct", "<", 0.5),
    _published("large_1mib msgs/s ÷ redis_core", "large_1mib", "rate", ">=", "redis_core"),
    _published("large_1mib msgs/s ÷ raw_redis", "large_1mib", "rate", ">=", "raw_redis"),
    _published(
        "sync_group_send calls/s ÷ channels_postgres",
        "sync_group_send",
        "rate",
        ">=",
        "channels_postgres",
    ),
    _published(
        "sync_group_send calls/s ÷ redis_core", "sync_group_send", "rate", ">=", "redis_core"
    ),
    Target(
        "sync_group_send calls/s ≥ 4x channels_postgres",
        "sync_group_send",
        "rate",
        ">=",
        4,
        "channels_postgres",
    ),
    Target("sync_group_send peak conns ≤ 2", "sync_group_send", "peak_conns", "<=", 2),
    Target("lost 0 in every cell (ours)", EVERY_CELL, "lost", "==", 0),
    Target("dup 0 in every cell (ours)", EVERY_CELL, "dup", "==", 0),
)


def _redis(
    text: str, scenario: str, key: str, op: str, bound: float, peer: str | None = None
) -> Target:
    """A target of ours on the redis engine."""
    return Target(text, scenario, key, op, bound, peer, OURS_REDIS)


#: The redis engine's targets (its issue), against the Redis subjects of the same run.
#: Cluster scale-out is measured by benchmarks/cluster.py, which starts servers of its own.
REDIS_TARGETS: tuple[Target, ...] = (
    _redis("p2p one sender ≥ 2x redis_core", "p2p_1", "rate", ">=", 2, "redis_core"),
    _redis("p2p one sender ≥ 0.8x raw_redis", "p2p_1", "rate", ">=", 0.8, "raw_redis"),
    _redis("p2p 50 senders ≥ 1.5x raw_redis", "p2p_50", "rate", ">=", 1.5, "raw_redis"),
    _redis("rtt p50 ≤ 1.3x raw_redis", "rtt", "p50_ms", "<=", 1.3, "raw_redis"),
    _redis("rtt p50 below redis_core", "rtt", "p50_ms", "<", 1, "redis_core"),
    _redis("fanout deliveries/s ≥ redis_pubsub", "fanout", "rate", ">=", 1, "redis_pubsub"),
    _redis("fanout 0 lost", "fanout", "lost", "==", 0),
    _redis("idle_500 ≤ 3 server connections", "idle_500", "conns", "<=", 3),
    _redis("idle_500 0 errors", "idle_500", "errors", "==", 0),
    _redis("idle_500 0 duplicates", "idle_500", "dup", "==", 0),
    _redis("idle_500 idle CPU < 0.5 %", "idle_500", "cpu_pct", "<", 0.5),
    _redis("large_1mib msgs/s ≥ redis_core", "large_1mib", "rate", ">=", 1, "redis_core"),
    _redis("lost 0 in every cell", EVERY_CELL, "lost", "==", 0),
    _redis("dup 0 in every cell", EVERY_CELL, "dup", "==", 0),
)

#: Every target the report shows, a table per subject.
ALL_TARGETS = TARGETS + REDIS_TARGETS


@dataclass(frozen=True)
class Verdict:
    """A target with the measured value and whether it is met (None: not measurable)."""

    target: Target
    measured: float | None
    met: bool | None


def check(rows: Rows, targets: tuple[Target, ...] = ALL_TARGETS) -> list[Verdict]:
    """Evaluate every target whose scenario and subject were part of the run (a subject
    that was selected but failed is part of it: its targets are not measured)."""
    verdicts = []
    for target in targets:
        if not _ran(rows, target.subject):
            continue
        if target.scenario == EVERY_CELL:
            value = _every_cell(rows, target.key, FAMILIES.get(target.subject, (target.subject,)))
        elif target.scenario not in rows:
            continue
        elif target.peer is None:
            ours = rows[target.scenario].get(target.subject)
            value = ours.values.get(target.key) if ours and ours.ok_reps else None
        else:
            value = ratio(rows[target.scenario], target.key, target.peer, target.subject)
        met = None if value is None else _OPS[target.op](value, target.bound)
        verdicts.append(Verdict(target, value, met))
    return verdicts


def _ran(rows: Rows, subject: str) -> bool:
    """Whether the subject was part of the run (it has a row, even a failed one)."""
    return any(subject in scenario_rows for scenario_rows in rows.values())


def _every_cell(rows: Rows, key: str, subjects: tuple[str, ...]) -> float | None:
    """The key summed over these subjects' rows; None when they measured nothing."""
    values = [
        row.values.get(key)
        for scenario_rows in rows.values()
        for subject in subjects
        if (row := scenario_rows.get(subject)) is not None and row.ok_reps
    ]
    present = [value for value in values if value is not None]
    return sum(present) if present else None
