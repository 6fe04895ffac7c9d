"""The per-channel buffers shared by every event loop of a process."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from channels_engines.mailbox import Mailbox

LATER = float("inf")  # an expiry deadline that never passes


async def waiting_receiver(mailbox: Mailbox, channel: str) -> asyncio.Task[bytes]:
    """Start ``mailbox.get(channel)`` and return once it is waiting.

    A task's first step runs on the next loop iteration; after one ``sleep(0)`` it has
    either returned a buffered message or registered its wait.
    """
    task = asyncio.ensure_future(mailbox.get(channel))
    await asyncio.sleep(0)
    return task


def test_messages_come_out_in_the_order_they_were_put() -> None:
    mailbox = Mailbox()
    for index in range(5):
        mailbox.put(["fifo"], b"%d" % index, LATER)
    assert [mailbox.take_nowait("fifo") for _ in range(6)] == [b"0", b"1", b"2", b"3", b"4", None]


def test_channels_do_not_share_buffers() -> None:
    mailbox = Mailbox()
    mailbox.put(["a"], b"for a", LATER)
    assert mailbox.take_nowait("b") is None
    assert mailbox.take_nowait("a") == b"for a"


def test_get_returns_a_buffered_message_without_waiting() -> None:
    async def scenario() -> None:
        mailbox = Mailbox()
        mailbox.put(["ready"], b"here", LATER)
        task = await waiting_receiver(mailbox, "ready")
        assert task.done()
        assert task.result() == b"here"

    asyncio.run(scenario())


def test_expired_messages_are_skipped_and_reported_once() -> None:
    mailbox = Mailbox()
    now = time.monotonic()
    mailbox.put(["exp"], b"old", now - 1)
    mailbox.put(["exp"], b"new", LATER)
    assert mailbox.take_nowait("exp") == b"new"
    assert mailbox.drain_expired() == {"exp"}
    assert mailbox.drain_expired() == set()


def test_expire_drops_messages_past_their_deadline_and_frees_capacity() -> None:
    mailbox = Mailbox()
    mailbox.put(["q!a"], b"first", 10.0)
    mailbox.put(["q!a"], b"second", 20.0)
    mailbox.put(["q!b"], b"third", 20.0)
    assert mailbox.count("q!") == 3
    mailbox.expire(now=15.0)
    assert (mailbox.count("q!"), mailbox.buffered("q!a"), mailbox.buffered("q!b")) == (2, 1, 1)
    assert mailbox.drain_expired() == {"q!a"}
    mailbox.expire(now=25.0)
    assert (mailbox.count("q!"), mailbox.buffered("q!a"), mailbox.buffered("q!b")) == (0, 0, 0)
    assert mailbox.drain_expired() == {"q!a", "q!b"}


def test_a_message_put_on_several_channels_counts_once() -> None:
    mailbox = Mailbox()
    mailbox.put(["q!a", "q!b", "q!c"], b"group", LATER)
    assert mailbox.count("q!") == 1
    assert [mailbox.buffered(channel) for channel in ("q!a", "q!b", "q!c")] == [1, 1, 1]
    assert mailbox.take_nowait("q!a") == b"group"
    assert mailbox.take_nowait("q!b") == b"group"
    assert mailbox.count("q!") == 1
    assert mailbox.take_nowait("q!c") == b"group"
    assert mailbox.count("q!") == 0


def test_put_many_keeps_order() -> None:
    mailbox = Mailbox()
    mailbox.put_many([(["many"], b"%d" % index, LATER) for index in range(4)])
    assert [mailbox.take_nowait("many") for _ in range(5)] == [b"0", b"1", b"2", b"3", None]


def test_clear_drops_messages_but_keeps_receivers_waiting() -> None:
    async def scenario() -> None:
        mailbox = Mailbox()
        mailbox.put(["c"], b"old", LATER)
        mailbox.clear()
        assert mailbox.count("c") == 0
        receiver = await waiting_receiver(mailbox, "c")
        assert not receiver.done()
        mailbox.put(["c"], b"after.clear", LATER)
        assert await receiver == b"after.clear"

    asyncio.run(scenario())


def test_waiting_receivers_are_served_in_order_one_message_each() -> None:
    async def scenario() -> None:
        mailbox = Mailbox()
        receivers = [await waiting_receiver(mailbox, "w") for _ in range(3)]
        assert mailbox.waiting() == {"w": 3}
        for index in range(3):
            mailbox.put(["w"], b"%d" % index, LATER)
        assert await asyncio.gather(*receivers) == [b"0", b"1", b"2"]
        assert mailbox.waiting() == {}

    asyncio.run(scenario())


def test_cancelled_receiver_leaves_no_waiter_behind() -> None:
    async def scenario() -> None:
        mailbox = Mailbox()
        receiver = await waiting_receiver(mailbox, "c")
        receiver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiver
        assert mailbox.waiting() == {}
        mailbox.put(["c"], b"kept", LATER)
        assert mailbox.take_nowait("c") == b"kept"

    asyncio.run(scenario())


def test_woken_but_cancelled_receiver_passes_the_wake_up_on() -> None:
    """Without the hand-off the second receiver would wait although a message is there."""

    async def scenario() -> None:
        mailbox = Mailbox()
        first = await waiting_receiver(mailbox, "c")
        second = await waiting_receiver(mailbox, "c")
        mailbox.put(["c"], b"only", LATER)  # wakes the first receiver
        assert mailbox.waiting() == {"c": 1}
        first.cancel()  # before it could run and take the message
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(second, 10) == b"only"

    asyncio.run(scenario())


def test_receiver_in_another_thread_is_woken_by_a_put() -> None:
    mailbox = Mailbox()
    waiting = threading.Event()
    result: list[Any] = []

    async def receive() -> None:
        receiver = await waiting_receiver(mailbox, "cross")
        waiting.set()
        result.append(await asyncio.wait_for(receiver, 10))

    thread = threading.Thread(target=asyncio.run, args=(receive(),))
    thread.start()
    assert waiting.wait(10)
    assert mailbox.waiting() == {"cross": 1}
    mailbox.put(["cross"], b"from.main.thread", LATER)
    thread.join(10)
    assert result == [b"from.main.thread"]


def test_receivers_in_two_loops_each_get_one_message() -> None:
    mailbox = Mailbox()
    ready = threading.Barrier(3, timeout=10)
    results: list[bytes] = []

    async def receive() -> None:
        receiver = await waiting_receiver(mailbox, "shared")
        ready.wait()
        results.append(await asyncio.wait_for(receiver, 10))

    threads = [threading.Thread(target=asyncio.run, args=(receive(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    ready.wait()
    assert mailbox.waiting() == {"shared": 2}
    mailbox.put_many([(["shared"], b"one", LATER), (["shared"], b"two", LATER)])
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [b"one", b"two"]


def test_put_skips_a_receiver_whose_loop_has_closed() -> None:
    """An abandoned loop's waiter must not swallow the wake-up meant for a live receiver."""
    mailbox = Mailbox()
    dead_loop = asyncio.new_event_loop()
    abandoned = dead_loop.create_task(mailbox.get("c"))
    dead_loop.run_until_complete(asyncio.sleep(0))
    abandoned._log_destroy_pending = False  # type: ignore[attr-defined]  # deliberately abandoned
    dead_loop.close()

    async def scenario() -> bytes:
        receiver = await waiting_receiver(mailbox, "c")
        assert mailbox.waiting() == {"c": 2}
        mailbox.put(["c"], b"live", LATER)
        return await asyncio.wait_for(receiver, 10)

    assert asyncio.run(scenario()) == b"live"


def test_a_woken_receiver_that_has_not_run_yet_is_not_counted_twice() -> None:
    """Claims of a shared queue take as many rows as receivers no buffered message will
    serve: a receiver woken for a message it has not yet taken is served already, and
    must not hide that the others still wait (their rows would wait for a safety claim)."""

    async def scenario() -> None:
        mailbox = Mailbox()
        receivers = [asyncio.ensure_future(mailbox.get("work")) for _ in range(3)]
        while mailbox.waiting_on("work") < 3:
            await asyncio.sleep(0)
        assert mailbox.unserved("work") == 3
        mailbox.put(["work"], b"a", time.monotonic() + 60)
        assert mailbox.unserved("work") == 2  # one woken, not yet run: served
        mailbox.put(["work"], b"b", time.monotonic() + 60)
        assert mailbox.unserved("work") == 1
        done, _ = await asyncio.wait(receivers, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert done
        mailbox.put(["work"], b"c", time.monotonic() + 60)
        assert sorted(await asyncio.gather(*receivers)) == [b"a", b"b", b"c"]
        assert mailbox.unserved("work") == 0

    asyncio.run(scenario())
