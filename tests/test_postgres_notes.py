"""Messages delivered from their notification: once, in order, authentic, and never lost.

A second layer stands for a second process (its own client id, listener and mailbox).
Notifications are sniffed and forged by a role that has nothing but CONNECT.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import pytest
from channels.exceptions import ChannelFull
from psycopg import sql

from channels_engines.postgres.notes import Notary
from channels_engines.postgres.schema import listen_identifier
from tests.support.pgtools import Admin, engine_of, make_layer, run, server_dsn
from tests.support.polling import await_for, payload_bytes

pytestmark = pytest.mark.postgres


def rows(admin: Admin, prefix: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(prefix + "message"))
    return int(admin.conn.execute(query).fetchone()[0])


async def pair(app: str, prefix: str, **kw: Any) -> tuple[Any, Any, str]:
    """A sending and a receiving layer (two processes, sealing messages with the keys
    tests.settings' SECRET_KEY gives); the receiver's channel works."""
    sender = make_layer(app, prefix=prefix, **kw)
    receiver = make_layer(app, prefix=prefix, **kw)
    channel = await receiver.new_channel()
    await sender.send(channel, {"type": "start"})
    assert await asyncio.wait_for(receiver.receive(channel), 10) == {"type": "start"}
    return sender, receiver, channel


def test_messages_for_a_process_arrive_in_their_notification_and_rows_are_reaped(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> None:
        sender, receiver, channel = await pair(app, prefix, capacity=500)
        before = engine_of(receiver)._delivery.from_notes
        for n in range(200):
            await sender.send(channel, {"type": "m", "n": n})
        got = [await asyncio.wait_for(receiver.receive(channel), 10) for _ in range(200)]
        assert [m["n"] for m in got] == list(range(200))
        assert engine_of(receiver)._delivery.from_notes - before == 200
        await await_for(lambda: rows(admin, prefix) == 0, "delivered rows deleted")
        # Deleted together, a little later (a safety catch-up that runs meanwhile takes
        # some of them first, and drops them as delivered already).
        assert engine_of(receiver)._delivery.reaped > 0
        await sender.close()
        await receiver.close()

    run(scenario())


def test_rows_of_delivered_notes_never_make_a_sender_see_its_receiver_as_full(
    app: str, prefix: str, admin: Admin
) -> None:
    """The rows of delivered notes are deleted together, a little later, and count
    against senders until then: never as much as the capacity."""

    async def scenario() -> None:
        sender, receiver, channel = await pair(app, prefix, capacity=8)
        for n in range(300):
            await sender.send(channel, {"type": "m", "n": n})
            assert (await asyncio.wait_for(receiver.receive(channel), 10))["n"] == n
        assert engine_of(receiver)._delivery.from_notes >= 300
        await await_for(lambda: rows(admin, prefix) == 0, "delivered rows deleted")
        await sender.close()
        await receiver.close()

    run(scenario())


def test_large_and_small_messages_of_one_sender_keep_their_order(app: str, prefix: str) -> None:
    """A message too large for a notification is claimed; notes after it wait for the
    claim, so nothing overtakes it."""

    async def scenario() -> None:
        sender, receiver, channel = await pair(app, prefix)
        sizes = [10, 9000, 10, 10, 20000, 10, 10, 10]
        for round_ in range(10):
            await asyncio.gather(
                *(
                    sender.send(channel, {"n": round_ * 100 + i, "x": "y" * size})
                    for i, size in enumerate(sizes)
                )
            )
        got = [await asyncio.wait_for(receiver.receive(channel), 10) for _ in range(80)]
        assert [m["n"] for m in got] == [r * 100 + i for r in range(10) for i in range(8)]
        await sender.close()
        await receiver.close()

    run(scenario())


def test_without_encryption_notifications_only_wake(app: str, prefix: str, admin: Admin) -> None:
    async def scenario() -> None:
        sender = make_layer(app, prefix=prefix, encryption_keys=False)
        receiver = make_layer(app, prefix=prefix, encryption_keys=False)
        channel = await receiver.new_channel()
        listener = psycopg.Connection.connect(server_dsn(), autocommit=True)
        identifier = listen_identifier(f".{prefix}", channel.split("!")[0] + "!")
        listener.execute(f"LISTEN {identifier}")
        await sender.send(channel, {"type": "secret-marker"})
        assert (await asyncio.wait_for(receiver.receive(channel), 10))["type"] == "secret-marker"
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        listener.close()
        assert payloads == [""]
        await sender.close()
        await receiver.close()

    run(scenario())


def test_a_role_that_can_only_connect_cannot_forge_replay_or_redirect_notes(
    app: str, prefix: str, admin: Admin, outsider: str
) -> None:
    async def scenario() -> None:
        sender, receiver, channel = await pair(app, prefix)
        other = await receiver.new_channel()
        queue = channel.split("!")[0] + "!"
        identifier = listen_identifier(f".{prefix}", queue)
        spy = psycopg.Connection.connect(outsider, autocommit=True)
        spy.execute(f"LISTEN {identifier}")
        await sender.send(channel, {"type": "m", "n": 1})
        assert (await asyncio.wait_for(receiver.receive(channel), 10))["n"] == 1
        sniffed = [n.payload for n in spy.notifies(timeout=5, stop_after=1)]
        assert len(sniffed) == 1
        assert sniffed[0].startswith("m1:")
        note = sniffed[0]
        forged_before = receiver.events.get("receive.forged_notification")
        duplicates_before = receiver.events.get("receive.duplicate")
        head, tag, _ = note.rsplit(":", 2)
        attempts = [
            note,  # replayed as is
            note.replace(channel, other),  # redirected to another channel
            f"{head}:{tag}:{Notary((b'x' * 32,)).write('a', channel, 1, 1, 9e9, b'z')[-8:]}",
            Notary((b"x" * 32,)).write(identifier, channel, 7, 1, 9e12, b"forged"),
            "m1:1:1:1:" + channel + ":AAAA:AAAA",
            "not a note",
        ]
        for text in attempts:
            spy.execute("SELECT pg_notify(%s, %s)", [identifier, text])
        # A message after the forgeries: once it is here, they were all handled.
        await sender.send(channel, {"type": "m", "n": 2})
        assert (await asyncio.wait_for(receiver.receive(channel), 10))["n"] == 2
        spy.close()
        assert receiver.events.get("receive.forged_notification") - forged_before == 5
        # The replayed note is dropped like a note whose row was taken first: uncounted.
        assert receiver.events.get("receive.duplicate") - duplicates_before == 0
        for name in (channel, other):
            with contextlib.suppress(asyncio.TimeoutError):
                extra = await asyncio.wait_for(receiver.receive(name), 0.5)
                raise AssertionError(f"unexpected message {extra!r} on {name}")
        await sender.close()
        await receiver.close()

    run(scenario())


def test_notes_a_full_mailbox_cannot_hold_stay_in_the_table_and_senders_get_channel_full(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> None:
        sender, receiver, channel = await pair(app, prefix, capacity=50)
        for n in range(50):
            await sender.send(channel, {"n": n})
        # All 50 in the receiving process's mailbox (and their rows deleted) ...
        await await_for(lambda: receiver._shared.mailbox.buffered(channel) == 50, "mailbox filled")
        await await_for(lambda: rows(admin, prefix) == 0, "delivered rows deleted")
        accepted, refused = 0, 0
        for n in range(50, 150):
            try:
                await sender.send(channel, {"n": n})
            except ChannelFull:
                refused += 1
            else:
                accepted += 1
        # ... then 50 more in the table, which the full process leaves there; the rest
        # refused.
        assert (accepted, refused) == (50, 50)
        assert rows(admin, prefix) == 50
        got = [await asyncio.wait_for(receiver.receive(channel), 10) for _ in range(100)]
        assert [m["n"] for m in got] == list(range(100))
        await await_for(lambda: rows(admin, prefix) == 0, "table emptied")
        await sender.close()
        await receiver.close()

    run(scenario())


def test_a_flush_removes_messages_whose_notes_are_still_on_the_way(app: str, prefix: str) -> None:
    async def scenario() -> None:
        sender, receiver, channel = await pair(app, prefix)
        engine = engine_of(receiver)
        listener = engine.listener
        # Hold the receiver's listener back, so that notes wait on its connection.
        await asyncio.gather(*(sender.send(channel, {"n": n}) for n in range(20)))
        await receiver.flush()
        assert listener is engine.listener
        await sender.send(channel, {"n": "after"})
        got = await asyncio.wait_for(receiver.receive(channel), 10)
        assert got == {"n": "after"}
        await sender.close()
        await receiver.close()

    run(scenario())


def test_a_large_payload_still_fits_the_table_path(app: str, prefix: str) -> None:
    async def scenario() -> None:
        sender, receiver, channel = await pair(app, prefix)
        data = payload_bytes(100_000)
        await sender.send(channel, {"d": data})
        assert (await asyncio.wait_for(receiver.receive(channel), 10))["d"] == data
        await sender.close()
        await receiver.close()

    run(scenario())


def test_a_listener_that_stops_reading_never_makes_sends_fail(app: str) -> None:
    """PostgreSQL's notification queue is finite and the slowest listener holds it. A
    session that LISTENs and then sits in a transaction never reads: past half full the
    layer's notifications only wake, past 90 % none is sent (receivers' periodic claims
    deliver), and no send fails with "too many notifications in the NOTIFY queue"."""
    from channels_engines.embedded import EmbeddedPostgres

    with EmbeddedPostgres(settings={"max_notify_queue_pages": "64"}) as server:
        server.create_database("queue_full")
        dsn = server.dsn("queue_full")
        stalled = psycopg.Connection.connect(dsn, autocommit=True)
        stalled.execute("LISTEN somebody_else")
        stalled.execute("BEGIN")
        stalled.execute("SELECT 1")
        watcher = psycopg.Connection.connect(dsn, autocommit=True)
        peak = 0.0
        total = 6000

        async def scenario() -> None:
            nonlocal peak
            sender, receiver, channel = await pair(
                app, "ce_q_", dsn=dsn, capacity=total, sweep_interval=0.2
            )
            received: list[int] = []

            async def receive_all() -> None:
                while len(received) < total:
                    received.append((await receiver.receive(channel))["n"])

            reading = asyncio.create_task(receive_all())
            for n in range(total):
                await sender.send(channel, {"n": n, "pad": "x" * 200})
                if n % 500 == 0:
                    usage = watcher.execute("SELECT pg_notification_queue_usage()").fetchone()
                    peak = max(peak, float(usage[0]))
            await asyncio.wait_for(reading, 60)
            assert received == list(range(total))
            assert 0 < engine_of(receiver)._delivery.from_notes < total
            await sender.close()
            await receiver.close()

        try:
            run(scenario(), timeout=180)
        finally:
            watcher.close()
            stalled.close()
        assert peak >= 0.9
