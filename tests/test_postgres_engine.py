"""The PostgreSQL engine's required behaviour, proved against a real server.

Every test uses its own tables (a fresh ``table_prefix``, dropped afterwards) and its own
``application_name``, so it can count exactly its own server connections even when other
suites use the same server. Waiting for the server side is done by polling an observable
condition with a deadline; nothing is synchronised with sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import math
import os
import random
import re
import subprocess
import sys
import threading
import warnings
from collections import Counter
from typing import Any

import psycopg
import pytest
from asgiref.sync import async_to_sync
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from channels_engines import EngineChannelLayer
from channels_engines.exceptions import InvalidConfigError
from channels_engines.layer import MAX_EXPIRY, MAX_GROUP_EXPIRY
from channels_engines.postgres import maintenance as maintenance_module
from channels_engines.postgres.listener import ListenerUnavailable
from channels_engines.postgres.schema import Statements, Tables, listen_identifier
from channels_engines.serialization import encode
from tests.pg_backend import base as counting_backend
from tests.support.pgtools import (
    REPO,
    Admin,
    Child,
    LogCapture,
    Sampler,
    client_connections,
    config,
    database_alias,
    default_database,
    digest,
    dropped_afterwards,
    engine_of,
    make_layer,
    message,
    run,
    server_dsn,
    unique,
)
from tests.support.polling import await_for, payload_bytes, wait_for

pytestmark = pytest.mark.postgres


# 1. Connection budget ------------------------------------------------------------------


def test_500_waiting_receivers_use_one_listener_and_at_most_two_pool_connections(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> None:
        # Process-specific channels share one capacity: room for all 500 messages.
        layer = make_layer(app, prefix=prefix, capacity=500)
        channels = [await layer.new_channel() for _ in range(500)]
        with Sampler(app) as sampler:
            # All 500 receive() calls start in the same event loop step.
            receivers = [asyncio.ensure_future(layer.receive(channel)) for channel in channels]
            mailbox = layer._shared.mailbox
            await await_for(lambda: len(mailbox.waiting()) == 500, "500 waiting receivers")
            listener = engine_of(layer).listener
            await asyncio.to_thread(sampler.sample)  # while they wait
            backends = await asyncio.to_thread(admin.backends, app)
            assert listener.backend_pid in backends
            assert len(backends) <= 3

            await asyncio.gather(
                *(layer.send(channel, message(n, channel)) for n, channel in enumerate(channels))
            )
            results = await asyncio.wait_for(asyncio.gather(*receivers), 30)
            await asyncio.to_thread(sampler.sample)  # after they were woken
        assert [result["ch"] for result in results] == channels
        assert [result["n"] for result in results] == list(range(500))
        assert mailbox.waiting() == {}
        assert all(mailbox.buffered(channel) == 0 for channel in channels)
        assert admin.table_count(prefix + "message") == 0
        assert sampler.samples >= 2
        assert sampler.max_connections <= 3, sampler.max_connections
        assert sampler.server_max <= 3, sampler.server_max
        await layer.close()

    run(scenario())


def test_connection_count_does_not_grow_with_groups_and_receive_calls(
    app: str, prefix: str
) -> None:
    """200 groups, 2,000 receive() calls over 100 normal channels, then their messages."""

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix, capacity=1000)
        channels = [f"budget.normal-{index}" for index in range(100)]
        with Sampler(app) as sampler:
            await asyncio.gather(
                *(layer.group_add(f"budget-group-{g}", channels[g % 100]) for g in range(200))
            )
            receivers = [
                asyncio.ensure_future(layer.receive(channel))
                for channel in channels
                for _ in range(20)
            ]
            await await_for(
                lambda: sum(layer._shared.mailbox.waiting().values()) == 2000, "2,000 waiting"
            )
            await asyncio.to_thread(sampler.sample)
            await asyncio.gather(
                *(layer.group_send(f"budget-group-{g}", {"type": "g", "n": g}) for g in range(200))
            )
            await asyncio.gather(
                *(layer.send(channels[n % 100], {"type": "s", "n": n}) for n in range(1800))
            )
            results = await asyncio.wait_for(asyncio.gather(*receivers), 30)
            await asyncio.to_thread(sampler.sample)
        received = Counter((result["type"], result["n"]) for result in results)
        assert received == Counter([("g", g) for g in range(200)] + [("s", n) for n in range(1800)])
        assert sampler.max_connections <= 3, sampler.max_connections
        assert sampler.server_max <= 3, sampler.server_max
        await layer.close()

    run(scenario())


def test_each_event_loop_has_its_own_listener_and_pool_within_the_same_budget(
    app: str, prefix: str, admin: Admin
) -> None:
    """A layer used by two event loops (as with a thread): 2 x (1 listener + 2 pooled)."""
    layer = make_layer(app, prefix=prefix, capacity=1000)
    listeners: dict[str, Any] = {}
    results: dict[str, list[int]] = {}

    async def receive_many(name: str, gate: threading.Barrier) -> None:
        channels = [f"loops.{name}-{index}" for index in range(50)]
        receivers = [asyncio.ensure_future(layer.receive(channel)) for channel in channels]
        await asyncio.sleep(0)
        await asyncio.to_thread(gate.wait, 30)  # both loops have receivers waiting
        await asyncio.gather(*(layer.send(channel, {"n": n}) for n, channel in enumerate(channels)))
        results[name] = [
            item["n"] for item in await asyncio.wait_for(asyncio.gather(*receivers), 30)
        ]
        listeners[name] = engine_of(layer).listener.backend_pid
        await asyncio.to_thread(gate.wait, 30)  # sampled before either loop closes
        await layer.close()

    gate = threading.Barrier(3)
    with Sampler(app) as sampler:
        threads = [
            threading.Thread(target=run, args=(receive_many(name, gate),)) for name in ("a", "b")
        ]
        for thread in threads:
            thread.start()
        gate.wait(30)
        sampler.sample()
        gate.wait(30)
        sampler.sample()
        for thread in threads:
            thread.join(60)
    assert results == {"a": list(range(50)), "b": list(range(50))}
    assert len(set(listeners.values())) == 2  # one LISTEN connection per loop
    assert sampler.max_connections <= 6, sampler.max_connections
    assert sampler.server_max <= 6, sampler.server_max
    wait_for(lambda: admin.count(app) == 0, "every connection released")


# 2. No session advisory locks -------------------------------------------------------------


def test_no_session_advisory_lock_is_held_while_sending_receiving_and_cleaning_up(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> None:
        layer = make_layer(
            app, prefix=prefix, expiry=0.3, cleanup_interval=0.05, sweep_interval=0.05
        )
        with Sampler(app, every=0.001) as sampler:
            channel = await layer.new_channel()
            await layer.group_add("locks", channel)
            await layer.group_add("locks", "locks.unread")
            for n in range(30):
                await layer.send(channel, {"type": "m", "n": n})
                await layer.group_send("locks", {"type": "g", "n": n})
                await layer.send(f"locks.unread-{n % 3}", {"type": "never read"})
                assert (await layer.receive(channel))["n"] == n
                assert (await layer.receive(channel))["n"] == n
            maintenance = engine_of(layer).maintenance
            await await_for(lambda: maintenance.cleanups >= 5, "five cleanup runs")
            await await_for(
                lambda: admin.table_count(prefix + "message") == 0, "expired rows deleted"
            )
            assert admin.advisory_locks(app) == []
        assert sampler.samples > 10
        assert sampler.session_locks == []
        await layer.close()

    run(scenario())


# 3. Groups -----------------------------------------------------------------------------


def test_group_send_is_one_transaction_with_one_row_per_receiving_process(
    prefix: str, admin: Admin
) -> None:
    async def scenario() -> None:
        first = make_layer(unique("ce_t"), prefix=prefix)
        second = make_layer(unique("ce_t"), prefix=prefix)
        sender = make_layer(unique("ce_t"), prefix=prefix)
        assert first.client_id != second.client_id
        members = {
            first: [await first.new_channel("member") for _ in range(50)],
            second: [await second.new_channel("member") for _ in range(50)],
        }
        normal = ["group.normal-a", "group.normal-b", "group.normal-c"]
        for layer, channels in members.items():
            for channel in channels:
                await layer.group_add("room", channel)
        for channel in normal:
            await sender.group_add("room", channel)

        await sender.group_send("room", {"type": "room.message", "n": 1})

        rows = admin.rows(
            f'SELECT queue, cardinality(channels), xmin::text FROM "{prefix}message" ORDER BY queue'
        )
        expected_queues = sorted(
            [members[first][0].split("!")[0] + "!", members[second][0].split("!")[0] + "!", *normal]
        )
        assert sorted(row[0] for row in rows) == expected_queues
        assert sorted(row[1] for row in rows) == [1, 1, 1, 50, 50]
        assert len({row[2] for row in rows}) == 1  # one transaction

        await sender.group_send("room", {"type": "room.message", "n": 2})
        for layer, channels in [*members.items(), (sender, normal)]:
            for n in (1, 2):  # message 1 exactly once, then message 2
                results = await asyncio.wait_for(
                    asyncio.gather(*(layer.receive(channel) for channel in channels)), 20
                )
                assert [result["n"] for result in results] == [n] * len(channels)
        assert admin.table_count(prefix + "message") == 0
        for layer in (first, second, sender):
            await layer.close()

    run(scenario())


def test_group_send_reaches_members_in_another_process(prefix: str) -> None:
    child_config = config(unique("ce_t"), prefix=prefix)
    with Child(
        {
            "job": "receive",
            "config": child_config,
            "new": 20,
            "channels": ["xgroup.normal"],
            "groups": ["xroom"],
            "expect": 2,
        }
    ) as child:
        ready = child.expect("ready")

        async def scenario() -> None:
            layer = make_layer(unique("ce_t"), prefix=prefix)
            own = [await layer.new_channel() for _ in range(5)]
            for channel in own:
                await layer.group_add("xroom", channel)
            for n in (1, 2):
                await layer.group_send(
                    "xroom", {"type": "x", "n": n, "data": payload_bytes(100, n)}
                )
            for n in (1, 2):
                results = await asyncio.gather(*(layer.receive(channel) for channel in own))
                assert [result["n"] for result in results] == [n] * 5
            await layer.close()

        run(scenario())
        received = child.expect("received")
        assert child.finish() == 0
    assert received["errors"] == []
    assert received["timed_out"] == 0
    per_channel: dict[str, list[int]] = {}
    for channel, n, size, sha in received["messages"]:
        per_channel.setdefault(channel, []).append(n)
        assert (size, sha) == (100, digest(payload_bytes(100, n)))
    assert per_channel == {channel: [1, 2] for channel in ready["channels"]}
    assert len(ready["channels"]) == 21


# 4. Payload sizes --------------------------------------------------------------------


def data_size_for(encoded_size: int, channel: str) -> int:
    """The ``data`` length that makes message(n, channel) encode to ``encoded_size`` bytes."""
    for size in range(encoded_size, encoded_size - 200, -1):
        shape = {"type": "test.message", "n": 1, "ch": channel, "data": bytes(size)}
        if len(encode(shape)) == encoded_size:
            return size
    raise AssertionError(f"no data size encodes to {encoded_size}")


def test_messages_around_the_notify_payload_limit_arrive_intact_across_processes(
    app: str, prefix: str
) -> None:
    sizes = [7_999, 8_000, 8_001, 1024 * 1024]

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix)
        targets = ["payload.normal", await layer.new_channel()]
        plan = [
            [channel, index, 1, data_size_for(size, channel)]
            for channel in targets
            for index, size in enumerate(sizes)
        ]
        # One sequential sender per (channel, size): start them in size order.
        with Child(
            {"job": "send", "config": config(unique("ce_t"), prefix=prefix), "plan": plan}
        ) as child:
            await child.aexpect("ready")
            child.tell()
            sent = await child.aexpect("sent")
            assert sent["errors"] == []
            assert child.finish() == 0
        for channel in targets:
            got = [await asyncio.wait_for(layer.receive(channel), 20) for _ in sizes]
            got.sort(key=lambda item: item["n"])
            for index, (item, size) in enumerate(zip(got, sizes, strict=True)):
                assert item["n"] == index
                assert item["ch"] == channel
                assert len(encode(item)) == size
                assert item["data"] == payload_bytes(data_size_for(size, channel), index)
        await layer.close()

    run(scenario())


# 8. Cancelled receive() ----------------------------------------------------------------


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
        assert admin.table_count(prefix + "message") == 0
        await layer.close()

    run(scenario())


# 9. Cleanup ----------------------------------------------------------------------------


def memberships(admin: Admin, prefix: str) -> set[tuple[str, str]]:
    return {
        (str(group), str(channel))
        for group, channel in admin.rows(f'SELECT group_name, channel FROM "{prefix}group_member"')
    }


def test_cleanup_deletes_expired_messages_and_the_memberships_they_end(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> None:
        options = {"expiry": 0.5, "cleanup_interval": 0.2, "sweep_interval": 0.1}
        layer = make_layer(app, prefix=prefix, **options)
        short = make_layer(unique("ce_t"), prefix=prefix, group_expiry=1, **options)
        await layer.send("cleanup.warmup", {"type": "start"})
        await layer.receive("cleanup.warmup")  # starts the listener, the sweeper and cleanup

        in_table = await layer.new_channel()  # its message expires in the table
        in_mailbox = await layer.new_channel()  # its message expires in this process' buffer
        for group, channel in [
            ("expire", "cleanup.unread-a"),
            ("expire", "cleanup.unread-b"),
            ("expire", in_table),
            ("expire-buffered", in_mailbox),
            ("kept", "cleanup.kept"),
        ]:
            await layer.group_add(group, channel)
        await short.group_add("short-lived", "cleanup.short")
        assert len(memberships(admin, prefix)) == 6

        await layer.group_send("expire", {"type": "never read"})
        for n in range(10):
            await layer.send("cleanup.unread-a", {"type": "never read", "n": n})
        await layer.send(in_mailbox, {"type": "read"})
        assert await layer.receive(in_mailbox) == {"type": "read"}
        await layer.send(in_mailbox, {"type": "buffered, never read"})
        mailbox = layer._shared.mailbox
        await await_for(lambda: mailbox.buffered(in_mailbox) == 1, "the claim into the buffer")

        await await_for(
            lambda: admin.table_count(prefix + "message") == 0, "expired messages deleted", 15
        )
        await await_for(
            lambda: memberships(admin, prefix) == {("kept", "cleanup.kept")},
            "expired memberships deleted",
            15,
        )
        assert mailbox.buffered(in_mailbox) == 0
        await layer.close()
        await short.close()

    run(scenario())


def test_cleanup_is_batched_and_excluded_by_a_transaction_level_lock(
    prefix: str, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two layers (two processes' worth) clean up; a held cleanup lock stops both."""
    monkeypatch.setattr(maintenance_module, "CLEANUP_BATCH", 100)
    options = {"cleanup_interval": 0.05, "sweep_interval": 0.05}
    statements = Statements(Tables(None, prefix, True))
    table = f'"{prefix}message"'

    async def scenario() -> None:
        layers = [make_layer(unique("ce_t"), prefix=prefix, **options) for _ in range(2)]
        for layer in layers:
            await layer.send("batch.warmup", {"type": "start"})
            await layer.receive("batch.warmup")
        # Every DELETE on the message table is recorded with its transaction and row count.
        # Statements that wait for a lock run off the event loop: the layers' cleanup
        # transactions, which hold the locks they wait for, run on it and must go on.
        await asyncio.to_thread(
            admin.conn.execute,
            f'CREATE TABLE "{prefix}deletes" (xid bigint, deleted bigint);'
            f'CREATE FUNCTION "{prefix}log_delete"() RETURNS trigger LANGUAGE plpgsql AS $$'
            f' BEGIN INSERT INTO "{prefix}deletes" SELECT txid_current(), count(*) FROM old;'
            f" RETURN NULL; END $$;"
            f'CREATE TRIGGER "{prefix}deletes" AFTER DELETE ON {table}'
            f" REFERENCING OLD TABLE AS old FOR EACH STATEMENT"
            f' EXECUTE FUNCTION "{prefix}log_delete"()',
        )
        async with await psycopg.AsyncConnection.connect(server_dsn(), autocommit=True) as locker:
            async with locker.transaction():
                await locker.execute("SELECT pg_advisory_xact_lock(%s)", [statements.cleanup_lock])
                await asyncio.to_thread(
                    admin.conn.execute,
                    f"INSERT INTO {table} (queue, channels, expires_at, payload)"
                    " SELECT 'batch.q', ARRAY['batch.q'], now() - interval '1 s', '\\x00'"
                    " FROM generate_series(1, 1000)",
                )
                engines = [engine_of(layer).maintenance for layer in layers]
                before = [engine.cleanups for engine in engines]
                await await_for(
                    lambda: all(
                        engine.cleanups >= start + 3
                        for engine, start in zip(engines, before, strict=True)
                    ),
                    "three cleanup attempts by each layer",
                )
                assert admin.table_count(prefix + "message") == 1000  # nothing deleted
            # The lock is released with the transaction: cleanup proceeds.
            await await_for(
                lambda: admin.table_count(prefix + "message") == 0, "the batches deleted"
            )
        deletes = admin.rows(f'SELECT xid, deleted FROM "{prefix}deletes" WHERE deleted > 0')
        assert sum(deleted for _, deleted in deletes) == 1000
        assert max(deleted for _, deleted in deletes) <= 100
        assert len(deletes) >= 10
        assert len({xid for xid, _ in deletes}) == len(deletes)  # one transaction per batch
        for layer in layers:
            await layer.close()

    try:
        run(scenario())
    finally:
        admin.conn.execute(f'DROP TABLE IF EXISTS "{prefix}deletes"')
        admin.conn.execute(f'DROP FUNCTION IF EXISTS "{prefix}log_delete"() CASCADE')


