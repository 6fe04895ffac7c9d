"""What the engine stores: batches, memberships, and sends whose connection dies in flight."""

from __future__ import annotations

import asyncio

import pytest

from channels_engines.serialization import encode
from tests.support.pgtools import (
    Admin,
    Child,
    config,
    digest,
    engine_of,
    make_layer,
    run,
    unique,
)
from tests.support.polling import await_for, payload_bytes

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
                first = retry = "WITH added"
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


def test_group_send_is_one_transaction_with_one_row_for_every_process_and_normal_channel(
    prefix: str, admin: Admin
) -> None:
    """Members on process-specific channels share one row, the group's stream, however
    many processes they are in; each normal channel gets a row of its own."""

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
        assert sorted(row[0] for row in rows) == sorted(["#room", *normal])
        assert [row[1] for row in rows] == [1, 1, 1, 1]
        assert len({row[2] for row in rows}) == 1  # one transaction

        await sender.group_send("room", {"type": "room.message", "n": 2})
        for layer, channels in [*members.items(), (sender, normal)]:
            for n in (1, 2):  # message 1 exactly once, then message 2
                results = await asyncio.wait_for(
                    asyncio.gather(*(layer.receive(channel) for channel in channels)), 20
                )
                assert [result["n"] for result in results] == [n] * len(channels)
        # The stream's rows stay until they expire: a process reconnecting reads them.
        assert admin.rows(f'SELECT queue, count(*) FROM "{prefix}message" GROUP BY queue') == [
            ("#room", 2)
        ]
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
