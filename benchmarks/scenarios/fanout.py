"""Fan-out: a 100-member group over two receiving processes, a third process sends.

Every member is its own new_channel() with its own consumer task. Deliveries/s counts
member deliveries (100 per group_send). The raw floors send ONE notification per
group_send on a group topic; the server hands one copy to each listening process, which
fans out locally: the least work any layer can do.
"""

from __future__ import annotations

from benchmarks.roles import SENDER
from benchmarks.scenarios.base import DUP, ERRORS, LOST, Column, Ratio, Scenario
from benchmarks.scenarios.cell import Cell, Metrics
from benchmarks.scenarios.delivery import DeliveryRun

GROUP = "bench_fanout"
PROCESSES = 2
MEMBERS_PER_PROCESS = 50


def run_fanout(cell: Cell) -> Metrics:
    """Sequential awaited group_send() calls; per-member accounting."""
    sizes = cell.sizes
    count, warm = sizes.fanout_sends, sizes.fanout_warm
    receiver = {
        "members": MEMBERS_PER_PROCESS,
        "group": GROUP,
        "warm_total": warm * MEMBERS_PER_PROCESS,
        "expected_total": count * MEMBERS_PER_PROCESS,
    }
    run = DeliveryRun(cell)
    try:
        run.start_receivers([receiver] * PROCESSES)
        run.start_sender(
            SENDER,
            deliveries_per_message=PROCESSES * MEMBERS_PER_PROCESS,
            targets=[GROUP],
            mode="group_send",
            concurrency=1,
            count=count,
            warm=warm,
        )
        run.prime()
        outcome = run.measure()
        return {**outcome.common_metrics(), "call_p50_ms": outcome.call_p50_ms()}
    finally:
        cell.stop_all()


FANOUT = Scenario(
    name="fanout",
    title="group fan-out, 100 members in 2 processes",
    measures="A third process awaits group_send() calls one after another; each reaches "
    "100 members (50 per receiving process). Latency is per member delivery.",
    columns=(
        Column("rate", "deliveries/s", "rate"),
        Column("p50_ms", "delivery p50 ms", "ms"),
        Column("p99_ms", "delivery p99 ms", "ms"),
        Column("call_p50_ms", "group_send() p50 ms", "ms"),
        LOST,
        DUP,
        ERRORS,
    ),
    ratios=(
        Ratio("rate", "ours ÷ subject (deliveries/s)", "higher"),
        Ratio("call_p50_ms", "ours ÷ subject (group_send p50)", "lower"),
    ),
    run=run_fanout,
)
