"""Group streams: one row and one notification per group message for all members on
process-specific channels, whatever the number of their processes.

Each process delivers to its own members, from the notification when it can, else from
the stream's rows, after where it stands; these tests check what that must keep: each
member gets each message once, in the order its sender sent it (direct and group messages
alike), only what was sent after it joined, across listener kills, memberships changed by
other processes, forged notifications and a server that lost its unlogged tables.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import pytest
from psycopg import sql

from channels_engines.postgres.schema import listen_identifier
from tests.support.pgtools import (
    Admin,
    Child,
    config,
    digest,
    engine_of,
    listening_backend,
    make_layer,
    message,
    run,
    server_dsn,
    unique,
)
from tests.support.polling import await_for, payload_bytes, wait_for

pytestmark = pytest.mark.postgres

#: Encryption on (the default: notifications carry messages) and off (they only wake).
NOTES = pytest.mark.parametrize("notes", [True, False], ids=["notes", "no-notes"])


def layers(prefix: str, count: int, notes: bool = True, **options: Any) -> list[Any]:
    """``count`` layers on the same tables, each standing for a process of its own."""
    if not notes:
        options["encryption_keys"] = False
    return [make_layer(unique("ce_g"), prefix=prefix, **options) for _ in range(count)]


async def receive_all(layer: Any, channel: str, count: int) -> list[Any]:
    return [await asyncio.wait_for(layer.receive(channel), 10) for _ in range(count)]


async def nothing_more(layer: Any, channel: str) -> None:
    """The next message on ``channel`` is a sentinel sent now."""
    await layer.send(channel, {"type": "sentinel"})
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "sentinel"}


def stream_notifications(admin: Admin, prefix: str, group: str) -> Any:
    """A connection listening on ``group``'s stream, from outside the layer."""
    spy = psycopg.Connection.connect(server_dsn(), autocommit=True)
    spy.execute(
        sql.SQL("LISTEN {}").format(sql.Identifier(listen_identifier(f".{prefix}", f"#{group}")))
    )
    return spy


@NOTES
def test_one_row_and_one_notification_reach_members_in_eight_processes(
    prefix: str, admin: Admin, notes: bool
) -> None:
    async def scenario() -> None:
        *receivers, sender = layers(prefix, 9, notes)
        members = {layer: [await layer.new_channel() for _ in range(10)] for layer in receivers}
        for layer, channels in members.items():
            for channel in channels:
                await layer.group_add("eight", channel)
            await nothing_more(layer, channels[0])  # each listener listens
        spy = stream_notifications(admin, prefix, "eight")
        for n in range(5):
            await sender.group_send("eight", {"type": "g", "n": n})
        heard = list(spy.notifies(timeout=5, stop_after=5))
        spy.close()
        assert len(heard) == 5  # one per group message
        assert admin.rows(f'SELECT queue, count(*) FROM "{prefix}message" GROUP BY queue') == [
            ("#eight", 5)
        ]
        for layer, channels in members.items():
            for channel in channels:
                assert [m["n"] for m in await receive_all(layer, channel, 5)] == list(range(5))
            await nothing_more(layer, channels[-1])
        delivered = sum(engine_of(layer)._delivery.from_streams for layer in receivers)
        assert delivered == 5 * len(receivers)  # once per process, for all its members
        for layer in [*receivers, sender]:
            await layer.close()

    run(scenario())


@NOTES
def test_a_member_gets_only_what_was_sent_after_it_joined(prefix: str, notes: bool) -> None:
    async def scenario() -> None:
        receiver, sender = layers(prefix, 2, notes)
        early = await receiver.new_channel()
        await receiver.group_add("joined", early)
        await sender.group_send("joined", {"n": 1})
        late = await receiver.new_channel()
        await receiver.group_add("joined", late)
        await sender.group_send("joined", {"n": 2})
        # The receiver listens only now: it reads both messages from the stream, for
        # members that joined at different points of it.
        assert [m["n"] for m in await receive_all(receiver, early, 2)] == [1, 2]
        assert [m["n"] for m in await receive_all(receiver, late, 1)] == [2]
        await nothing_more(receiver, late)
        await nothing_more(receiver, early)
        for layer in (receiver, sender):
            await layer.close()

    run(scenario())


