"""Housekeeping and the expiry cleanup, in processes that send as well as those that receive."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from channels_engines.postgres import maintenance as maintenance_module
from channels_engines.postgres.schema import Statements, Tables
from tests.support.pgtools import (
    Admin,
    Sampler,
    engine_of,
    make_layer,
    run,
    server_dsn,
    unique,
)
from tests.support.polling import await_for

pytestmark = pytest.mark.postgres


def test_a_process_that_only_sends_removes_expired_rows_and_memberships(
    app: str, prefix: str, admin: Admin
) -> None:
    layer = make_layer(
        app, prefix=prefix, expiry=0.2, group_expiry=0.2, cleanup_interval=0.1, sweep_interval=0.05
    )

    async def scenario() -> None:
        await layer.group_add("nobody-reads", "unread.member")
        for n in range(20):
            await layer.send("unread.channel", {"n": n})
        assert admin.table_count(prefix + "message") == 20
        await await_for(
            lambda: admin.table_count(prefix + "message") == 0, "expired messages deleted"
        )
        await await_for(
            lambda: admin.table_count(prefix + "group_member") == 0, "expired memberships deleted"
        )
        await layer.close()

    run(scenario())


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
