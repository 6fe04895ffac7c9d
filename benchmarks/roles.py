"""The two async roles shared by the delivery scenarios: a receiver and a sender.

Receiver: N member channels (`new_channel()`), optionally in a group, one consumer task
per member awaiting `receive()` directly (no extra hop that would blur latency).
Sender: probe until every member is listening, warm up, then send the measured
messages with a fixed number of concurrent tasks, each awaiting its own calls.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import ChannelFull

from benchmarks.control import Stuck
from benchmarks.inbox import MEASURED, PROBE, WARM, Inbox, now_ns
from benchmarks.window import AckWindow, acknowledge
from benchmarks.worker import AsyncContext, Errors

RECEIVER = "benchmarks.roles:receiver"
SENDER = "benchmarks.roles:sender"

#: Give up on a consumer whose receive() keeps failing (e.g. a layer out of connections).
MAX_RECEIVE_FAILURES = 20
#: Abort a sender whose calls keep failing back to back.
MAX_SEND_FAILURES = 20
#: Give up after this many ChannelFull retries in one sender (each sleeps 1 ms).
MAX_FULL_RETRIES = 10_000


async def receiver(ctx: AsyncContext) -> None:
    """Listen on `members` channels and account for everything that arrives.

    Consumers start on the orchestrator's "start", once the sender is already probing.
    `start="together"`: all enter receive() in one loop iteration (a thundering start).
    `start="one_first"`: member 0 starts alone and the others join once it has received
    a probe, like consumers joining a process that is already running.
    """
    params, layer, link = ctx.params, ctx.layer, ctx.link
    if params.get("flush"):
        await layer.flush()  # clean state: the first process of every cell flushes
    channels = [await layer.new_channel() for _ in range(params["members"])]
    if params.get("group"):
        for channel in channels:
            await layer.group_add(params["group"], channel)
    inbox = Inbox(link, len(channels), params["warm_total"], params["expected_total"])
    link.progress = lambda: {**inbox.progress(), "errors": ctx.errors.count}
    link.send("ready", channels=channels)
    await link.wait("start", params["timeout"])

    def consume(member: int) -> asyncio.Task[None]:
        return asyncio.create_task(_consume(layer, channels[member], member, inbox, ctx.errors))

    consumers = [consume(0)] if params["start"] == "one_first" else []
    if consumers:
        try:
            await asyncio.wait_for(inbox.first_member_primed.wait(), params["timeout"])
        except asyncio.TimeoutError:
            ctx.errors.add("member 0 never received a probe")
    consumers += [consume(member) for member in range(len(consumers), len(channels))]
    await asyncio.sleep(0)  # the new consumers enter receive() in this same loop iteration
    await _until_complete_or_stop(ctx, inbox, params["timeout"])
    await asyncio.sleep(params["grace"])  # late duplicates still count
    link.send("report", **inbox.report(), **_errors(ctx.errors))
    del consumers  # they keep running until the process exits: no cancellation effects


async def _consume(layer: Any, channel: str, member: int, inbox: Inbox, errors: Errors) -> None:
    failures = 0
    while True:
        try:
            message = await layer.receive(channel)
        except Exception as exc:
            errors.add(f"receive: {exc!r}")
            failures += 1
            if failures >= MAX_RECEIVE_FAILURES:
                return
            await asyncio.sleep(0.05)
            continue
        inbox.deliver(member, message, now_ns())
        try:
            await acknowledge(layer, message)
        except Exception as exc:
            errors.add(f"acknowledge: {exc!r}")


async def _until_complete_or_stop(ctx: AsyncContext, inbox: Inbox, timeout: float) -> None:
    async def retarget() -> None:
        while True:
            inbox.expect((await ctx.link.wait("expect", timeout))["total"])

    waiters = [
        asyncio.ensure_future(inbox.complete.wait()),
        asyncio.ensure_future(ctx.link.wait("stop", timeout)),
        asyncio.ensure_future(retarget()),
    ]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


def _errors(errors: Errors) -> dict[str, Any]:
    return {"errors": errors.count, "error_samples": errors.samples}


class _Sends:
    """Builds tagged messages and performs timed calls against the targets."""

    def __init__(self, ctx: AsyncContext) -> None:
        params = ctx.params
        self._targets: list[str] = params["targets"]
        self._call: Callable[[str, dict[str, Any]], Awaitable[None]] = (
            ctx.layer.group_send if params["mode"] == "group_send" else ctx.layer.send
        )
        self._blob = os.urandom(params.get("blob_bytes", 0)) or None  # incompressible
        self._addressed = len(self._targets) > 1
        self._errors = ctx.errors
        self._failures_in_a_row = 0
        self.window: AckWindow | None = None
        self.full_retries = 0
        self.sent = 0
        self.ok = 0

    async def one(self, kind: str, seq: int) -> int | None:
        """Send one message; returns the awaited call's duration (ns), None if it failed."""
        index = seq % len(self._targets)
        message: dict[str, Any] = {"type": kind, "seq": seq}
        if self._addressed:
            message["to"] = index
        if kind != PROBE:
            if self._blob is not None:
                message["blob"] = self._blob
            if self.window is not None:
                message["ack"] = self.window.channel
                await self.window.acquire()
        while True:
            start = now_ns()
            message["t"] = start
            try:
                await self._call(self._targets[index], message)
            except ChannelFull:
                if kind == PROBE:
                    return None  # a full channel already holds probes: no need to insist
                self.full_retries += 1
                if self.full_retries > MAX_FULL_RETRIES:
                    raise
                await asyncio.sleep(0.001)
                continue
            except Exception as exc:
                self._errors.add(f"{kind} send: {exc!r}")
                self._failures_in_a_row += 1
                if self._failures_in_a_row >= MAX_SEND_FAILURES:
                    raise
                return None
            self._failures_in_a_row = 0
            if kind == MEASURED:
                self.ok += 1
            self.sent += 1
            return now_ns() - start

    async def blast(self, kind: str, count: int, concurrency: int) -> list[int]:
        """Send seq 0..count-1 from `concurrency` tasks, each awaiting its own calls."""
        durations: list[int] = []

        async def lane(seqs: range) -> None:
            for seq in seqs:
                took = await self.one(kind, seq)
                if took is not None:
                    durations.append(took)

        lanes = min(concurrency, count) or 1
        await asyncio.gather(*(lane(range(i, count, lanes)) for i in range(lanes)))
        return durations