def dead_index_items(admin: Admin, index: str) -> tuple[int, int]:
    """(items marked dead, all items) on the leaf pages of a btree ``index``."""
    admin.conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    pages = admin.scalar(
        "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int", [index]
    )
    dead = total = 0
    for block in range(1, pages):
        if admin.scalar("SELECT type FROM bt_page_stats(%s, %s)", [index, block]) != "l":
            continue
        items = admin.rows("SELECT dead FROM bt_page_items(%s, %s)", [index, block])
        dead += sum(bool(flag) for (flag,) in items)
        total += len(items)
    return dead, total


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
    dead, total = dead_index_items(admin, index)
    # Marked entries are skipped by every scan and removed when their page fills up, so
    # the index does not keep one entry per claimed row (601 here) until a vacuum.
    assert total - dead <= 5, (dead, total)
    assert total < 300, (dead, total)


# 10. Tables ----------------------------------------------------------------------------


def test_tables_are_created_at_first_use_and_creation_is_idempotent(
    app: str, prefix: str, admin: Admin
) -> None:
    assert admin.tables(prefix + "%") == []

    async def scenario() -> None:
        first = make_layer(app, prefix=prefix)
        await first.send("tables.kept", {"type": "kept"})
        await first.close()
        assert [name for _, name in admin.tables(prefix + "%")] == [
            prefix + "claimed",
            prefix + "control",
            prefix + "group_member",
            prefix + "message",
        ]
        # The DDL itself runs again harmlessly, and a new process' layer starts on it.
        for statement in Statements(Tables(None, prefix, True)).create:
            admin.conn.execute(statement)
        second = make_layer(unique("ce_t"), prefix=prefix)
        assert await asyncio.wait_for(second.receive("tables.kept"), 10) == {"type": "kept"}
        await second.close()

    run(scenario())
    assert len(admin.tables(prefix + "%")) == 4


