"""500 idle receivers in one process: connections held, idle CPU, memory, wake-up.

One process creates 500 channels and starts 500 consumer tasks that enter receive() in
the same loop iteration (the thundering start of a busy ASGI worker). Once a probe has
reached every channel, nothing is sent for a window while the orchestrator reads the
process' CPU time, RSS and server connections. Then another process sends one message
to each channel (50 concurrent sender tasks) and the time until all 500 woke is taken.
"""

from __future__ import annotations

import time

from benchmarks.control import Stuck, WorkerFailed
from benchmarks.monitor import ConnectionSampler, cpu_seconds, rss_mib
from benchmarks.roles import SENDER
from benchmarks.scenarios.base import DUP, ERRORS, LOST, Column, Ratio, Scenario
from benchmarks.scenarios.cell import Cell, Metrics, PartialResult
from benchmarks.scenarios.delivery import DeliveryRun

#: After priming, let stragglers (late probes, duplicate deliveries) drain first.
SETTLE_S = 1.0
SENDER_TASKS = 50


def run_idle(cell: Cell) -> Metrics:
    """Measure the idle process between priming and the wake-up burst."""
    sizes, monitor = cell.sizes, cell.monitor
    channels_count = sizes.idle_channels
    run = DeliveryRun(cell)
    try:
        [channels] = run.start_receivers(
            [
                {
                    "members": channels_count,
                    "warm_total": 0,
                    "expected_total": channels_count,
                    "start": "together",
                }
            ]
        )
        pid = run.receivers[0].pid
        seen: Metrics = {}
        with ConnectionSampler(monitor, pid, cell.server) as sampler:
            try:
                run.start_sender(
                    SENDER,
                    deliveries_per_message=1,
                    targets=channels,
                    mode="send",
                    concurrency=SENDER_TASKS,
                    count=channels_count,
                    warm=0,
                )
                run.prime()
                time.sleep(SETTLE_S)
                seen["conns"] = monitor.server_connections(pid, cell.server)
                seen["rss_mib"] = rss_mib(pid)
                cpu_start, wall_start = cpu_seconds(pid), time.monotonic()
                time.sleep(sizes.idle_window_s)
                cpu = cpu_seconds(pid) - cpu_start
                seen["cpu_pct"] = 100 * cpu / (time.monotonic() - wall_start)
                seen["conns"] = max(seen["conns"], monitor.server_connections(pid, cell.server))
                outcome = run.measure()
            except (Stuck, WorkerFailed) as exc:
                seen.setdefault("conns", monitor.server_connections(pid, cell.server))
                seen["peak_conns"] = max(sampler.peak, seen["conns"])
                kind = "stuck" if isinstance(exc, Stuck) else "error"
                raise PartialResult(f"{kind}: {exc}", seen) from exc
        last = outcome.last_ns
        return {
            **outcome.common_metrics(),
            **seen,
            "peak_conns": max(sampler.peak, seen["conns"]),
            "wake_ms": (last - outcome.sent["first_ns"]) / 1e6 if last else None,
        }
    finally:
        cell.stop_all()


IDLE_500 = Scenario(
    name="idle_500",
    title="500 idle receivers in one process",
    measures="Server connections the receiving process holds while 500 receive() calls "
    "wait (confirmed server-side by client port), peak client sockets, its CPU "
    "over the idle window, RSS, then the time to wake all 500.",
    columns=(
        Column("conns", "server conns", "count", "max"),
        Column("peak_conns", "peak conns", "count", "max"),
        Column("cpu_pct", "idle CPU %", "pct"),
        Column("rss_mib", "RSS MiB", "mib"),
        Column("wake_ms", "wake all ms", "ms"),
        ERRORS,
        LOST,
        DUP,
    ),
    ratios=(
        Ratio("conns", "ours ÷ subject (conns)", "lower"),
        Ratio("wake_ms", "ours ÷ subject (wake)", "lower"),
    ),
    run=run_idle,
    chart=("wake_ms",),
    chart_axis="time to wake all 500 (ms)",
)
