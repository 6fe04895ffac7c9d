"""Claims into the mailbox: capacity, bad rows, duplicates, flushes and forged notifications.

Rows are written straight into the tables here, as another program or role could, and
notifications are sent from a role that has nothing but CONNECT.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from channels.exceptions import ChannelFull
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from channels_engines import EngineChannelLayer
from channels_engines.postgres.schema import listen_identifier
from channels_engines.serialization import encode
from channels_engines.testing import as_stored
from tests.support.pgtools import (
    Admin,
    Child,
    config,
    engine_of,
    make_layer,
    run,
    server_dsn,
    unique,
)
from tests.support.polling import await_for

pytestmark = pytest.mark.postgres


def insert(admin: Admin, prefix: str, queue: str, channels: Any, payload: bytes, **kw: Any) -> None:
    """A row as another writer would store it (``expires_at`` an SQL expression)."""
    expires = kw.get("expires_at", "now() + interval '1 minute'")
    columns = "queue, channels, expires_at, payload"
    values = f"%s, %s, {expires}, %s"
    params: list[Any] = [queue, channels, payload]
    if "sender" in kw:
        columns += ", sender, seq"
        values += ", %s, %s"
        params += [kw["sender"], kw["seq"]]
    admin.conn.execute(
        sql.SQL("INSERT INTO {} (" + columns + ") VALUES (" + values + ")").format(
            sql.Identifier(prefix + "message")
        ),
        params,
    )


def sealed(layer: EngineChannelLayer, channel: str, message: dict[str, Any]) -> bytes:
    """``message`` as the layer stores it for ``channel``: encoded, and sealed."""
    return as_stored(layer, channel, encode(message))


def wake(admin: Admin, prefix: str, queue: str) -> None:
    admin.conn.execute("SELECT pg_notify(%s, '')", [listen_identifier(f".{prefix}", queue)])


async def started(layer: EngineChannelLayer, channel: str) -> None:
    """A message through ``channel`` and back: the tables exist and the listener listens."""
    await layer.send(channel, {"type": "start"})
    assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "start"}


# Capacity ------------------------------------------------------------------------------


def test_a_receiving_process_takes_only_its_capacity_so_senders_get_channel_full(
    app: str, prefix: str
) -> None:
    """Nothing whose send() returned is dropped for capacity: what does not fit in the
    receiving process stays in the table, where it counts against senders."""
    layer = make_layer(app, prefix=prefix, capacity=100)

    async def scenario() -> None:
        read = await layer.new_channel()
        unread = await layer.new_channel()  # same process queue, nobody receives
        await started(layer, read)
        for n in range(100):
            await layer.send(unread, {"n": n})
        mailbox = layer._shared.mailbox
        await await_for(lambda: mailbox.buffered(unread) == 100, "100 taken into memory")
        accepted, refused = 100, 0
        for n in range(100, 300):
            try:
                await layer.send(unread, {"n": n})
            except ChannelFull:
                refused += 1
            else:
                accepted += 1
        assert (accepted, refused) == (200, 100)
        received = [(await asyncio.wait_for(layer.receive(unread), 10))["n"] for _ in range(200)]
        assert received == list(range(200))
        # Refused sends are counted; nothing was dropped or repaired.
        assert layer.events.snapshot() == {"send.channel_full": 100}
        await layer.close()

    run(scenario())


# Bad rows ------------------------------------------------------------------------------

BAD_ROWS = {
    "an infinite expiry": ("{{{own}}}", "'infinity'"),
    "no channels": ("{{}}", None),
    "a NULL channel": ("{{NULL}}", None),
    "a channel of another process": ("{{other.abc!x}}", None),
    "an invalid channel name": ('{{"{queue}with space"}}', None),
    "two dimensions": ("{{{{{own}}}}}", None),
    "an oversized payload": ("{{{own}}}", None),
}


def test_the_tables_refuse_rows_that_would_break_claims(
    app: str, prefix: str, admin: Admin
) -> None:
    layer = make_layer(app, prefix=prefix)

    async def scenario() -> str:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "creates the tables"})
        await layer.close()
        return channel

    channel = run(scenario())
    queue = channel.split("!")[0] + "!"
    for channels, expires in (
        ("{}", None),
        ("{NULL}", None),
        ("{{a,b}}", None),
        ([channel], "'infinity'"),
        ([channel], "'-infinity'"),
    ):
        with pytest.raises(psycopg.errors.CheckViolation):
            insert(
                admin,
                prefix,
                queue,
                channels,
                b"\x80",
                **({"expires_at": expires} if expires else {}),
            )
    with pytest.raises(psycopg.errors.CheckViolation):
        admin.conn.execute(
            sql.SQL(
                "INSERT INTO {} (queue, channels, expires_at, payload) VALUES (%s, %s, now(),"
                " decode(repeat('00', 268435457), 'hex'))"
            ).format(sql.Identifier(prefix + "message")),
            [queue, [channel]],
        )
    for capacity, expires in ((0, "now()"), (1, "'infinity'")):
        with pytest.raises(psycopg.errors.CheckViolation):
            admin.conn.execute(
                sql.SQL(
                    "INSERT INTO {} (group_name, channel, queue, listen, capacity, expires_at)"
                    " VALUES ('g', %s, %s, 'x', %s, " + expires + ")"
                ).format(sql.Identifier(prefix + "group_member")),
                [channel, queue, capacity],
            )


@pytest.mark.parametrize("shared", [False, True], ids=["own queue", "shared queue"])
def test_bad_rows_are_skipped_and_counted_and_the_rest_of_their_batch_arrives(
    app: str, prefix: str, admin: Admin, shared: bool
) -> None:
    """Rows that the tables' checks would refuse (written before the checks existed, or by
    a role that dropped them) never reach receive() and never cost a good row."""
    layer = make_layer(app, prefix=prefix, max_message_size=1024)

    async def scenario() -> None:
        channel = "bad.rows" if shared else await layer.new_channel()
        queue = channel if shared else channel.split("!")[0] + "!"
        await started(layer, channel)
        for table, constraint in (
            ("message", "message_channels_valid"),
            ("message", "message_expiry_finite"),
        ):
            admin.conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                    sql.Identifier(prefix + table), sql.Identifier(constraint)
                )
            )
        receivers = (
            [asyncio.ensure_future(layer.receive(channel)) for _ in range(8)] if shared else []
        )
        good = 0
        for what, (channels, expires) in BAD_ROWS.items():
            insert(
                admin, prefix, queue, [channel], sealed(layer, channel, {"type": "good", "n": good})
            )
            good += 1
            payload = b"\x81\xa4type\xa3bad" + (b"\x00" * 2000 if "oversized" in what else b"")
            text = channels.format(own=channel, queue=queue)
            insert(
                admin, prefix, queue, text, payload, **({"expires_at": expires} if expires else {})
            )
        insert(admin, prefix, queue, [channel], sealed(layer, channel, {"type": "good", "n": good}))
        good += 1
        wake(admin, prefix, queue)
        if shared:
            received = [await asyncio.wait_for(r, 10) for r in receivers]
        else:
            received = [await asyncio.wait_for(layer.receive(channel), 10) for _ in range(good)]
        assert received == [{"type": "good", "n": n} for n in range(good)]
        assert layer.events.get("receive.invalid_row") == len(BAD_ROWS) - 1
        assert layer.events.get("receive.undecodable") == 1  # the oversized payload
        await await_for(lambda: admin.table_count(prefix + "message") == 0, "every row claimed")
        await layer.close()

    run(scenario())


# Duplicates ----------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True], ids=["own queue", "shared queue"])
def test_a_second_copy_of_a_message_is_dropped_by_its_sender_and_sequence_number(
    app: str, prefix: str, admin: Admin, shared: bool
) -> None:
    """What a retried send stores when the first attempt's answer was lost after it
    committed: the same (sender, seq) again, after the first copy was received."""
    layer = make_layer(app, prefix=prefix)

    async def scenario() -> None:
        channel = "dup.rows" if shared else await layer.new_channel()
        queue = channel if shared else channel.split("!")[0] + "!"
        await started(layer, channel)
        sender = 424242
        for seq in (1, 2):
            insert(
                admin,
                prefix,
                queue,
                [channel],
                sealed(layer, channel, {"seq": seq}),
                sender=sender,
                seq=seq,
            )
        wake(admin, prefix, queue)
        first = [await asyncio.wait_for(layer.receive(channel), 10) for _ in range(2)]
        assert first == [{"seq": 1}, {"seq": 2}]
        # The retry's copies of both, then a new message of the same sender.
        for seq in (1, 2, 3):
            insert(
                admin,
                prefix,
                queue,
                [channel],
                sealed(layer, channel, {"seq": seq}),
                sender=sender,
                seq=seq,
            )
        wake(admin, prefix, queue)
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"seq": 3}
        assert layer.events.get("receive.duplicate") == 2
        await layer.close()

    run(scenario())


# Forged notifications ------------------------------------------------------------------


@pytest.fixture
def outsider(admin: Admin) -> Iterator[psycopg.Connection[Any]]:
    """A session of a role that has nothing but CONNECT (every role has it by default)."""
    role = unique("ce_outsider")
    admin.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    params = {**conninfo_to_dict(server_dsn()), "user": role}
    params.pop("password", None)
    conn = psycopg.connect(**params, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()
        admin.conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_notifications_from_another_role_destroy_create_or_reorder_nothing(
    app: str, prefix: str, outsider: psycopg.Connection[Any]
) -> None:
    layer = make_layer(app, prefix=prefix)

    async def scenario() -> None:
        channel = await layer.new_channel()
        normal = unique("forged.normal")
        for n in range(10):
            await layer.send(channel, {"n": n, "text": "classified"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 0, "text": "classified"}
        mailbox = layer._shared.mailbox
        await await_for(lambda: mailbox.buffered(channel) == 9, "taken but not yet received")
        engine = engine_of(layer)
        namespace = f".{prefix}"
        names = [
            listen_identifier(namespace, "#flush"),
            listen_identifier(namespace, channel.split("!")[0] + "!"),
            listen_identifier(namespace, normal),
            engine._control,  # not computable from outside; sniffed, at worst
        ]
        for name in names:
            outsider.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
        for name in names:
            for payload in ("", "flush", "check", "listen", "1", "x" * 7000):
                outsider.execute("SELECT pg_notify(%s, %s)", [name, payload])
        # Notifications reach the listener in commit order: once this message is
        # received, every forged one before it has been handled.
        await layer.send(channel, {"n": 10})
        received = [(await asyncio.wait_for(layer.receive(channel), 10))["n"] for _ in range(10)]
        assert received == list(range(1, 11))
        await layer.send(channel, {"n": "sentinel"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": "sentinel"}
        # The forged notifications that looked like messages were counted and ignored;
        # the wake-ups made a claim, which found rows already delivered from their
        # notifications (and not yet deleted) and dropped them.
        events = layer.events.snapshot()
        assert events.pop("receive.forged_notification") == 5
        assert set(events) <= {"receive.duplicate"}
        # What the outsider heard carries no readable message content: wake-ups, the
        # listener's own checks, and sealed messages.
        heard = list(outsider.notifies(timeout=0.5, stop_after=10_000))
        assert heard
        theirs = [note.payload for note in heard if note.pid != outsider.info.backend_pid]
        assert theirs
        notes = [p for p in theirs if p.startswith("m1:")]
        assert notes
        for payload in notes:
            assert b"classified" not in base64.b64decode(payload.rsplit(":", 1)[1])
        others = [p for p in theirs if not p.startswith("m1:")]
        assert all(p in ("", "listen") or p.startswith("check:") for p in others), others
        await layer.close()

    run(scenario())


def test_a_flush_drops_what_every_process_had_taken_and_nothing_sent_after_it(
    app: str, prefix: str
) -> None:
    flusher = make_layer(unique("ce_t"), prefix=prefix)
    receiver = make_layer(app, prefix=prefix)

    async def scenario() -> None:
        channel = await receiver.new_channel()
        for n in range(5):
            await receiver.send(channel, {"n": n})
        assert await asyncio.wait_for(receiver.receive(channel), 10) == {"n": 0}
        mailbox = receiver._shared.mailbox
        await await_for(lambda: mailbox.buffered(channel) == 4, "taken but not yet received")
        await flusher.flush()
        await flusher.send(channel, {"n": "after"})
        # The receiving process drops what it had taken when it hears of the flush (from
        # its notification, or from the claim that brings the next message).
        await await_for(lambda: mailbox.buffered(channel) == 1, "the flush heard")
        assert await asyncio.wait_for(receiver.receive(channel), 10) == {"n": "after"}
        await receiver.close()
        await flusher.close()

    run(scenario())


@pytest.mark.parametrize("kind", ["normal", "process-specific"])
def test_cancelled_receives_lose_nothing_while_another_process_sends(
    kind: str, app: str, prefix: str, admin: Admin
) -> None:
    total = 2000

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix, capacity=total)
        channel = "cancel.normal" if kind == "normal" else await layer.new_channel()
        rng = random.Random(8)
        got: list[dict[str, Any]] = []
        cancelled = 0
        child_config = config(unique("ce_t"), prefix=prefix, capacity=total)
        # Own-queue rows are all claimed at once: a steady sender keeps receive() waiting.
        pause = 0 if kind == "normal" else 0.001
        job = {
            "job": "send",
            "config": child_config,
            "plan": [[channel, 0, total, 0]],
            "pause": pause,
        }
        with Child(job) as child:
            await child.aexpect("ready")
            child.tell()
            for _ in range(total):
                task = asyncio.ensure_future(layer.receive(channel))
                delay = rng.choice([0.0, rng.uniform(0, 0.003)])
                if delay:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    got.append(await task)
                except asyncio.CancelledError:
                    cancelled += 1
            while len(got) < total:
                got.append(await asyncio.wait_for(layer.receive(channel), 20))
            sent = await child.aexpect("sent")
            assert sent["errors"] == []
            assert child.finish() == 0
        assert cancelled > 200  # the race was exercised both ways
        assert total - cancelled > 200
        assert [item["n"] for item in got] == list(range(total))
        await layer.send(channel, {"type": "sentinel"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "sentinel"}
        await await_for(lambda: admin.table_count(prefix + "message") == 0, "rows deleted")
        await layer.close()

    run(scenario())


def index_items_by_row(admin: Admin, index: str) -> str:
    """The items on the leaf pages of a btree ``index`` in the order of the rows they
    point to (the order the rows were inserted in): "d" for one marked dead, "L" for one
    that still looks live."""
    admin.conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    pages = admin.scalar(
        "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int", [index]
    )
    items: list[tuple[tuple[int, int], bool]] = []
    for block in range(1, pages):
        if admin.scalar("SELECT type FROM bt_page_stats(%s, %s)", [index, block]) != "l":
            continue
        for dead, htid in admin.rows(
            "SELECT dead, htid::text FROM bt_page_items(%s, %s) WHERE htid IS NOT NULL",
            [index, block],
        ):
            page, _, offset = str(htid).strip("()").partition(",")
            items.append(((int(page), int(offset)), bool(dead)))
    return "".join("d" if dead else "L" for _, dead in sorted(items))


def test_claims_mark_the_index_entries_of_claimed_rows_dead_so_later_scans_skip_them(
    app: str, prefix: str, admin: Admin
) -> None:
    """Between two vacuums a busy queue's index fills with entries of deleted rows; the
    listener's claims must mark them dead (plain index scans), or every send and claim
    visits all of them again (bitmap scans)."""
    layer = make_layer(app, prefix=prefix)

    async def scenario() -> str:
        channel = await layer.new_channel()
        await layer.send(channel, {"n": -1})  # creates the tables
        assert (await layer.receive(channel))["n"] == -1
        # No vacuum may remove the entries under observation.
        admin.conn.execute(f"ALTER TABLE {prefix}message SET (autovacuum_enabled = off)")
        for n in range(600):
            await layer.send(channel, {"n": n})
            assert (await layer.receive(channel))["n"] == n
        await layer.close()
        return str(
            admin.scalar(
                "SELECT indexrelid::regclass FROM pg_index WHERE indrelid = %s::regclass",
                [prefix + "message"],
            )
        )

    index = run(scenario())
    items = index_items_by_row(admin, index)
    # Marked entries are skipped by every scan and removed when their page fills up, so
    # the index does not keep one entry per claimed row (601 here) until a vacuum. Only
    # the newest rows' entries still look live: a deletion's entries are marked by a
    # later scan once no snapshot can see the rows, so the last few deletions (how many
    # depends on the timing of the other sessions) keep theirs until a vacuum.
    assert "L" not in items.rstrip("L"), items
    assert items.count("L") < 100, items
    assert len(items) < 300, items
