"""What the engine stores: batches, memberships, and sends whose connection dies in flight."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.pgtools import Admin, engine_of, make_layer, run
from tests.support.polling import await_for

pytestmark = pytest.mark.postgres


def test_ten_thousand_concurrent_group_adds_share_a_few_batches(
    app: str, prefix: str, admin: Admin
) -> None:
    """A reconnect storm after a deploy: every client joins its groups at once."""
    layer = make_layer(app, prefix=prefix, pool_max_size=2, pool_timeout=2.0)

    async def scenario() -> None:
        await layer.group_add("storm", "storm.first")  # the tables exist
        results = await asyncio.gather(
            *(layer.group_add(f"storm-{n % 100}", f"storm.c{n}") for n in range(10_000)),
            return_exceptions=True,
        )
        assert [r for r in results if r is not None] == []
        assert admin.table_count(prefix + "group_member") == 10_001
        writer = engine_of(layer).writer
        # 500 calls a batch at most, one batch in flight at a time.
        assert writer.batches <= 1 + 1 + 10_000 // 500 + 1, writer.batches
        results = await asyncio.gather(
            *(layer.group_discard(f"storm-{n % 100}", f"storm.c{n}") for n in range(10_000)),
            return_exceptions=True,
        )
        assert [r for r in results if r is not None] == []
        assert admin.table_count(prefix + "group_member") == 1
        await layer.close()

    run(scenario())


def test_the_last_of_an_add_and_a_discard_in_one_batch_wins(app: str, prefix: str) -> None:
    layer = make_layer(app, prefix=prefix)

    async def scenario() -> None:
        channel = await layer.new_channel()
        await layer.group_add("last", channel)
        # Queued together behind a batch in flight: discard, add, discard, add.
        await asyncio.gather(
            layer.send(channel, {"type": "in flight"}),
            layer.group_discard("last", channel),
            layer.group_add("last", channel),
            layer.group_discard("last", channel),
            layer.group_add("last", channel),
        )
        await layer.group_send("last", {"type": "member"})
        received = [await asyncio.wait_for(layer.receive(channel), 10) for _ in range(2)]
        assert received == [{"type": "in flight"}, {"type": "member"}]
        await layer.close()

    run(scenario())


def sender_backend(admin: Admin, app: str, statement: str) -> int | None:
    rows = admin.rows(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        " AND state = 'active' AND wait_event_type = 'Lock' AND query LIKE %s",
        [app, statement + "%"],
    )
    return int(rows[0][0]) if len(rows) == 1 else None


@pytest.mark.parametrize("kind", ["send", "group_send", "group_add"])
def test_a_write_whose_backend_is_terminated_in_flight_is_retried_and_stored_once(
    app: str, prefix: str, admin: Admin, kind: str
) -> None:
    """The call returns normally and the message arrives once, not an AdminShutdown."""
    layer = make_layer(app, prefix=prefix)

    async def scenario() -> None:
        channel = await layer.new_channel()
        await layer.group_add("retried", channel)
        await layer.send(channel, {"n": "start"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": "start"}
        table = f'"{prefix}group_member"' if kind == "group_add" else f'"{prefix}message"'
        locker = Admin()
        try:
            # Writes wait for this lock, so the call is in flight on the server.
            locker.conn.execute("BEGIN")
            locker.conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            # The first attempt, and the retry (which checks for rows already stored).
            if kind == "send":
                call = asyncio.ensure_future(layer.send(channel, {"n": 1}))
                first, retry = "WITH room", "WITH items"
            elif kind == "group_send":
                call = asyncio.ensure_future(layer.group_send("retried", {"n": 1}))
                first = retry = "WITH items"
            else:
                call = asyncio.ensure_future(layer.group_add("retried-too", channel))
                first = retry = "INSERT INTO"
            pid = await await_for(lambda: sender_backend(admin, app, first), "the write waits")
            assert admin.terminate(pid)
            await await_for(
                lambda: sender_backend(admin, app, retry) not in (None, pid), "the retry waits"
            )
            locker.conn.execute("COMMIT")
        finally:
            locker.close()
        await asyncio.wait_for(call, 30)
        writer = engine_of(layer).writer
        assert writer.retries >= 1
        if kind == "group_add":
            await layer.group_send("retried-too", {"n": 1})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 1}
        await layer.send(channel, {"n": "sentinel"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": "sentinel"}
        await layer.close()

    run(scenario())
