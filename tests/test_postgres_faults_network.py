"""The PostgreSQL engine under network and server faults, on a private server.

Faults: a connection that goes silent (a fault proxy black-holes it, also right after it
forwarded a claim or a send, so the server commits and the answer is lost), connections
reset during traffic, a crash of the server (``kill -9`` of the postmaster, then crash
recovery), a frozen server (SIGSTOP of all its processes), the server refusing connections
while the listener is cut off, and a receiving process killed with SIGKILL. The pool and
the listener of a layer go through two different proxies, so each can be faulted alone.

Every history is checked Jepsen-style (:class:`History`): every acknowledged send is
received exactly once, in per-channel order; sends that raised, calls that overran their
deadline and messages lost are counted and reported. The bounds come from the layer's
settings (:data:`SETTINGS`), short here so that each test runs in seconds:

- a silent listener is given up within ``heartbeat_interval + heartbeat_timeout``, whatever
  it was doing (:data:`DETECT`), and listens again within the reconnection back-off after
  that (:data:`RECOVER`);
- a call returns or raises within ``pool_timeout`` (getting a connection) plus two
  ``query_timeout`` (a statement that got no answer, and its retry) (:data:`CALL`).

Each bound has :data:`SLACK` added for scheduling on a loaded machine. Waits are bounded
waits on events or observations; the seconds in failure messages are for the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil
import pytest

from channels_engines import EngineChannelLayer, ServerUnavailableError
from channels_engines.hooks import ListenerLost, ListenerRecovered
from channels_engines.postgres.embedded import EmbeddedPostgres
from tests.support.faultproxy import FaultProxy, Trigger
from tests.support.hooks import Recorder
from tests.support.pgtools import Admin, Child, config, dropped_afterwards, engine_of, run
from tests.support.pgtools import unique as unique_name
from tests.support.polling import await_for

pytestmark = [pytest.mark.postgres, pytest.mark.own_server]

T = TypeVar("T")

DATABASE = "faults"
SETTINGS: dict[str, Any] = {
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 1.0,
    "query_timeout": 1.0,
    "pool_timeout": 2.0,
    "sweep_interval": 0.5,
    # The proxy recognises a send by a mark in its message's bytes on the wire; the engine
    # carries encrypted bytes the same way.
    "encryption_keys": False,
}
#: Added to every bound: scheduling delays on a loaded two-core machine.
SLACK = 1.0
#: A silent listener connection is given up within this.
DETECT = SETTINGS["heartbeat_interval"] + SETTINGS["heartbeat_timeout"] + SLACK
#: ... and a new one listens within this (the back-off starts at 50 ms).
RECOVER = DETECT + SLACK
#: Any call returns or raises within this.
CALL = SETTINGS["pool_timeout"] + 2 * SETTINGS["query_timeout"] + SLACK
#: Every acknowledged message is received within this after the fault.
DELIVER = RECOVER + CALL
#: How long a call or condition that missed its bound is still watched, for the report.
OBSERVE = 10.0


def unique() -> str:
    return unique_name("ce_n")


# History ---------------------------------------------------------------------------------


class CallOverran(Exception):
    """A call did not return within its deadline (nor within OBSERVE after it)."""


async def bounded(what: str, call: Awaitable[T], deadline: float, overran: list[str]) -> T:
    """Await ``call`` with ``deadline``; one that misses it is recorded in ``overran``
    (and watched for OBSERVE more seconds, to say how long it blocked)."""
    task = asyncio.ensure_future(call)
    started = time.monotonic()
    done, _ = await asyncio.wait({task}, timeout=deadline)
    if not done:
        done, _ = await asyncio.wait({task}, timeout=OBSERVE)
        if done:
            took = f"returned after {time.monotonic() - started:.1f} s"
        else:
            took = f"still blocked after {deadline + OBSERVE:g} s"
        overran.append(f"{what}: deadline {deadline:g} s, {took}")
        if not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise CallOverran(what)
    return task.result()


async def within(check: Callable[[], Any], bound: float, what: str) -> None:
    """Wait for ``check()`` with a deadline of ``bound``; fail saying when it did happen."""
    started = time.monotonic()
    try:
        await await_for(check, what, timeout=bound)
        return
    except AssertionError:
        pass
    try:
        await await_for(check, what, timeout=OBSERVE)
        late = f"it happened after {time.monotonic() - started:.1f} s"
    except AssertionError:
        late = f"not even after {bound + OBSERVE:g} s"
    raise AssertionError(f"{what}: not within {bound:g} s ({late})")


@dataclass
class History:
    """What was sent, acknowledged, raised and received, per channel."""

    acknowledged: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: Sends that raised or overran: they may or may not have been stored.
    unsure: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    raised: list[str] = field(default_factory=list)
    overran: list[str] = field(default_factory=list)
    received: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    receive_errors: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def send(
        self,
        layer: EngineChannelLayer,
        channel: str,
        n: int,
        mark: str = "",
        deadline: float = CALL,
    ) -> bool:
        """Send message ``n`` (carrying ``mark``, for a proxy trigger); True if acknowledged."""
        try:
            await bounded(
                f"send({channel!r}) #{n}",
                layer.send(channel, {"n": n, "mark": mark}),
                deadline,
                self.overran,
            )
        except Exception as exc:
            if not isinstance(exc, CallOverran):
                self.raised.append(f"send({channel!r}) #{n}: {type(exc).__name__}: {exc}")
            self.unsure[channel].add(n)
            return False
        self.acknowledged[channel].append(n)
        return True

    async def send_all(
        self, layer: EngineChannelLayer, channels: list[str], numbers: range, mark: str = ""
    ) -> None:
        """One sequential sender per channel (so per-channel order is defined), concurrently."""

        async def sender(channel: str) -> None:
            for n in numbers:
                await self.send(layer, channel, n, mark)

        await asyncio.gather(*(sender(channel) for channel in channels))

    def receive(self, layer: EngineChannelLayer, channels: list[str]) -> None:
        """Keep receiving on ``channels`` until :meth:`stop`."""

        async def receiver(channel: str) -> None:
            while True:
                try:
                    message = await layer.receive(channel)
                except Exception as exc:  # a receive() must keep waiting through faults
                    self.receive_errors.append(f"{channel}: {type(exc).__name__}: {exc}")
                    return
                self.received[channel].append(message["n"])

        self.tasks += [asyncio.ensure_future(receiver(channel)) for channel in channels]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []

    def complete(self) -> bool:
        """Every acknowledged message has been received."""
        return all(
            set(numbers) <= set(self.received.get(channel, ()))
            for channel, numbers in self.acknowledged.items()
        )

    def counts(self) -> dict[str, int]:
        lost = duplicated = unordered = unexpected = 0
        for channel in set(self.acknowledged) | set(self.received):
            acknowledged = set(self.acknowledged.get(channel, ()))
            got = self.received.get(channel, [])
            lost += len(acknowledged - set(got))
            duplicated += len(got) - len(set(got))
            unexpected += len(set(got) - acknowledged - self.unsure.get(channel, set()))
            ordered = [n for n in got if n in acknowledged]
            unordered += sum(1 for a, b in itertools.pairwise(ordered) if b <= a)
        return {
            "acknowledged": sum(len(numbers) for numbers in self.acknowledged.values()),
            "received": sum(len(numbers) for numbers in self.received.values()),
            "lost": lost,
            "duplicated": duplicated,
            "out of order": unordered,
            "unexpected": unexpected,
            "raised": len(self.raised),
            "overran": len(self.overran),
        }

    def report(self, note: str = "") -> str:
        counts = ", ".join(f"{name} {value}" for name, value in self.counts().items())
        details = [*self.raised[:3], *self.overran[:10], *self.receive_errors[:3]]
        return "; ".join([counts, *([note] if note else []), *details])

    async def delivered(self, admin: Admin | None = None, table: str = "") -> None:
        """Wait (DELIVER at most) until every acknowledged message has arrived."""
        try:
            await within(self.complete, DELIVER, "every acknowledged message received")
        except AssertionError as exc:
            note = str(exc)
            if admin is not None:
                # Not received but still in the table: late, not lost.
                left = await asyncio.to_thread(admin.table_count, table)
                note += f"; {left} rows still in the message table"
            raise AssertionError(self.report(note)) from None

    def check(self, *, raised_allowed: bool = False) -> None:
        """Acknowledged: each exactly once, in order; nothing raised (unless allowed, for a
        server that is down) and no call past its deadline."""
        counts = self.counts()
        bad = {
            name: counts[name]
            for name in ("lost", "duplicated", "out of order", "unexpected", "overran")
            if counts[name]
        }
        if counts["raised"] and not raised_allowed:
            bad["raised"] = counts["raised"]
        assert not bad, self.report()
        assert not self.receive_errors, self.report()


# Servers, proxies, layers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as pg:
        pg.create_database(DATABASE)
        yield pg


@dataclass
class Net:
    """A private server and two proxies in front of it: one for pools, one for listeners."""

    server: EmbeddedPostgres
    prefix: str
    pool: FaultProxy
    listen: FaultProxy
    layers: list[EngineChannelLayer] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return self.server.dsn(DATABASE)

    @property
    def table(self) -> str:
        return self.prefix + "message"

    def layer(
        self, *, pool: bool = False, listen: bool = False, app: str | None = None, **options: Any
    ) -> EngineChannelLayer:
        """A layer whose pool (``pool``) and listener (``listen``) go through the proxies."""
        settings = {**SETTINGS, **options}
        settings["listen_dsn"] = self.listen.dsn(self.dsn) if listen else self.dsn
        layer = EngineChannelLayer(
            **config(
                app or unique(),
                prefix=self.prefix,
                dsn=self.pool.dsn(self.dsn) if pool else self.dsn,
                **settings,
            )
        )
        self.layers.append(layer)
        return layer

    def run(self, scenario: Callable[[History], Awaitable[None]]) -> None:
        """Run ``scenario`` with a new history; close its layers however it ends."""

        async def main() -> None:
            history = History()
            try:
                await scenario(history)
            finally:
                await history.stop()
                for layer in self.layers:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(layer.close(), CALL)

        run(main())

    def admin(self) -> Admin:
        return Admin(self.dsn)


@pytest.fixture
def net(server: EmbeddedPostgres) -> Iterator[Net]:
    prefix = unique() + "_"
    dsn = server.dsn(DATABASE)
    with (
        dropped_afterwards(prefix, dsn=dsn),
        FaultProxy.for_dsn(dsn) as pool,
        FaultProxy.for_dsn(dsn) as listen,
    ):
        yield Net(server, prefix, pool, listen)


async def listening(layer: EngineChannelLayer, channel: str, history: History) -> Any:
    """Start receiving on ``channel``; return the listener once it has delivered once."""
    sender = asyncio.ensure_future(history.send(layer, channel, -1))
    history.receive(layer, [channel])
    await await_for(lambda: -1 in history.received[channel], "the first message", 20)
    await sender
    return engine_of(layer)._listener


def server_processes(pg: EmbeddedPostgres) -> list[psutil.Process]:
    """The postmaster, then every process it started."""
    assert pg.pid is not None
    postmaster = psutil.Process(pg.pid)
    return [postmaster, *postmaster.children(recursive=True)]


@contextlib.asynccontextmanager
async def frozen(pg: EmbeddedPostgres) -> AsyncIterator[None]:
    """SIGSTOP every process of the server: sockets stay open, nothing answers."""
    processes = server_processes(pg)
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in reversed(processes):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)


def crash(pg: EmbeddedPostgres) -> None:
    """``kill -9`` of the postmaster; its backends exit on their own when they notice.
    Then start it again on the same port and data directory: crash recovery."""
    processes = server_processes(pg)
    os.kill(processes[0].pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert alive == [], f"server processes still running after the postmaster died: {alive}"
    pg.restart("immediate")  # the postmaster is gone: this only starts it


# 1. A silent listener ------------------------------------------------------------------


def test_an_idle_listener_that_goes_silent_is_replaced_and_nothing_is_lost(net: Net) -> None:
    async def scenario(history: History) -> None:
        receiver = net.layer(listen=True)
        sender = net.layer()
        channel = await receiver.new_channel()
        listener = await listening(receiver, channel, history)
        old = listener.backend_pid
        net.listen.blackhole_all()
        await history.send_all(sender, [channel], range(20))
        await within(lambda: listener.backend_pid != old, DETECT, "the silent listener given up")
        await within(lambda: listener.reconnects == 1, RECOVER, "a new listener")
        await history.delivered()
        history.check()

    net.run(scenario)


def arm_claim_trigger(proxy: FaultProxy, channel: str) -> Trigger:
    """Black-hole the link that next sends a claim for ``channel``'s queue, right after it
    was sent. The queue name is a parameter of the claim, sent with every execution
    (the statement text is not, once psycopg has prepared it)."""
    queue = channel[: channel.index("!") + 1] if "!" in channel else channel
    return proxy.after_client_sends(queue.encode())


def test_a_claim_whose_answer_is_lost_on_the_listener_loses_no_message(net: Net) -> None:
    """The listener's claim commits on the server and its answer never arrives: the
    claimed rows must not be lost (a claim must not commit before its rows are read)."""

    async def scenario(history: History) -> None:
        receiver = net.layer(listen=True, sweep_interval=3600.0)
        sender = net.layer()
        channel = await receiver.new_channel()
        await listening(receiver, channel, history)
        # 20 messages stored while the listener hears nothing, then one claim takes them.
        (link,) = net.listen.links
        link.blackhole("down")
        await history.send_all(sender, [channel], range(20))
        trigger = arm_claim_trigger(net.listen, channel)
        link.forward()
        assert await asyncio.to_thread(trigger.wait, CALL), "no claim was sent"
        with net.admin() as admin:
            await history.delivered(admin, net.table)
        history.check()

    net.run(scenario)


def test_a_listener_silent_in_the_middle_of_a_claim_is_replaced_within_the_heartbeat_bound(
    net: Net,
) -> None:
    """Detection must not depend on what the listener was doing when it went silent."""

    async def scenario(history: History) -> None:
        receiver = net.layer(listen=True, sweep_interval=3600.0)
        sender = net.layer()
        channel = await receiver.new_channel()
        listener = await listening(receiver, channel, history)
        old = listener.backend_pid
        trigger = arm_claim_trigger(net.listen, channel)
        await history.send(sender, channel, 0)
        assert await asyncio.to_thread(trigger.wait, CALL), "no claim was sent"
        await within(lambda: listener.backend_pid != old, DETECT, "the silent listener given up")
        await within(lambda: listener.reconnects == 1, RECOVER, "a new listener")
        await history.send_all(sender, [channel], range(1, 11))
        await history.delivered()
        history.check()

    net.run(scenario)


# 2. A silent pooled connection -----------------------------------------------------------


def marked(mark: str) -> tuple[bytes, bytes]:
    """What a message carrying ``mark`` looks like on the wire: raw in a single send's
    bytea parameter, hex-escaped in a batch's bytea[] array (psycopg sends it as text)."""
    return mark.encode(), mark.encode().hex().encode()