@NOTES
def test_direct_and_group_messages_of_one_sender_arrive_in_the_order_sent(
    prefix: str, notes: bool
) -> None:
    """Direct messages come through the process's queue, group messages through the
    group's stream; a sender that awaits each call sees them arrive in its order, also
    for messages too large for a notification and when the listener starts mid-way."""

    async def scenario() -> None:
        receiver, sender = layers(prefix, 2, notes)
        channel = await receiver.new_channel()
        await receiver.group_add("ordered", channel)
        sent = []
        for n in range(120):
            size = 9000 if n % 7 == 0 else 10
            if n % 2:
                await sender.group_send("ordered", message(n, "group", size))
            else:
                await sender.send(channel, message(n, channel, size))
            sent.append(n)
            if n == 40:
                # The receiver starts here: what came before is in the table.
                waiting = asyncio.ensure_future(receive_all(receiver, channel, 120))
        got = await asyncio.wait_for(waiting, 30)
        assert [m["n"] for m in got] == sent
        await nothing_more(receiver, channel)
        await receiver.close()
        await sender.close()

    run(scenario())


def test_memberships_changed_by_another_process_are_followed_at_once(prefix: str) -> None:
    async def scenario() -> None:
        owner, admin_process, sender = layers(prefix, 3)
        channel = await owner.new_channel()
        await nothing_more(owner, channel)  # listening, in no group yet
        await admin_process.group_add("remote", channel)
        await sender.group_send("remote", {"n": 1})
        assert [m["n"] for m in await receive_all(owner, channel, 1)] == [1]
        await admin_process.group_discard("remote", channel)
        await sender.group_send("remote", {"n": 2})
        await nothing_more(owner, channel)  # message 2 did not come
        await admin_process.group_add("remote", channel)
        await sender.group_send("remote", {"n": 3})
        assert [m["n"] for m in await receive_all(owner, channel, 1)] == [3]
        for layer in (owner, admin_process, sender):
            await layer.close()

    run(scenario())


def test_forged_and_replayed_stream_notifications_deliver_and_skip_nothing(
    prefix: str, admin: Admin, outsider: str
) -> None:
    """A role that can only connect hears the stream's notifications (sealed) and sends
    its own: replays with another position, changed notes, garbage. Members get each
    real message once, and none after them is skipped."""

    async def scenario() -> None:
        receiver, sender = layers(prefix, 2)
        channel = await receiver.new_channel()
        await receiver.group_add("forged", channel)
        await nothing_more(receiver, channel)
        identifier = listen_identifier(f".{prefix}", "#forged")
        spy = psycopg.Connection.connect(outsider, autocommit=True)
        spy.execute(sql.SQL("LISTEN {}").format(sql.Identifier(identifier)))
        await sender.group_send("forged", {"n": 1, "secret": "classified"})
        assert [m["n"] for m in await receive_all(receiver, channel, 1)] == [1]
        (heard,) = [n.payload for n in spy.notifies(timeout=5, stop_after=1)]
        _, last, note = heard.split(":", 2)
        assert "classified" not in heard
        attempts = [
            heard,  # replayed as is
            f"{last}:{int(last) + 1000}:{note}",  # as the next message, far ahead
            f"{last}:{int(last) + 1}:{note[:-4]}AAAA",  # changed
            f"{last}:{int(last) + 1}:",  # "read the table", where nothing is
            "garbage",
            f"{last}:x:{note}",
        ]
        for text in attempts:
            spy.execute("SELECT pg_notify(%s, %s)", [identifier, text])
        await sender.group_send("forged", {"n": 2})
        await sender.group_send("forged", {"n": 3})
        assert [m["n"] for m in await receive_all(receiver, channel, 2)] == [2, 3]
        await nothing_more(receiver, channel)
        spy.close()
        assert receiver.events.get("receive.forged_notification") >= 3
        for layer in (receiver, sender):
            await layer.close()

    run(scenario())