def test_eight_processes_create_the_tables_at_the_same_instant(admin: Admin) -> None:
    schema = unique("ce_s")
    prefix = unique("ce_t") + "_"
    with dropped_afterwards(prefix, schema):
        layer_config = config(unique("ce_t"), prefix=prefix, schema=schema)
        children = [
            Child({"job": "create", "config": layer_config, "channel": f"create.{index}"})
            for index in range(8)
        ]
        try:
            for child in children:
                child.expect("ready")
            for child in children:
                child.tell()
            results = [child.expect("done")["error"] for child in children]
            codes = [child.finish() for child in children]
        finally:
            for child in children:
                child.kill()
        assert results == [None] * 8
        assert codes == [0] * 8
        assert admin.tables(prefix + "%") == [
            (schema, prefix + "claimed"),
            (schema, prefix + "control"),
            (schema, prefix + "group_member"),
            (schema, prefix + "message"),
        ]
        assert admin.table_count(prefix + "message", schema) == 8


def test_missing_tables_with_create_tables_false_name_the_tables_and_the_fix(
    app: str, prefix: str, admin: Admin
) -> None:
    schema = unique("ce_s")

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix, create_tables=False)
        with pytest.raises(InvalidConfigError) as raised:
            await layer.send("missing.tables", {"type": "x"})
        assert str(raised.value) == (
            f'EngineChannelLayer: the tables "{prefix}message" and "{prefix}group_member" '
            "do not exist and CONFIG['create_tables'] is False. Run `manage.py migrate "
            "channels_engines`, or apply the SQL from `python -m channels_engines.postgres "
            "schema`."
        )
        in_schema = make_layer(app, prefix=prefix, schema=schema, create_tables=False)
        with pytest.raises(
            InvalidConfigError,
            match=re.escape(
                f'the tables "{schema}"."{prefix}message" and "{schema}"."{prefix}group_member" '
                "do not exist"
            ),
        ):
            await in_schema.group_add("missing", "missing.tables")
        await layer.close()
        await in_schema.close()

    run(scenario())
    assert admin.tables(prefix + "%") == []
    assert admin.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]) == 0