async def sender(ctx: AsyncContext) -> None:
    """Probe until primed, warm up, then send the measured messages and report timings."""
    params, link = ctx.params, ctx.link
    sends = _Sends(ctx)
    if params.get("window"):
        sends.window = AckWindow(ctx.layer, params["window"])
        await sends.window.open()
    link.progress = lambda: {"sent": sends.sent, "full_retries": sends.full_retries}
    probes = len(params["targets"])
    deadline = now_ns() + int(params["prime_timeout"] * 1e9)
    announced = False
    while not link.has("go"):
        if now_ns() > deadline:
            raise Stuck(f"receivers never confirmed a probe within {params['prime_timeout']} s")
        await sends.blast(PROBE, probes, params["concurrency"])
        if not announced:
            link.send("probing")  # our connections exist before the receivers start
            announced = True
        await link.wait_any(("go",), params["probe_interval"])
    await link.wait("go", 1)
    await sends.blast(WARM, params["warm"], params["concurrency"])
    await link.wait("measure", params["timeout"])
    first_ns = now_ns()
    durations = await sends.blast(MEASURED, params["count"], params["concurrency"])
    link.send(
        "sent",
        first_ns=first_ns,
        end_ns=now_ns(),
        call_ns=durations,
        ok=sends.ok,
        full_retries=sends.full_retries,
        **_errors(ctx.errors),
    )
