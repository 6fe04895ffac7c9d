"""Point-to-point: one receiving process, one sending process, one channel.

Covers p2p_1 (one sender task awaiting each send), p2p_50 (50 such tasks) and large_1mib
(one sender, 1 MiB of incompressible bytes per message, at most 4 in flight).
Throughput runs from the first send to the last first-arrival; latency is send-start to
arrival, per message, so in the open-loop scenarios it includes any queue that builds
up in front of a receiver slower than its sender.
"""

from __future__ import annotations

from benchmarks.roles import SENDER
from benchmarks.scenarios.base import DUP, ERRORS, LOST, Column, Ratio, Scenario
from benchmarks.scenarios.cell import Cell, Metrics, Payload
from benchmarks.scenarios.delivery import DeliveryRun

MIB = 1_048_576
#: Messages of 1 MiB in flight at most (see benchmarks/window.py).
LARGE_WINDOW = 4

RATE = Column("rate", "msgs/s", "rate")
P50 = Column("p50_ms", "p50 ms", "ms")
P99 = Column("p99_ms", "p99 ms", "ms")
RATE_RATIO = Ratio("rate", "ours ÷ subject (msgs/s)", "higher")


def _run(
    cell: Cell, *, count: int, warm: int, concurrency: int, blob_bytes: int = 0, window: int = 0
) -> Metrics:
    run = DeliveryRun(cell)
    try:
        [channels] = run.start_receivers(
            [{"members": 1, "warm_total": warm, "expected_total": count}]
        )
        run.start_sender(
            SENDER,
            deliveries_per_message=1,
            targets=channels,
            mode="send",
            concurrency=concurrency,
            count=count,
            warm=warm,
            blob_bytes=blob_bytes,
            window=window,
        )
        run.prime()
        return run.measure().common_metrics()
    finally:
        cell.stop_all()


def run_p2p_1(cell: Cell) -> Metrics:
    """One sender task."""
    sizes = cell.sizes
    return _run(cell, count=sizes.p2p_count, warm=sizes.p2p_warm, concurrency=1)


def run_p2p_50(cell: Cell) -> Metrics:
    """Fifty concurrent sender tasks in one process."""
    sizes = cell.sizes
    return _run(cell, count=sizes.p2p50_count, warm=sizes.p2p50_warm, concurrency=50)


def run_large(cell: Cell) -> Metrics:
    """One sender task, 1 MiB per message."""
    sizes = cell.sizes
    return _run(
        cell,
        count=sizes.large_count,
        warm=sizes.large_warm,
        concurrency=1,
        blob_bytes=MIB,
        window=LARGE_WINDOW,
    )


def _no_large_notify(subject: Payload) -> str | None:
    if subject["kind"] == "raw_pg":
        return "n/a: a NOTIFY payload must be < 8000 bytes and the floor has no table"
    return None


P2P_1 = Scenario(
    name="p2p_1",
    title="point-to-point, one sender task",
    measures="One task awaits each send() to a process-specific channel received in "
    "another process. Sequential round trips to the server dominate.",
    columns=(RATE, P50, P99, LOST, DUP, ERRORS),
    ratios=(RATE_RATIO,),
    run=run_p2p_1,
)

P2P_50 = Scenario(
    name="p2p_50",
    title="point-to-point, 50 concurrent sender tasks",
    measures="50 tasks in one process, each awaiting its own send()s, to one channel "
    "received in another process. Shows whether sends pipeline or batch.",
    columns=(RATE, P50, P99, LOST, DUP, ERRORS),
    ratios=(RATE_RATIO,),
    run=run_p2p_50,
)

LARGE = Scenario(
    name="large_1mib",
    title="point-to-point, 1 MiB messages",
    measures="One task sends messages holding 1,048,576 random bytes (the spec requires at "
    f"least 1 MB), with at most {LARGE_WINDOW} not yet acknowledged by the receiver. "
    "Exercises the path for payloads NOTIFY cannot carry.",
    columns=(RATE, P50, LOST, DUP, ERRORS),
    ratios=(RATE_RATIO, Ratio("p50_ms", "ours ÷ subject (p50)", "lower")),
    run=run_large,
    unsupported=_no_large_notify,
)