def test_the_schema_command_the_error_advises_creates_tables_a_layer_can_use(
    app: str, admin: Admin
) -> None:
    schema = unique("ce_s")
    prefix = unique("ce_p") + "_"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "channels_engines.postgres",
            "schema",
            "--schema",
            schema,
            "--table-prefix",
            prefix,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with dropped_afterwards(prefix, schema):
        admin.conn.execute(result.stdout.encode())
        assert admin.tables(prefix + "%") == [
            (schema, prefix + "claimed"),
            (schema, prefix + "control"),
            (schema, prefix + "group_member"),
            (schema, prefix + "message"),
        ]

        async def scenario() -> None:
            layer = make_layer(app, prefix=prefix, schema=schema, create_tables=False)
            await layer.group_add("advised", "advised.channel")
            await layer.group_send("advised", {"type": "advised"})
            assert await asyncio.wait_for(layer.receive("advised.channel"), 10) == {
                "type": "advised"
            }
            await layer.close()

        run(scenario())
    assert importlib.util.find_spec("channels_engines.migrations") is not None


def test_schema_and_table_prefix_options_place_the_tables(app: str, admin: Admin) -> None:
    schema = unique("ce_s")
    prefix = unique("ce_p") + "_"
    with dropped_afterwards(prefix, schema):

        async def scenario() -> None:
            layer = make_layer(app, prefix=prefix, schema=schema)
            await layer.group_add("placed", "placed.channel")
            await layer.group_send("placed", {"type": "placed"})
            assert admin.tables(prefix + "%") == [
                (schema, prefix + "claimed"),
                (schema, prefix + "control"),
                (schema, prefix + "group_member"),
                (schema, prefix + "message"),
            ]
            assert admin.table_count(prefix + "message", schema) == 1
            assert admin.table_count(prefix + "group_member", schema) == 1
            assert await asyncio.wait_for(layer.receive("placed.channel"), 10) == {"type": "placed"}
            await layer.close()

        run(scenario())