def test_a_send_batch_whose_answer_is_lost_is_neither_blocked_nor_raised_lost_or_doubled(
    net: Net,
) -> None:
    """The pooled connection goes silent right after a send's statement reached the
    server (which commits it): the sends waiting on it, and those batched behind them,
    must each return within their deadline, exactly once."""

    async def scenario(history: History) -> None:
        receiver = net.layer()
        sender = net.layer(pool=True)
        channels = [f"batch.normal-{index}" for index in range(5)]
        history.receive(receiver, channels)
        await history.send_all(sender, channels, range(5))
        trigger = net.pool.after_client_sends(*marked("mark-silent"))
        await asyncio.gather(
            history.send(sender, channels[0], 5, mark="mark-silent"),
            history.send_all(sender, channels[1:], range(5, 15)),
        )
        assert trigger.fired.is_set()
        await history.send_all(sender, channels, range(15, 20))
        await history.delivered()
        history.check()

    net.run(scenario)


def test_a_claim_on_a_silent_pooled_connection_does_not_stop_deliveries(net: Net) -> None:
    """The sweep's claim runs on a pooled connection that goes silent mid-claim; the
    listener's wake-ups for the same queue must go on delivering."""

    async def scenario(history: History) -> None:
        receiver = net.layer(pool=True, listen=True)
        sender = net.layer()
        channel = await receiver.new_channel()
        await listening(receiver, channel, history)
        trigger = arm_claim_trigger(net.pool, channel)
        # The sweep claims every sweep_interval on the pool.
        assert await asyncio.to_thread(trigger.wait, SETTINGS["sweep_interval"] + CALL), (
            "no sweep claim was sent"
        )
        await history.send_all(sender, [channel], range(30))
        with net.admin() as admin:
            await history.delivered(admin, net.table)
        history.check()

    net.run(scenario)


