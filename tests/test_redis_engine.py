"""The Redis engine's own promises, against real servers started by the fixtures:
connections per process, no commands while idle, capacity with messages left in the
stream, ordering, notes, expiry and keys."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from channels_engines import EngineChannelLayer
from channels_engines.testing import engine_for
from tests.support.pgtools import run, unique
from tests.support.polling import await_for
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis


def make(server: RedisServer, **options: Any) -> EngineChannelLayer:
    return EngineChannelLayer(
        ENGINE="redis", url=server.url, prefix=options.pop("prefix", "ce"), **options
    )


def our_connections(server: RedisServer) -> int:
    """Connections of channels_engines layers (they name themselves so)."""
    clients = server.admin().client_list()
    return sum(1 for client in clients if client.get("name") == "channels_engines")


def test_a_process_holds_at_most_three_connections_however_many_consumers(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> tuple[int, list[Any]]:
        sender, receiver = make(redis_server), make(redis_server)
        channels = [await receiver.new_channel() for _ in range(300)]
        for index, channel in enumerate(channels):
            await receiver.group_add(f"room{index % 30}", channel)
        waiting = [asyncio.ensure_future(receiver.receive(c)) for c in channels]
        waiting += [asyncio.ensure_future(receiver.receive(f"shared.{n}")) for n in range(20)]
        for room in range(30):
            await sender.group_send(f"room{room}", {"type": "hello"})
        for n in range(20):
            await sender.send(f"shared.{n}", {"type": "work"})
        got = await asyncio.wait_for(asyncio.gather(*waiting), 30)
        # Both layers are in this process: each holds its own pool and the receiver one
        # pub/sub connection.
        held = our_connections(redis_server)
        await sender.close()
        await receiver.close()
        return held, got

    held, got = run(scenario())
    assert len(got) == 320
    assert held <= 2 + 2 + 1
    assert our_connections(redis_server) == 0


def test_idle_receivers_cost_no_commands(redis_server: RedisServer) -> None:
    def calls(name: str) -> int:
        stat = redis_server.info("commandstats").get(f"cmdstat_{name}")
        return int(str(stat).split("'calls': ")[1].split(",")[0]) if stat else 0

    def commands() -> int:
        """Commands the server ran, but this test's observations and the heartbeat."""
        stats = redis_server.info("commandstats")
        return sum(
            int(str(value).split("'calls': ")[1].split(",")[0])
            for name, value in stats.items()
            if name not in ("cmdstat_info", "cmdstat_hello", "cmdstat_ping")
            and not name.startswith("cmdstat_client")
        )

    async def scenario() -> int:
        # The listener pings after a second of silence: that PING ends the observation.
        layer = make(redis_server, sweep_interval=3600.0, heartbeat_interval=1.0)
        channels = [await layer.new_channel() for _ in range(200)]
        waiting = [asyncio.ensure_future(layer.receive(c)) for c in channels]
        waiting += [asyncio.ensure_future(layer.receive(f"idle.{n}")) for n in range(20)]
        await layer.send(channels[0], {"type": "settled"})
        await asyncio.wait_for(waiting[0], 10)
        engine = engine_for(layer)
        assert engine is not None
        inbox = engine.shared.inbox
        stream = f"ce:in:{{{channels[0][: channels[0].index('!') + 1]}}}"
        # Every subscription confirmed, what each set off (a read, claims) done, and the
        # message taken deleted from its stream.
        await await_for(
            lambda: (
                len(engine.listener.subscribed) == 22
                and not (inbox.reading or inbox.claiming or inbox.taken)
                and redis_server.admin().xlen(stream) == 0
            ),
            "the receivers to settle",
        )
        before, pings = commands(), calls("ping")
        await await_for(lambda: calls("ping") > pings, "the listener's heartbeat", 10)
        after = commands()
        for task in waiting[1:]:
            task.cancel()
        await layer.close()
        return after - before

    assert run(scenario()) == 0