@pytest.mark.parametrize(
    ("key", "value"),
    [("table_prefix", "Bad-Prefix"), ("table_prefix", "p" * 41), ("schema", "x; DROP TABLE y")],
)
def test_invalid_table_prefix_or_schema_is_a_config_error(key: str, value: str) -> None:
    with pytest.raises(InvalidConfigError) as raised:
        EngineChannelLayer(**{**config("ce_t_invalid", prefix="ok_"), key: value})
    assert str(raised.value) == (
        f"EngineChannelLayer: CONFIG[{key!r}] must be a lower-case SQL identifier of at most "
        f"40 characters ([a-z_][a-z0-9_]*), not {value!r} (str)."
    )


@pytest.mark.parametrize(
    "key",
    [
        "pool_timeout",
        "heartbeat_interval",
        "heartbeat_timeout",
        "sweep_interval",
        "cleanup_interval",
    ],
)
@pytest.mark.parametrize("value", [0, math.nan, math.inf, 86400.5])
def test_intervals_and_timeouts_are_finite_positive_and_at_most_a_day(
    key: str, value: float
) -> None:
    with pytest.raises(InvalidConfigError) as raised:
        EngineChannelLayer(**{**config("ce_t_invalid", prefix="ok_"), key: value})
    assert str(raised.value) == (
        f"EngineChannelLayer: CONFIG[{key!r}] must be a number > 0 and <= 86400, not {value!r} "
        f"({type(value).__name__})."
    )