def test_the_listener_and_the_pool_silent_together_are_replaced_and_nothing_is_lost(
    net: Net,
) -> None:
    async def scenario(history: History) -> None:
        receiver = net.layer(pool=True, listen=True)
        sender = net.layer()
        channel = await receiver.new_channel()
        listener = await listening(receiver, channel, history)
        await history.send(receiver, "both.normal", 0)  # the receiver's pool is in use
        history.receive(receiver, ["both.normal"])
        old = listener.backend_pid
        assert len(net.pool.blackhole_all()) >= 1
        assert len(net.listen.blackhole_all()) == 1
        detected = asyncio.ensure_future(
            within(lambda: listener.backend_pid != old, DETECT, "the silent listener given up")
        )
        await asyncio.gather(
            history.send_all(sender, [channel], range(20)),
            history.send_all(receiver, ["both.normal"], range(1, 11)),  # on the silent pool
        )
        await detected
        with net.admin() as admin:
            await history.delivered(admin, net.table)
        history.check()

    net.run(scenario)


# 3. Connections broken during traffic ------------------------------------------------------


def test_connections_reset_or_terminated_during_traffic_lose_raise_and_double_nothing(
    net: Net,
) -> None:
    """1,500 sends; ten times a pooled connection of the sender breaks, half of them right
    after a send's statement reached the server (reset by the proxy), half by
    pg_terminate_backend (AdminShutdown) at any point."""
    faults, per_channel = 10, 150
    app = unique()

    async def scenario(history: History) -> None:
        receiver = net.layer()
        # Backpressure is not what this test is about: ten sending tasks outpace one
        # receiving task per normal channel (each message of a shared queue is claimed
        # and committed before it is delivered), so a backlog of more than the default
        # capacity can build up; ChannelFull would be correct, and is not counted here.
        sender = net.layer(pool=True, app=app, capacity=10_000)
        channels = [f"traffic.normal-{index}" for index in range(10)]
        history.receive(receiver, channels)
        admin = net.admin()
        sent = 0
        points = [per_channel * len(channels) * (k + 1) // (faults + 1) for k in range(faults)]
        due = [asyncio.Event() for _ in range(faults)]
        done = [asyncio.Event() for _ in range(faults)]

        # The reset triggers are armed up front; each fires on the send marked with it.
        triggers = [
            net.pool.after_client_sends(*marked(f"mark-{k}"), action="reset")
            for k in range(0, faults, 2)
        ]

        async def sender_task(channel: str) -> None:
            nonlocal sent
            for n in range(per_channel):
                mark = ""
                for k, point in enumerate(points):
                    if sent >= point and not due[k].is_set():
                        due[k].set()
                        if k % 2 == 0:
                            mark = f"mark-{k}"
                        else:  # this sender waits; the others go on during the fault
                            await done[k].wait()
                await history.send(sender, channel, n, mark=mark)
                sent += 1

        async def breaker() -> int:
            terminated = 0
            for k in range(1, faults, 2):
                await due[k].wait()
                for pid in await asyncio.to_thread(admin.backends, app):
                    terminated += await asyncio.to_thread(admin.terminate, pid)
                done[k].set()
            return terminated + sum(trigger.fired.is_set() for trigger in triggers)

        try:
            _, broken = await asyncio.gather(
                asyncio.gather(*(sender_task(channel) for channel in channels)), breaker()
            )
        finally:
            admin.close()
        assert broken >= faults, f"{broken} connections broken"
        await history.delivered()
        history.check()

    net.run(scenario)


# 4. The server crashes, freezes, refuses -----------------------------------------------


@pytest.mark.parametrize("unlogged", [True, False], ids=["unlogged", "logged"])
def test_a_server_crash_loses_exactly_what_the_guarantees_say_and_every_layer_recovers(
    net: Net, unlogged: bool
) -> None:
    """Messages in flight (stored, not yet claimed: nobody receives on their channels
    yet) are lost by a crash only with the unlogged table; claimed ones and group
    memberships survive; sends during the outage raise within their deadline; the same
    layers work afterwards."""
    kept = [f"crash.kept-{index}" for index in range(5)]

    recorder = Recorder()

    async def scenario(history: History) -> None:
        receiver = net.layer(unlogged=unlogged, hooks=[recorder])
        sender = net.layer(unlogged=unlogged)
        channel = await receiver.new_channel()
        listener = await listening(receiver, channel, history)
        await receiver.group_add("crash-group", channel)
        await history.send_all(sender, [channel, *kept], range(10))
        await within(lambda: len(history.received[channel]) == 11, DELIVER, "the claimed messages")
        with net.admin() as admin:
            # The rows of the delivered ones go with the next deletion of delivered notes.
            await await_for(lambda: admin.table_count(net.table) == 50, "50 rows in flight")

        outage = asyncio.ensure_future(asyncio.to_thread(crash, net.server))
        numbers = itertools.count(10)
        while not outage.done():  # sends during the outage: each returns or raises in time
            await history.send(sender, channel, next(numbers))
        await outage
        after = next(numbers)
        if unlogged:
            # The documented loss: what was stored and not yet claimed when the server
            # crashed (all of the kept channels' messages; whichever sends of the outage
            # were acknowledged just before it), and nothing else.
            for name in kept:
                history.acknowledged[name] = []
            outage_sends = set(history.acknowledged[channel]) - set(range(10))
            history.acknowledged[channel] = [
                n for n in history.acknowledged[channel] if n not in outage_sends
            ]
            history.unsure[channel] |= outage_sends
        await within(lambda: listener.reconnects == 1, RECOVER, "the listener back")
        # Hooks hear that messages may have been lost exactly when they may have been.
        await within(lambda: recorder.of(ListenerRecovered), RECOVER, "the hooks told")
        assert [event.may_have_missed for event in recorder.of(ListenerRecovered)] == [unlogged]
        assert len(recorder.of(ListenerLost)) == 1
        await history.send_all(sender, [channel, *kept], range(after, after + 10))
        await sender.group_send("crash-group", {"n": after + 10, "mark": ""})
        history.acknowledged[channel].append(after + 10)
        history.receive(receiver, kept)
        await history.delivered()
        kept_from_before = [n for name in kept for n in history.received[name] if n < 10]
        assert kept_from_before == ([] if unlogged else [n for _ in kept for n in range(10)])
        history.check(raised_allowed=True)

    net.run(scenario)


def test_a_frozen_server_is_detected_no_call_blocks_and_everything_resumes_after_it(
    net: Net,
) -> None:
    """SIGSTOP of every server process for longer than the detection bound: the listener
    gives up its connection in time, each send returns or raises within its deadline
    (raising is allowed: the server is unreachable), and after SIGCONT the same layers
    deliver every acknowledged message."""

    async def scenario(history: History) -> None:
        receiver = net.layer()
        sender = net.layer()
        channel = await receiver.new_channel()
        listener = await listening(receiver, channel, history)
        old = listener.backend_pid
        async with frozen(net.server):
            detected = asyncio.ensure_future(
                within(lambda: listener.backend_pid != old, DETECT, "the frozen listener given up")
            )
            freeze = asyncio.ensure_future(asyncio.sleep(DETECT + 1))  # the fault's length
            numbers = itertools.count()
            while not freeze.done():
                await history.send(sender, channel, next(numbers))
            await detected
        await within(lambda: listener.reconnects >= 1, RECOVER + CALL, "the listener back")
        await history.send_all(sender, [channel], range(100, 110))
        await history.delivered()
        history.check(raised_allowed=True)

    net.run(scenario)


def test_a_send_cancelled_while_the_server_is_frozen_ends_in_time_and_leaves_no_socket(
    net: Net,
) -> None:
    """A send is cancelled (its consumer went away) while the server answers nothing.
    psycopg reacts to a cancelled statement by asking the server, over a new connection,
    to cancel it, and waits up to 5 s for that; a frozen server answers neither. The
    cancellation must end by the statement's deadline (``query_timeout``, 1 s here), and
    once the layer is closed no socket of this process may be left open towards the
    server (not even while log records keep psycopg's errors)."""

    async def scenario(history: History) -> None:
        sender = net.layer(pool=True)
        await sender.send("frozen.normal", {"type": "test.message", "n": 0})
        async with frozen(net.server):
            before = net.pool.bytes_up
            task = asyncio.ensure_future(
                sender.send("frozen.normal", {"type": "test.message", "n": 1})
            )
            await await_for(lambda: net.pool.bytes_up > before, "the send on the wire", CALL)
            task.cancel()
            bound = SETTINGS["query_timeout"] + SLACK
            done, _ = await asyncio.wait({task}, timeout=bound)
            assert done, f"the cancelled send was still running after {bound:g} s"
            await asyncio.wait_for(sender.close(), CALL)
            assert sockets_towards(net.pool) == []

    net.run(scenario)


def sockets_towards(proxy: FaultProxy) -> list[str]:
    """This process' TCP sockets connected to ``proxy`` (not the proxy's own)."""
    return [
        f"{c.laddr.port} -> {c.raddr.port} {c.status}"
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == proxy.port
    ]


def test_a_server_that_accepts_no_writes_is_waited_for_and_its_sessions_are_replaced(
    net: Net,
) -> None:
    """The database turns read-only and every session is cut (a failover whose address
    still leads to a node that can only read, or ``default_transaction_read_only``): the
    sessions opened meanwhile stay read-only for life. A write waits for a session that
    can write until ``pool_timeout``, then fails with ServerUnavailableError saying why
    and what to set; read-only sessions are never used again, so once the server takes
    writes the same layers send, join groups and deliver, every message once."""

    def set_read_only(on: bool) -> None:
        with net.admin() as admin:
            admin.conn.execute("SET default_transaction_read_only = off")
            value = "on" if on else "DEFAULT"
            admin.conn.execute(
                f"ALTER DATABASE {DATABASE} SET default_transaction_read_only = {value}"
            )
            if on:
                admin.conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (DATABASE,),
                )

    async def scenario(history: History) -> None:
        receiver = net.layer()
        sender = net.layer()
        channel = await receiver.new_channel()
        await listening(receiver, channel, history)
        set_read_only(True)
        try:
            with pytest.raises(ServerUnavailableError, match="accepts no writes") as caught:
                await sender.group_add("readonly.group", channel)
            assert "default_transaction_read_only" in str(caught.value)
            assert "target_session_attrs=read-write" in str(caught.value)
            writer = engine_of(sender)._writer
            retries = writer.retries
            waiting = asyncio.ensure_future(history.send(sender, channel, 1))
            await await_for(lambda: writer.retries > retries + 2, "the send to retry", CALL)
            assert not waiting.done()
        finally:
            set_read_only(False)
        assert await waiting, "the send that waited was not acknowledged"
        await sender.group_add("readonly.group", channel)
        await history.send_all(sender, [channel], range(2, 12))
        await history.delivered()
        history.check()

    net.run(scenario)


