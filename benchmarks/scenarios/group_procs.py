"""Group fan-out across many receiving processes: does a group_send() cost grow with them?

One group, 100 members per receiving process, R = 1 and then R = 8 receiving processes
(100 and 800 members) in the same cell; a separate process awaits group_send() calls one
after another. For each R: the call's p50, the server's CPU per call (PostgreSQL backends
of the bench database, or the Redis server process, read from /proc over the measured
phase), and deliveries/s. The R=8 ÷ R=1 columns show how each subject scales with the
number of processes a group spans; a layer whose work per call follows the processes,
not the members, keeps them near 1.
"""

from __future__ import annotations

from benchmarks.control import Stuck, WorkerFailed
from benchmarks.monitor import cpu_between
from benchmarks.roles import SENDER
from benchmarks.scenarios.base import DUP, ERRORS, LOST, Column, Ratio, Scenario
from benchmarks.scenarios.cell import Cell, Metrics, PartialResult
from benchmarks.scenarios.delivery import DeliveryRun
from benchmarks.subjects import REDIS_PREFIX

GROUP = "bench_procs"
MEMBERS_PER_PROCESS = 100
FEW, MANY = 1, 8


def _measure(cell: Cell, processes: int) -> Metrics:
    """One R: receivers, sender, priming, then the measured calls with server CPU read."""
    sizes, monitor = cell.sizes, cell.monitor
    count, warm = sizes.procs_sends, sizes.procs_warm
    receiver = {
        "members": MEMBERS_PER_PROCESS,
        "group": GROUP,
        "warm_total": warm * MEMBERS_PER_PROCESS,
        "expected_total": count * MEMBERS_PER_PROCESS,
    }
    run = DeliveryRun(cell)
    try:
        run.start_receivers([receiver] * processes)
        run.start_sender(
            SENDER,
            deliveries_per_message=processes * MEMBERS_PER_PROCESS,
            targets=[GROUP],
            mode="group_send",
            concurrency=1,
            count=count,
            warm=warm,
        )
        run.prime()
        before = monitor.server_cpu(cell.server)
        outcome = run.measure()
        after = monitor.server_cpu(cell.server)
    finally:
        cell.stop_all()
    calls = int(outcome.sent["ok"])
    metrics = outcome.common_metrics()
    return {
        "rate": metrics["rate"],
        "call_p50_ms": outcome.call_p50_ms(),
        "cpu_ms": 1000 * cpu_between(before, after) / calls if calls else None,
        **{key: metrics[key] for key in ("lost", "dup", "errors", "error_samples", "notes")},
    }


def _clean(cell: Cell) -> None:
    """Between the two R: no backend left over, no stale Redis keys."""
    cell.monitor.wait_quiet()
    if cell.server == "redis":
        cell.monitor.clean_redis(REDIS_PREFIX)


def _growth(many: float | None, few: float | None) -> float | None:
    return many / few if many is not None and few else None


def _merge(few: Metrics, many: Metrics | None) -> Metrics:
    merged: Metrics = {f"{key}_r{FEW}": few[key] for key in ("rate", "call_p50_ms", "cpu_ms")}
    parts = [few] if many is None else [few, many]
    if many is not None:
        merged |= {f"{key}_r{MANY}": many[key] for key in ("rate", "call_p50_ms", "cpu_ms")}
        merged["call_p50_growth"] = _growth(many["call_p50_ms"], few["call_p50_ms"])
        merged["cpu_growth"] = _growth(many["cpu_ms"], few["cpu_ms"])
    for key in ("lost", "dup", "errors"):
        merged[key] = sum(int(part[key]) for part in parts)
    merged["error_samples"] = [s for part in parts for s in part["error_samples"]][:3]
    merged["notes"] = [note for part in parts for note in part["notes"]]
    return merged


def run_group_procs(cell: Cell) -> Metrics:
    """R=1, then R=8; a failure at R=8 keeps the R=1 numbers."""
    few = _measure(cell, FEW)
    _clean(cell)
    try:
        many = _measure(cell, MANY)
    except (Stuck, WorkerFailed) as exc:
        kind = "stuck" if isinstance(exc, Stuck) else "error"
        raise PartialResult(f"{kind} at R={MANY}: {exc}", _merge(few, None)) from exc
    return _merge(few, many)


GROUP_FANOUT_PROCS = Scenario(
    name="group_fanout_procs",
    title=f"group_send() to {MEMBERS_PER_PROCESS} members per process, "
    f"R={FEW} vs R={MANY} processes",
    measures=f"One group with {MEMBERS_PER_PROCESS} members in each of R receiving processes "
    f"(R={FEW}: {FEW * MEMBERS_PER_PROCESS} members, R={MANY}: {MANY * MEMBERS_PER_PROCESS}); "
    "another process awaits group_send() calls one after another. Server CPU per call is "
    "the CPU of the bench database's backends (or of the Redis server) over the measured "
    f"phase, divided by the calls. The R={MANY}÷R={FEW} columns are each subject's own "
    "growth.",
    columns=(
        Column(f"call_p50_ms_r{FEW}", f"group_send() p50 ms R={FEW}", "ms"),
        Column(f"call_p50_ms_r{MANY}", f"group_send() p50 ms R={MANY}", "ms"),
        Column("call_p50_growth", f"p50 R={MANY}÷R={FEW}", "x"),
        Column(f"cpu_ms_r{FEW}", f"server CPU ms/call R={FEW}", "ms"),
        Column(f"cpu_ms_r{MANY}", f"server CPU ms/call R={MANY}", "ms"),
        Column("cpu_growth", f"CPU R={MANY}÷R={FEW}", "x"),
        Column(f"rate_r{FEW}", f"deliveries/s R={FEW}", "rate"),
        Column(f"rate_r{MANY}", f"deliveries/s R={MANY}", "rate"),
        LOST,
        DUP,
        ERRORS,
    ),
    ratios=(
        Ratio(f"call_p50_ms_r{MANY}", f"ours ÷ subject (p50 R={MANY})", "lower"),
        Ratio(f"cpu_ms_r{MANY}", f"ours ÷ subject (CPU/call R={MANY})", "lower"),
    ),
    run=run_group_procs,
    chart=(f"call_p50_ms_r{FEW}", f"call_p50_ms_r{MANY}"),
    chart_axis="group_send() call p50 (ms)",
)