def test_a_full_mailbox_leaves_messages_in_the_stream_in_order(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[int, list[int]]:
        layer = make(redis_server, capacity=10)
        channel = await layer.new_channel()
        # A receive starts the listener; then nobody receives. The mailbox takes up to
        # 10 messages, the stream holds more until it is full.
        first = asyncio.ensure_future(layer.receive(channel))
        await layer.send(channel, {"n": 0})
        assert (await asyncio.wait_for(first, 10))["n"] == 0
        accepted = 0
        refused = False
        for n in range(1, 100):
            try:
                await layer.send(channel, {"n": n})
            except ChannelFull:
                refused = True
                break
            accepted = n
        assert refused
        got = [(await asyncio.wait_for(layer.receive(channel), 10))["n"] for _ in range(accepted)]
        # Room again: the stream takes new messages, after the ones that waited.
        await layer.send(channel, {"n": accepted + 1})
        got.append((await asyncio.wait_for(layer.receive(channel), 10))["n"])
        await layer.close()
        return accepted, got

    accepted, got = run(scenario())
    # 10 in the stream, and up to 10 more already in the mailbox.
    assert 10 <= accepted <= 20
    assert got == [*range(1, accepted + 1), accepted + 1]


def test_messages_ride_in_their_announcement_when_sealed(redis_server: RedisServer) -> None:
    async def scenario(**options: Any) -> tuple[int, list[int]]:
        sender, receiver = make(redis_server, **options), make(redis_server, **options)
        channel = await receiver.new_channel()
        first = asyncio.ensure_future(receiver.receive(channel))
        await sender.send(channel, {"n": 0})
        got = [(await asyncio.wait_for(first, 10))["n"]]
        for n in range(1, 50):
            await sender.send(channel, {"n": n})
            got.append((await asyncio.wait_for(receiver.receive(channel), 10))["n"])
        from_notes = engine_for(receiver).delivery.from_notes
        await sender.close()
        await receiver.close()
        return from_notes, got

    from_notes, got = run(scenario())
    assert got == list(range(50))
    assert from_notes >= 49  # all but possibly the first, sent before the subscription
    plain_notes, plain_got = run(scenario(encryption_keys=False, prefix="plain"))
    assert plain_got == list(range(50))
    assert plain_notes == 0  # unauthenticated: every message is read from the stream


def test_concurrent_sends_to_one_queue_are_one_script_call_and_one_announcement(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> tuple[int, int, list[int]]:
        sender, receiver = make(redis_server, capacity=200), make(redis_server, capacity=200)
        channel = await receiver.new_channel()
        first = asyncio.ensure_future(receiver.receive(channel))
        await sender.send(channel, {"n": -1})
        await asyncio.wait_for(first, 10)
        writer = engine_for(sender).writer  # type: ignore[union-attr]
        delivery = engine_for(receiver).delivery  # type: ignore[union-attr]
        scripts, notes = writer.scripts, delivery.from_notes
        # The first goes at once, alone; the other 99 wait for it and go together.
        await asyncio.gather(*(sender.send(channel, {"n": n}) for n in range(100)))
        got = [(await receiver.receive(channel))["n"] for _ in range(100)]
        scripts, notes = writer.scripts - scripts, delivery.from_notes - notes
        await sender.close()
        await receiver.close()
        return scripts, notes, got

    scripts, notes, got = run(scenario())
    assert got == list(range(100))
    assert scripts == 2
    assert notes == 100  # every message taken from its announcement


def test_connections_held_are_reported_to_hooks_until_close(redis_server: RedisServer) -> None:
    """The Prometheus gauge of connections follows what the server sees, by purpose."""
    from prometheus_client import CollectorRegistry

    from channels_engines.contrib.prometheus import Metrics

    registries = {"sender": CollectorRegistry(), "receiver": CollectorRegistry()}

    def held(side: str, purpose: str) -> float:
        labels = {"alias": "", "engine": "redis", "purpose": purpose}
        value = registries[side].get_sample_value("channels_engines_connections", labels)
        return 0.0 if value is None else value

    def everything() -> dict[str, float]:
        return {f"{s}.{p}": held(s, p) for s in registries for p in ("commands", "pubsub")}

    async def scenario() -> tuple[dict[str, float], int]:
        sender = make(redis_server, hooks=[Metrics(registry=registries["sender"])])
        receiver = make(redis_server, hooks=[Metrics(registry=registries["receiver"])])
        channel = await receiver.new_channel()
        waiting = asyncio.ensure_future(receiver.receive(channel))
        await sender.send(channel, {"n": 1})
        await asyncio.wait_for(waiting, 10)
        await sender.send("counted.jobs", {"n": 2})
        await asyncio.wait_for(receiver.receive("counted.jobs"), 10)
        seen = everything(), our_connections(redis_server)
        await sender.close()
        await receiver.close()
        return seen

    (during, on_server) = run(scenario())
    assert during["receiver.pubsub"] == 1
    assert during["sender.pubsub"] == 0
    assert during["sender.commands"] >= 1
    assert during["receiver.commands"] >= 1
    assert sum(during.values()) == on_server
    assert set(everything().values()) == {0}


def test_a_forged_announcement_delivers_nothing(redis_server: RedisServer) -> None:
    async def scenario() -> list[Any]:
        receiver = make(redis_server)
        channel = await receiver.new_channel()
        queue = channel[: channel.index("!") + 1]
        first = asyncio.ensure_future(receiver.receive(channel))
        await receiver.send(channel, {"n": 0})
        await asyncio.wait_for(first, 10)
        # Someone who may PUBLISH but holds no key announces a message that is not there.
        note = b"n1|1|1|9999999999999|" + channel[len(queue) :].encode() + b"|AAAA|{}"
        forged = b"9999999999999-0|0-0|%d|%s" % (len(note), note)
        redis_server.admin().publish(f"ce:note:{{{queue}}}", forged)
        await receiver.send(channel, {"n": 1})
        got = [await asyncio.wait_for(receiver.receive(channel), 10)]
        await receiver.close()
        return got

    assert run(scenario()) == [{"n": 1}]


def test_an_entry_whose_announcement_was_missed_is_read_before_the_next(
    redis_server: RedisServer,
) -> None:
    """Pub/sub can skip an announcement without closing the connection (a cluster node
    that has just failed over passes on only what it hears from then on). The next
    announcement names the entry before it, which the receiver has not taken: it reads
    the stream instead of taking the message from the note, and nothing is skipped."""
    from channels_engines.redis.keys import STORE, Keys

    async def scenario() -> tuple[list[Any], int]:
        sender, receiver = make(redis_server), make(redis_server)
        channel = await receiver.new_channel()
        queue = channel[: channel.index("!") + 1]
        first = asyncio.ensure_future(receiver.receive(channel))
        await sender.send(channel, {"n": 0})
        await asyncio.wait_for(first, 10)
        delivery = engine_for(receiver).delivery  # type: ignore[union-attr]
        notes_before = delivery.from_notes
        # Stored as the store script stores it, but announced where nobody listens.
        stream, seqs = Keys("ce").stream(queue)
        payload = sender._sealer.seal_for_channel(  # type: ignore[union-attr]
            channel, sender._encode({"n": 1}, channel)
        )
        redis_server.admin().evalsha(
            STORE.sha, 2, stream, seqs, 100, 60_000, "unheard", "ce:nowhere", "0", "0",
            1, channel[len(queue) :], payload, "",
        )  # fmt: skip
        await sender.send(channel, {"n": 2})
        got = [await asyncio.wait_for(receiver.receive(channel), 10) for _ in range(2)]
        from_notes = delivery.from_notes - notes_before
        await sender.close()
        await receiver.close()
        return got, from_notes

    got, from_notes = run(scenario())
    assert got == [{"n": 1}, {"n": 2}]
    assert from_notes == 0  # both read: the note of the second was not used


def test_expired_messages_are_not_delivered_and_free_their_capacity(
    redis_server: RedisServer,
) -> None:
    admin = redis_server.admin()
    stream = "ce:ch:{expiring.work}"
    # Entries as the store script writes them: two added long ago (ids from the server's
    # clock), and one added now whose expiry has passed.
    for entry_id in ("1-1", "1-2", "*"):
        admin.xadd(stream, {"s": 1, "q": 0, "x": 1, "c": "", "m": b"expired"}, id=entry_id)

    async def scenario() -> tuple[list[Any], int]:
        layer = make(redis_server, capacity=3)
        # Three entries but only expired ones: the stream takes another.
        await layer.send("expiring.work", {"n": 3})
        got = [await asyncio.wait_for(layer.receive("expiring.work"), 10)]
        expired = layer.events.get("receive.expired")
        await layer.close()
        return got, expired

    got, expired = run(scenario())
    assert got == [{"n": 3}]
    assert expired == 1  # the recent one, read and dropped; the old ones were trimmed


def test_every_key_expires_or_is_deleted(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        layer = make(redis_server, expiry=2, group_expiry=3)
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "x"})
        await layer.send("left.unread", {"type": "x"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "x"}
        await layer.close()

    run(scenario())
    admin = redis_server.admin()
    keys = sorted(admin.keys("ce:*"))
    assert keys, "the layer stored nothing"
    ttls = {key: admin.pttl(key) for key in keys}
    assert all(0 < ttl <= 3000 + 1000 for ttl in ttls.values()), ttls


def test_flush_empties_the_layer_and_leaves_other_prefixes(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        ours, theirs = make(redis_server, prefix="ours"), make(redis_server, prefix="theirs")
        await ours.send("kept.apart", {"n": 1})
        await theirs.send("kept.apart", {"n": 2})
        await ours.group_add("room", "kept.apart")
        await ours.flush()
        assert redis_server.admin().keys("ours:*") == []
        assert await asyncio.wait_for(theirs.receive("kept.apart"), 10) == {"n": 2}
        await ours.close()
        await theirs.close()

    run(scenario())


def test_the_layers_of_one_server_are_kept_apart_by_prefix(redis_server: RedisServer) -> None:
    async def scenario() -> list[Any]:
        a, b = make(redis_server, prefix=unique("a")), make(redis_server, prefix=unique("b"))
        await a.send("same.name", {"from": "a"})
        await b.send("same.name", {"from": "b"})
        got = [
            await asyncio.wait_for(a.receive("same.name"), 10),
            await asyncio.wait_for(b.receive("same.name"), 10),
        ]
        await a.close()
        await b.close()
        return got

    assert run(scenario()) == [{"from": "a"}, {"from": "b"}]


def test_a_late_notice_of_its_own_flush_keeps_what_arrived_since(
    shared_redis_server: RedisServer,
) -> None:
    """In a cluster the notice of a flush crosses the cluster bus, and can reach a
    process after messages sent since the flush. The process that flushed emptied its
    mailbox already: its own notice, however late, must not empty it again. (Delivered
    late here on purpose: the notice is published again after the messages.)"""
    admin = shared_redis_server.admin()

    async def scenario() -> list[Any]:
        layer = make(shared_redis_server, prefix=unique("ce_flush"))
        channel = await layer.new_channel()
        await layer.send(channel, {"n": 0})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 0}
        await layer.flush()
        await layer.send(channel, {"n": 1})
        await layer.send(channel, {"n": 2})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 1}
        engine = engine_for(layer)
        queue = channel[: channel.index("!") + 1]
        await await_for(lambda: engine.shared.mailbox.count(queue) == 1, "message 2 taken")
        admin.publish(engine.shared.keys.flush, engine.shared.flush_mark)
        # Published after the notice, on the same server: heard after it.
        await layer.send(channel, {"n": 3})
        got = [await asyncio.wait_for(layer.receive(channel), 10) for _ in range(2)]
        await layer.close()
        return got

    assert run(scenario()) == [{"n": 2}, {"n": 3}]