def test_the_largest_numbers_the_settings_allow_work_in_sql(app: str, prefix: str) -> None:
    """Every bound is one the server accepts: capacities fit its integer, expiries its
    intervals and timestamps."""

    async def scenario() -> None:
        layer = make_layer(
            app,
            prefix=prefix,
            capacity=2**31 - 1,
            channel_capacity={"big.*": 2**31 - 1},
            expiry=MAX_EXPIRY,
            group_expiry=MAX_GROUP_EXPIRY,
            pool_timeout=86400,
        )
        try:
            channel = await layer.new_channel()
            await layer.group_add("largest", channel)
            await layer.group_add("largest", "big.channel")
            await layer.send(channel, {"type": "direct"})
            await layer.group_send("largest", {"type": "group"})
            assert await layer.receive(channel) == {"type": "direct"}
            assert await layer.receive(channel) == {"type": "group"}
            assert await layer.receive("big.channel") == {"type": "group"}
        finally:
            await layer.close()

    run(scenario())


# 11. LISTEN identifiers ------------------------------------------------------------------

IDENTIFIER = re.compile(r"ce_[0-9a-f]{32}", re.ASCII)


@settings(max_examples=500, database=None)
@given(namespace=st.text(max_size=200), queue=st.text(max_size=300))
def test_listen_identifier_is_always_ce_and_32_hex_digits(namespace: str, queue: str) -> None:
    identifier = listen_identifier(namespace, queue)
    assert IDENTIFIER.fullmatch(identifier)
    assert len(identifier.encode()) == 35 < 64
    assert identifier == listen_identifier(namespace, queue)


@settings(max_examples=300, database=None)
@given(
    queue=st.from_regex(r"\A[a-zA-Z0-9._-]{1,90}!?\Z"),
    namespaces=st.tuples(st.text(max_size=50), st.text(max_size=50)).filter(lambda t: t[0] != t[1]),
)
def test_listen_identifiers_differ_between_layers_on_other_tables(
    queue: str, namespaces: tuple[str, str]
) -> None:
    assert listen_identifier(namespaces[0], queue) != listen_identifier(namespaces[1], queue)


def test_listen_identifiers_of_100_000_distinct_queues_are_distinct() -> None:
    rng = random.Random(11)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
    queues: set[str] = set()
    while len(queues) < 100_000:
        name = "".join(rng.choices(alphabet, k=rng.randint(1, 99)))
        queues.add(name + "!" if rng.random() < 0.5 and len(name) < 99 else name)
    identifiers = {listen_identifier(".channels_engines_", queue) for queue in queues}
    assert len(identifiers) == 100_000
    assert all(IDENTIFIER.fullmatch(identifier) for identifier in identifiers)


# 12. close() ---------------------------------------------------------------------------