def test_after_the_server_lost_its_unlogged_tables_group_messages_arrive_again(
    prefix: str, admin: Admin
) -> None:
    """A crash empties unlogged tables and starts their id sequence again: a process that
    had read a stream far ahead reads it from the start once its listener is back."""

    async def scenario() -> None:
        receiver, sender = layers(prefix, 2)
        channel = await receiver.new_channel()
        await receiver.group_add("crash", channel)
        for n in range(3):
            await sender.group_send("crash", {"n": n})
        assert [m["n"] for m in await receive_all(receiver, channel, 3)] == [0, 1, 2]
        listener = engine_of(receiver).listener
        # What crash recovery does to the unlogged tables and their sequence.
        admin.conn.execute(f'DELETE FROM "{prefix}message"')
        admin.conn.execute(f'DELETE FROM "{prefix}group_stream"')
        admin.conn.execute(f'ALTER SEQUENCE "{prefix}message_id_seq" RESTART')
        assert admin.terminate(listener.backend_pid)
        await await_for(lambda: listener.reconnects == 1, "the listener is back")
        for n in range(3, 6):
            await sender.group_send("crash", {"n": n})
        assert [m["n"] for m in await receive_all(receiver, channel, 3)] == [3, 4, 5]
        await nothing_more(receiver, channel)
        for layer in (receiver, sender):
            await layer.close()

    run(scenario())


def test_killing_listeners_while_group_messages_are_in_flight_loses_and_duplicates_nothing(
    prefix: str, admin: Admin
) -> None:
    """Three receiving processes with 20 members each; the LISTEN backend of one is
    terminated 4 times while 400 group messages (10 % too large for a notification) are
    sent. Safety sweeps are off: only notes and catch-ups after each reconnect deliver."""
    kills, count = 4, 400
    apps = [unique("ce_g") for _ in range(3)]
    children = []

    def size_of(_channel: str, n: int) -> int:
        return 9000 if n % 10 == 3 else 100

    with contextlib.ExitStack() as stack:
        for app in apps:
            job = {
                "job": "receive",
                "config": config(
                    app,
                    prefix=prefix,
                    listen_dsn=server_dsn(),
                    listen_connection={"application_name": app + "_l"},
                    sweep_interval=3600.0,
                    capacity=10_000,
                ),
                "new": 20,
                "groups": ["killed"],
                "expect": count,
                "timeout": 90,
                "hold": True,
            }
            children.append(stack.enter_context(Child(job)))
        readies = [child.expect("ready") for child in children]
        victim = apps[0] + "_l"

        async def scenario() -> list[int]:
            sender = make_layer(unique("ce_g"), prefix=prefix, capacity=10_000)
            pids = [readies[0]["listener_pid"]]
            for n in range(count):
                if n and n % (count // (kills + 1)) == 0 and len(pids) <= kills:
                    assert await asyncio.to_thread(admin.terminate, pids[-1])
                    pids.append(
                        await asyncio.to_thread(
                            wait_for,
                            lambda: listening_backend(admin, victim, pids),
                            "a new LISTEN backend",
                        )
                    )
                await sender.group_send("killed", message(n, "group", size_of("", n)))
            await sender.close()
            return pids

        pids = run(scenario())
        for child, ready in zip(children, readies, strict=True):
            received = child.expect("received", timeout=120)
            assert received["errors"] == []
            assert received["timed_out"] == 0
            order: dict[str, list[int]] = {channel: [] for channel in ready["channels"]}
            for channel, n, size, sha in received["messages"]:
                order[channel].append(n)
                assert size == size_of(channel, n)
                assert sha == digest(payload_bytes(size, n))
            assert order == {channel: list(range(count)) for channel in ready["channels"]}
            child.tell("")
            child.expect("closing")
            assert child.finish() == 0
    assert len(set(pids)) == kills + 1
