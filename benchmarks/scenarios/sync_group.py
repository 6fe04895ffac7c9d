"""group_send() from plain synchronous code: a Django view, signal or task runner.

The calling process has no event loop. A layer with a sync API of its own (ours:
`layer.sync.group_send(group, message)`, one background loop per process) is called
through it; every other call is literally `async_to_sync(layer.group_send)(group,
message)`, which runs on a new event loop in a new thread each time, so whatever a layer
keeps per loop (pools, connections) is created per call: the connection columns show
whether it is also released.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.control import Stuck
from benchmarks.inbox import MEASURED, PROBE, WARM, now_ns
from benchmarks.monitor import ConnectionSampler
from benchmarks.scenarios.base import DUP, ERRORS, LOST, Column, Ratio, Scenario
from benchmarks.scenarios.cell import Cell, Metrics
from benchmarks.scenarios.delivery import DeliveryRun
from benchmarks.stats import rate
from benchmarks.worker import SyncContext

SYNC_SENDER = "benchmarks.scenarios.sync_group:sync_sender"
GROUP = "bench_sync"
MEMBERS = 10
PROBE_INTERVAL_S = 0.1
MAX_FAILURES_IN_A_ROW = 20


class _Caller:
    """Counts successes and failures of the sync calls; errors are data."""

    def __init__(self, ctx: SyncContext, layer: Any) -> None:
        from asgiref.sync import async_to_sync

        self._ctx, self._layer = ctx, layer
        sync = getattr(layer, "sync", None)
        self._group_send = (
            sync.group_send
            if sync is not None and hasattr(sync, "group_send")
            else lambda group, message: async_to_sync(layer.group_send)(group, message)
        )
        self.ok = 0
        self.calls = 0
        self.in_a_row = 0

    def call(self, kind: str, seq: int) -> int | None:
        start = now_ns()
        self.calls += 1
        try:
            self._group_send(GROUP, {"type": kind, "seq": seq, "t": start})
        except Exception as exc:
            self._ctx.errors.add(f"{kind}: {exc!r}")
            self.in_a_row += 1
            return None
        self.in_a_row = 0
        self.ok += kind == MEASURED
        return now_ns() - start


def sync_sender(ctx: SyncContext) -> None:
    """Probe, warm up, then make the measured calls within a count and time budget."""
    from benchmarks.layers import build_layer

    params, link = ctx.params, ctx.link
    caller = _Caller(ctx, build_layer(ctx.subject, per_call_connections=True))
    link.progress = lambda: {"sent": caller.calls, "ok": caller.ok, "errors": ctx.errors.count}
    deadline = time.monotonic() + params["prime_timeout"]
    announced = False
    while not link.has("go"):
        if time.monotonic() > deadline or caller.in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise Stuck(f"members never confirmed a probe (errors: {ctx.errors.samples})")
        caller.call(PROBE, -1)
        if not announced:
            link.send("probing")
            announced = True
        link.arrives("go", PROBE_INTERVAL_S)
    link.wait("go", 1)
    for seq in range(params["warm"]):
        caller.call(WARM, seq)
    link.wait("measure", params["timeout"])
    durations: list[int] = []
    attempted = 0
    first_ns = now_ns()
    budget_end = time.monotonic() + params["budget_s"]
    for seq in range(params["count"]):
        if time.monotonic() > budget_end or caller.in_a_row >= MAX_FAILURES_IN_A_ROW:
            break
        attempted += 1
        took = caller.call(MEASURED, seq)
        if took is not None:
            durations.append(took)
    link.send(
        "sent",
        first_ns=first_ns,
        end_ns=now_ns(),
        call_ns=durations,
        ok=caller.ok,
        attempted=attempted,
        errors=ctx.errors.count,
        error_samples=ctx.errors.samples,
    )


def run_sync(cell: Cell) -> Metrics:
    """Members in one process, the sync caller in another, its sockets sampled."""
    sizes, monitor = cell.sizes, cell.monitor
    run = DeliveryRun(cell)
    try:
        run.start_receivers(
            [
                {
                    "members": MEMBERS,
                    "group": GROUP,
                    "warm_total": sizes.sync_warm * MEMBERS,
                    "expected_total": sizes.sync_calls * MEMBERS,
                }
            ]
        )
        sender = run.start_sender(
            SYNC_SENDER,
            deliveries_per_message=MEMBERS,
            count=sizes.sync_calls,
            warm=sizes.sync_warm,
            budget_s=sizes.sync_budget_s,
        )
        with ConnectionSampler(monitor, sender.pid, cell.server) as sampler:
            run.prime()
            outcome = run.measure()
            final = monitor.server_connections(sender.pid, cell.server)
        sent = outcome.sent
        metrics = outcome.common_metrics()
        return {
            **metrics,
            "rate": rate(sent["ok"], sent["first_ns"], sent["end_ns"]),
            "call_p50_ms": outcome.call_p50_ms(),
            "calls": f"{sent['ok']}/{sent['attempted']}",
            "peak_conns": max(sampler.peak, final),
            "final_conns": final,
        }
    finally:
        cell.stop_all()


SYNC_GROUP_SEND = Scenario(
    name="sync_group_send",
    title="group_send() from sync code (the layer's sync API, else async_to_sync)",
    measures=f"A process with no event loop makes group_send calls (ours: layer.sync."
    f"group_send; the others: async_to_sync(layer.group_send)) to a "
    f"{MEMBERS}-member group received in another process; its sockets to the "
    "server are sampled every 20 ms by the orchestrator.",
    columns=(
        Column("rate", "calls/s", "rate"),
        Column("call_p50_ms", "call p50 ms", "ms"),
        Column("peak_conns", "peak conns", "count", "max"),
        Column("final_conns", "final conns", "count", "max"),
        LOST,
        DUP,
        ERRORS,
    ),
    ratios=(Ratio("rate", "ours ÷ subject (calls/s)", "higher"),),
    run=run_sync,
)