def test_close_releases_every_connection_and_the_layer_works_again_after(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix)
        channel = await layer.new_channel()
        waiting = asyncio.ensure_future(layer.receive(channel))
        # Two operations at once: both pool connections open, plus the listener.
        await asyncio.gather(layer.group_add("close", channel), layer.group_add("close", "close.b"))
        await layer.group_send("close", {"type": "close"})
        assert await asyncio.wait_for(waiting, 10) == {"type": "close"}
        await await_for(lambda: admin.count(app) == 3, "three connections")
        assert client_connections(admin.port) == 3

        await layer.close()

        assert client_connections(admin.port) == 0
        await asyncio.to_thread(wait_for, lambda: admin.count(app) == 0, "no connection left")
        # The next call on this loop opens connections again; close() releases them again.
        await layer.send(channel, {"type": "again"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "again"}
        await layer.close()
        assert client_connections(admin.port) == 0
        await asyncio.to_thread(wait_for, lambda: admin.count(app) == 0, "no connection left")

    run(scenario())


def test_async_to_sync_calls_reuse_a_bounded_set_of_connections_until_close(
    app: str, prefix: str, admin: Admin
) -> None:
    """Each async_to_sync call runs a new event loop; the loop's idle connections are
    handed to the next loop's pool instead of being reopened 400 times."""
    layer = make_layer(app, prefix=prefix, capacity=1000)
    async_to_sync(layer.group_add)("sync-group", "sync.member")
    problems = LogCapture("asyncio", logging.WARNING)
    engine_log = LogCapture("channels_engines", logging.WARNING)
    with warnings.catch_warnings(record=True) as caught, problems, engine_log:
        warnings.simplefilter("always")
        with Sampler(app) as sampler:
            for n in range(200):
                async_to_sync(layer.group_send)("sync-group", {"type": "g", "n": n})
                async_to_sync(layer.send)(f"sync.channel-{n % 10}", {"type": "s", "n": n})
        gc.collect()
    assert sampler.samples > 10
    assert sampler.max_connections <= 3, sampler.max_connections
    assert len(sampler.backends) <= 3, sorted(sampler.backends)
    assert 1 <= client_connections(admin.port) <= 2  # left for the next call (pool_max_size)
    texts = [str(warning.message) for warning in caught] + problems.at_least(logging.WARNING)
    assert texts == []
    assert engine_log.at_least(logging.WARNING) == []
    for needle in ("Task was destroyed", "attached to a different loop", "ResourceWarning"):
        assert not any(needle in text for text in texts)

    async def drain() -> tuple[list[int], list[int]]:
        groups = [(await layer.receive("sync.member"))["n"] for _ in range(200)]
        sends = [(await layer.receive(f"sync.channel-{n % 10}"))["n"] for n in range(200)]
        await layer.close()
        return groups, sends

    groups, sends = run(drain())
    assert groups == list(range(200))
    assert sends == list(range(200))
    assert admin.table_count(prefix + "message") == 0
    assert client_connections(admin.port) == 0  # close() released the handed-off ones too
    wait_for(lambda: admin.count(app) == 0, "every connection released")


def test_a_handed_off_connection_the_server_ended_is_replaced_without_an_error(
    app: str, prefix: str, admin: Admin
) -> None:
    layer = make_layer(app, prefix=prefix)
    async_to_sync(layer.send)("handoff.a", {"n": 1})
    [parked] = admin.backends(app)
    assert admin.terminate(parked)
    wait_for(lambda: admin.count(app) == 0, "the terminated backend to exit")
    with LogCapture("channels_engines", logging.WARNING) as engine_log:
        async_to_sync(layer.send)("handoff.a", {"n": 2})
    assert engine_log.at_least(logging.WARNING) == []
    [replacement] = admin.backends(app)
    assert replacement != parked

    async def drain() -> list[int]:
        received = [(await layer.receive("handoff.a"))["n"] for _ in range(2)]
        await layer.close()
        return received

    assert run(drain()) == [1, 2]
    wait_for(lambda: admin.count(app) == 0, "every connection released")


FORK_SCRIPT = """
import asyncio, os, sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
import django

django.setup()
from tests.support.pgtools import make_layer

layer = make_layer(sys.argv[1], prefix=sys.argv[2])


def parked_pid():
    [(entry, _)] = layer._shared.handoff._entries
    return entry.conn.info.backend_pid


asyncio.run(layer.send("fork.parent", {"n": 1}))
before = parked_pid()
child = os.fork()
if child == 0:
    asyncio.run(layer.send("fork.child", {"n": 2}))
    sys.exit(0)  # a normal exit: atexit handlers and finalizers run in the child
_, status = os.waitpid(child, 0)
asyncio.run(layer.send("fork.parent", {"n": 3}))
print(status, before, parked_pid())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_uses_nor_closes_the_parents_handed_off_connection(
    app: str, prefix: str, admin: Admin
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, app, prefix],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status, before, after = result.stdout.split()
    assert status == "0", result.stderr
    assert before == after  # the parent's session survived the child's exit and was reused
    layer = make_layer(app, prefix=prefix)

    async def drain() -> tuple[list[int], list[int]]:
        parent = [(await layer.receive("fork.parent"))["n"] for _ in range(2)]
        child = [(await layer.receive("fork.child"))["n"]]
        await layer.close()
        return parent, child

    assert run(drain()) == ([1, 3], [2])
    wait_for(lambda: admin.count(app) == 0, "every connection released")


def test_the_handoff_keeps_at_most_its_limit_and_only_gives_back_the_same_login() -> None:
    from channels_engines.postgres.pool import ConnectionPool, IdleHandoff

    handoff = IdleHandoff(2)
    first_login, second_login = object(), object()
    login = first_login

    async def open_three() -> list[Any]:
        pool = ConnectionPool(
            lambda timeout: psycopg.AsyncConnection.connect(server_dsn(), autocommit=True),
            min_size=0,
            max_size=3,
            timeout=10.0,
            check_after=60.0,
            handoff=handoff,
            tag=lambda: login,
        )
        holders = [pool.connection() for _ in range(3)]
        conns = [await holder.__aenter__() for holder in holders]
        for holder in holders:
            await holder.__aexit__(None, None, None)
        await pool.close(hand_off=True)
        return conns

    conns = asyncio.run(open_three())
    assert len(handoff) == 2
    assert sum(conn.closed for conn in conns) == 1  # the third did not fit

    async def take_one() -> int | None:
        pool = ConnectionPool(
            lambda timeout: psycopg.AsyncConnection.connect(server_dsn(), autocommit=True),
            min_size=0,
            max_size=1,
            timeout=10.0,
            check_after=60.0,
            handoff=handoff,
            tag=lambda: login,
        )
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
        opened = pool.stats["connections_opened"]
        await pool.close(hand_off=True)
        return None if opened else pid

    kept = [conn for conn in conns if not conn.closed]
    assert asyncio.run(take_one()) in {conn.info.backend_pid for conn in kept}
    login = second_login  # the credentials changed: the old login's connections go
    assert asyncio.run(take_one()) is None
    assert all(conn.closed for conn in kept)
    assert len(handoff) == 1  # the new login's connection
    handoff.clear()
    assert len(handoff) == 0


def test_a_receive_waiting_when_the_layer_is_closed_does_not_hang_forever(
    app: str, prefix: str
) -> None:
    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix)
        other = make_layer(unique("ce_t"), prefix=prefix)  # another process
        channel = await layer.new_channel()
        await other.send(channel, {"n": 0})
        assert await layer.receive(channel) == {"n": 0}
        waiting = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)
        await layer.close()
        await other.send(channel, {"n": 1})
        # It fails, or it gets the message; either way nothing is lost.
        done, _ = await asyncio.wait([waiting], timeout=5)
        assert done, "the receive() waiting at close() never returned"
        if waiting.exception() is not None:
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 1}
        else:
            assert waiting.result() == {"n": 1}
        await layer.close()
        await other.close()

    run(scenario())


# 13. Django databases ------------------------------------------------------------------


def test_zero_config_connects_with_databases_default(prefix: str, admin: Admin) -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="postgres", table_prefix=prefix)
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "zero"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "zero"}
        pid = engine_of(layer).listener.backend_pid
        row = admin.rows(
            "SELECT datname, usename, application_name FROM pg_stat_activity WHERE pid = %s",
            [pid],
        )
        await layer.close()
        return row

    rows = run(scenario())
    default = default_database()
    assert rows == [(default["NAME"], default["USER"] or rows[0][1], "channels_engines")]
    assert default["NAME"] == conninfo_to_dict(server_dsn()).get("dbname", "test")


def test_a_custom_database_backend_is_asked_for_every_new_connection(
    app: str, prefix: str, admin: Admin
) -> None:
    alias = unique("counting")
    entry = {
        **default_database(),
        "ENGINE": "tests.pg_backend",
        "OPTIONS": {"application_name": app},
    }
    with database_alias(alias, entry):

        async def scenario() -> None:
            layer = EngineChannelLayer(ENGINE="postgres", database=alias, table_prefix=prefix)
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "one"})
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "one"}
            engine = engine_of(layer)
            listener, pool = engine.listener, engine.pool

            def opened() -> int:
                return pool.stats["connections_opened"] + 1 + listener.reconnects

            assert counting_backend.CALLS[alias] == opened()
            # One connection held here: the next operation needs a second one.
            async with pool.connection():
                await layer.group_add("c", "c.a")
            assert pool.stats["connections_opened"] >= 2
            assert counting_backend.CALLS[alias] == opened()
            # A new listener connection.
            before = counting_backend.CALLS[alias]
            await asyncio.to_thread(admin.terminate, listener.backend_pid)
            await await_for(lambda: listener.reconnects == 1, "the listener reconnected")
            assert counting_backend.CALLS[alias] == opened() > before
            waiting = asyncio.ensure_future(layer.receive(channel))
            await layer.send(channel, {"type": "two"})
            assert await asyncio.wait_for(waiting, 10) == {"type": "two"}
            assert set(admin.backends(app)) >= {listener.backend_pid}
            await layer.close()

        run(scenario())


def test_database_naming_a_missing_alias_is_refused_at_construction() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        EngineChannelLayer(ENGINE="postgres", database="nope")
    assert str(raised.value) == (
        "EngineChannelLayer: CONFIG['database'] names 'nope', which is not in "
        "settings.DATABASES (aliases: 'default'). Name a PostgreSQL alias, or give 'dsn' or "
        "'connection'."
    )


def test_database_naming_a_sqlite_alias_fails_clearly_at_first_use() -> None:
    with database_alias("lite", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}):
        layer = EngineChannelLayer(ENGINE="postgres", database="lite")

        async def scenario() -> None:
            # The error names the alias, its backend and the problem, at every use.
            clear = r"DATABASES\['lite'\].*'django\.db\.backends\.sqlite3'.*not PostgreSQL"
            with pytest.raises(Exception, match=clear):
                await layer.send("lite.channel", {"type": "x"})
            with pytest.raises(Exception, match=clear):
                await asyncio.wait_for(layer.receive("lite.channel"), 30)
            await layer.close()

        run(scenario())


# 14. Listener self-check -----------------------------------------------------------------


def test_listener_on_another_database_fails_the_first_receive_naming_listen_dsn(
    app: str, prefix: str, admin: Admin
) -> None:
    test_db = conninfo_to_dict(server_dsn()).get("dbname")
    assert test_db != "postgres"
    listen_app = app + "_l"
    wrong = make_conninfo(server_dsn(), dbname="postgres", application_name=listen_app)

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix, listen_dsn=wrong)
        channel = await layer.new_channel()
        with pytest.raises(ListenerUnavailable) as raised:
            await asyncio.wait_for(layer.receive(channel), 30)
        assert "CONFIG['listen_dsn']" in str(raised.value)
        assert "did not receive its own notification" in str(raised.value)
        assert "postgres" in str(raised.value)  # where it listened
        await asyncio.to_thread(wait_for, lambda: admin.count(listen_app) == 0, "listener closed")
        await layer.close()

        right = make_conninfo(server_dsn(), application_name=listen_app)
        fixed = make_layer(app, prefix=prefix, listen_dsn=right)
        channel = await fixed.new_channel()
        waiting = asyncio.ensure_future(fixed.receive(channel))
        await fixed.send(channel, {"type": "heard"})
        assert await asyncio.wait_for(waiting, 10) == {"type": "heard"}
        assert admin.count(listen_app) == 1
        await fixed.close()

    run(scenario())
