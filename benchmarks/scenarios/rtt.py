"""Ping-pong round-trip latency between two processes.

The pinger awaits send() then receive() on its own channel; the ponger echoes each ping
to the reply channel the ping names. No extra task or queue sits on the measured path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks.control import Stuck
from benchmarks.inbox import MEASURED, PROBE, WARM, now_ns
from benchmarks.scenarios.base import DUP, ERRORS, LOST, Column, Ratio, Scenario
from benchmarks.scenarios.cell import Cell, Metrics
from benchmarks.stats import ns_to_ms, percentile, rate
from benchmarks.worker import LINGER_S, AsyncContext

PINGER = "benchmarks.scenarios.rtt:pinger"
PONGER = "benchmarks.scenarios.rtt:ponger"
PROBE_INTERVAL_S = 0.1
MAX_ECHO_FAILURES = 20


async def ponger(ctx: AsyncContext) -> None:
    """Echo every message to the channel named in its "reply" field until told to stop."""
    layer = ctx.layer
    await layer.flush()
    channel = await layer.new_channel()
    state = {"echoed": 0}
    ctx.link.progress = lambda: dict(state)
    echo = asyncio.create_task(_echo(layer, channel, ctx, state))
    ctx.link.send("ready", channel=channel)
    await ctx.link.wait("stop", LINGER_S)
    ctx.link.send("report", errors=ctx.errors.count, error_samples=ctx.errors.samples, **state)
    del echo


async def _echo(layer: Any, channel: str, ctx: AsyncContext, state: dict[str, int]) -> None:
    failures = 0
    while failures < MAX_ECHO_FAILURES:
        try:
            message = await layer.receive(channel)
            await layer.send(message["reply"], {"type": message["type"], "seq": message["seq"]})
        except Exception as exc:
            ctx.errors.add(f"echo: {exc!r}")
            failures += 1
            continue
        state["echoed"] += 1


async def pinger(ctx: AsyncContext) -> None:
    """Prime, warm up, then time `count` sequential round trips."""
    layer, params = ctx.layer, ctx.params
    target, channel = params["target"], await ctx.layer.new_channel()
    state: dict[str, Any] = {"done": 0, "stale": 0}
    ctx.link.progress = lambda: dict(state)
    await _prime(layer, target, channel, params["prime_timeout"])
    ctx.link.send("primed")
    for seq in range(params["warm"]):
        await _round_trip(layer, target, channel, WARM, seq, state)
    rtts: list[int] = []
    first_ns = now_ns()
    for seq in range(params["count"]):
        start = now_ns()
        await _round_trip(layer, target, channel, MEASURED, seq, state)
        rtts.append(now_ns() - start)
    ctx.link.send(
        "report",
        rtt_ns=rtts,
        first_ns=first_ns,
        end_ns=now_ns(),
        dup=state["stale"],
        errors=ctx.errors.count,
        error_samples=ctx.errors.samples,
    )


async def _prime(layer: Any, target: str, channel: str, timeout: float) -> None:
    """Ping until one pong comes back; one pending receive, never cancelled."""
    pending = asyncio.ensure_future(layer.receive(channel))
    deadline = now_ns() + int(timeout * 1e9)
    while not pending.done():
        if now_ns() > deadline:
            raise Stuck(f"no pong to a probe within {timeout} s")
        await layer.send(target, {"type": PROBE, "seq": -1, "reply": channel})
        await asyncio.wait({pending}, timeout=PROBE_INTERVAL_S)
    pending.result()
    await asyncio.sleep(PROBE_INTERVAL_S)  # let in-flight probe pongs arrive now


async def _round_trip(
    layer: Any, target: str, channel: str, kind: str, seq: int, state: dict[str, Any]
) -> None:
    await layer.send(target, {"type": kind, "seq": seq, "reply": channel})
    while True:
        pong = await layer.receive(channel)
        if pong["type"] == kind and pong["seq"] == seq:
            state["done"] += 1
            return
        state["stale"] += pong["type"] != PROBE  # a repeated pong is a duplicate


def run_rtt(cell: Cell) -> Metrics:
    """Ponger first (it flushes), then the pinger, which reports everything."""
    sizes = cell.sizes
    try:
        ponger_worker = cell.spawn(PONGER, "ponger")
        target = ponger_worker.expect("ready", sizes.step_timeout_s)["channel"]
        pinger_worker = cell.spawn(
            PINGER,
            "pinger",
            target=target,
            count=sizes.rtt_count,
            warm=sizes.rtt_warm,
            prime_timeout=sizes.step_timeout_s,
        )
        pinger_worker.expect("primed", sizes.step_timeout_s)
        report = pinger_worker.expect_while_progressing(
            "report", "done", sizes.stall_s, sizes.step_timeout_s + sizes.measure_timeout_s
        )
        if report is None:
            state = pinger_worker.progress()
            pinger_worker.dump_stacks()
            raise Stuck(
                f"{pinger_worker.label}: no round trip completed for "
                f"{sizes.stall_s:.0f} s (progress: {state}; stacks in its log)"
            )
        ponger_worker.tell("stop")
        echo = ponger_worker.expect("report", sizes.step_timeout_s)
        rtts = ns_to_ms(report["rtt_ns"])
        return {
            "p50_ms": percentile(rtts, 0.50),
            "p99_ms": percentile(rtts, 0.99),
            "rate": rate(len(rtts), report["first_ns"], report["end_ns"]),
            "lost": sizes.rtt_count - len(rtts),
            "dup": report["dup"],
            "errors": report["errors"] + echo["errors"],
            "error_samples": [*report["error_samples"], *echo["error_samples"]][:3],
        }
    finally:
        cell.stop_all()


RTT = Scenario(
    name="rtt",
    title="ping-pong round trip",
    measures="Two processes; the pinger awaits send() then receive() of the echo, one "
    "round trip at a time, so the number is pure latency (no queueing).",
    columns=(
        Column("p50_ms", "p50 ms", "ms"),
        Column("p99_ms", "p99 ms", "ms"),
        Column("rate", "round trips/s", "rate"),
        LOST,
        DUP,
        ERRORS,
    ),
    ratios=(Ratio("p50_ms", "ours ÷ subject (p50)", "lower"),),
    run=run_rtt,
    chart_axis="round trip p50 (ms)",
)