def test_the_server_refusing_connections_while_the_listener_is_cut_off(net: Net) -> None:
    """The listener's connection is reset and the database refuses new connections for a
    while: receive() calls keep waiting, sends on open pooled connections are acknowledged,
    and once connections are allowed again the listener is back and delivers them all."""

    async def scenario(history: History) -> None:
        receiver = net.layer(listen=True)
        sender = net.layer()
        channel = await receiver.new_channel()
        listener = await listening(receiver, channel, history)
        await history.send(sender, channel, 0)  # the sender's pool has a connection open
        net.server.execute(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS false")
        try:
            assert net.listen.reset_all() == 1
            refusing = asyncio.ensure_future(asyncio.sleep(2.0))  # the fault's length
            await history.send_all(sender, [channel], range(1, 21))
            await refusing
            assert listener.reconnects == 0
            assert history.receive_errors == []
        finally:
            net.server.execute(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS true")
        await within(lambda: listener.reconnects == 1, RECOVER + 2.0, "the listener back")
        await history.send_all(sender, [channel], range(21, 31))
        await history.delivered()
        history.check()

    net.run(scenario)


# 5. A receiving process killed ---------------------------------------------------------


def test_a_receiver_killed_with_sigkill_leaves_no_messages_or_memberships_behind(net: Net) -> None:
    """Messages to its channels expire and are cleaned up, its memberships go, and the
    tables return to their baseline (empty), with no other process' help than the cleanup
    every layer runs."""
    expiry, cleanup = 1, 0.5
    receiver = config(unique(), prefix=net.prefix, dsn=net.dsn)
    job = {
        "job": "receive",
        "config": receiver,
        "channels": ["killed.normal"],
        "new": 3,
        "groups": ["killed-a", "killed-b"],
        "expect": 1000,
        "timeout": 60,
    }
    with Child(job) as child, net.admin() as admin:
        channels = child.expect("ready")["channels"]
        assert admin.table_count(net.prefix + "group_member") == 8
        child.proc.kill()
        child.proc.wait(10)

        async def scenario(history: History) -> None:
            sender = net.layer(expiry=expiry, cleanup_interval=cleanup)
            own = await sender.new_channel()
            await listening(sender, own, history)  # starts its sweeps and cleanup
            for channel in channels:
                await history.send(sender, channel, 0)
            await sender.group_send("killed-a", {"n": 1})
            await sender.group_send("killed-b", {"n": 2})
            await within(
                lambda: (
                    admin.table_count(net.table) == 0
                    and admin.table_count(net.prefix + "group_member") == 0
                ),
                expiry + 2 * cleanup + SLACK,
                "the tables back to their baseline",
            )
            assert history.counts()["raised"] == 0

        net.run(scenario)


# Soak ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_soak_a_minute_of_traffic_through_a_network_fault_every_two_seconds(net: Net) -> None:
    """Steady traffic to normal and process-specific channels while, every two seconds,
    a fault chosen at random (seeded; the seed is in the failure message) hits the pool
    or the listener: resets, black holes, and both right after a claim or a send."""
    duration, rate = 60.0, 200  # messages per second in total
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)  # a fault schedule

    async def scenario(history: History) -> None:
        receiver = net.layer(pool=True, listen=True, capacity=10_000)
        sender = net.layer(pool=True, capacity=10_000)
        channels = [f"soak.normal-{index}" for index in range(5)]
        channels += [await receiver.new_channel() for _ in range(5)]
        history.receive(receiver, channels)
        faults: list[str] = []
        stop = asyncio.Event()

        async def steady(channel: str) -> None:
            for n in itertools.count():
                if stop.is_set():
                    return
                await history.send(sender, channel, n, mark=f"soak-{channel}-{n}")
                await asyncio.sleep(len(channels) / rate)  # a steady load, not a sync

        def fault() -> str:
            choice = rng.choice(["reset", "blackhole", "after claim", "after send"])
            if choice == "after send":  # sends go through the pool only
                channel = rng.choice(channels)
                upcoming = len(history.acknowledged[channel]) + 5
                net.pool.after_client_sends(*marked(f"soak-{channel}-{upcoming}"))
                return f"{choice} (pool)"
            where = rng.choice(["pool", "listener"])
            proxy = net.pool if where == "pool" else net.listen
            links = proxy.links
            if choice == "after claim":
                arm_claim_trigger(proxy, rng.choice(channels))
            elif links and choice == "reset":
                rng.choice(links).reset()
            elif links:
                rng.choice(links).blackhole()
            return f"{choice} ({where})"

        senders = [asyncio.ensure_future(steady(channel)) for channel in channels]
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            await asyncio.sleep(2.0)  # the fault schedule
            faults.append(fault())
        stop.set()
        await asyncio.gather(*senders)
        try:
            with net.admin() as admin:
                await history.delivered(admin, net.table)
            history.check()
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, faults {faults}: {exc}") from None

    net.run(scenario)
