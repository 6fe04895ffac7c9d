"""Faults between the Redis engine and its server, injected for real: answers lost on a
dying connection (through the fault proxy), every client killed again and again during
traffic, a paused server, a restarted one, a server out of memory. Messages whose send
returned arrive once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from channels_engines import EngineChannelLayer, ServerFullError, ServerUnavailableError
from channels_engines.redis.keys import CLAIM, STORE, Keys
from channels_engines.testing import engine_for
from tests.support.faultproxy import FaultProxy
from tests.support.pgtools import run
from tests.support.polling import await_for
from tests.support.redis_servers import RedisServer
from tests.support.redis_traffic import COUNT, traffic_while_killing

pytestmark = pytest.mark.redis


def make(url: str, **options: Any) -> EngineChannelLayer:
    options.setdefault("prefix", "ce")
    return EngineChannelLayer(ENGINE="redis", url=url, **options)


def proxied(server: RedisServer) -> FaultProxy:
    """A fault proxy in front of ``server``, started by ``with``."""
    host, port = server.address
    return FaultProxy(host, port)


def proxy_url(proxy: FaultProxy) -> str:
    return f"redis://127.0.0.1:{proxy.port}/0"


async def nothing_more(layer: EngineChannelLayer, channel: str) -> bool:
    """Whether ``channel`` stays empty for a moment (a duplicate would arrive in it)."""
    try:
        await asyncio.wait_for(layer.receive(channel), 0.5)
    except TimeoutError:
        return True
    return False


@pytest.mark.parametrize("action", ["reset", "blackhole"])
def test_a_send_whose_answer_is_lost_is_stored_once(redis_server: RedisServer, action: str) -> None:
    with proxied(redis_server) as proxy:

        async def scenario() -> tuple[Any, bool]:
            sender = make(proxy_url(proxy), query_timeout=0.5)
            receiver = make(redis_server.url)
            await sender.send("lost.answer", {"n": 0})  # connected, scripts loaded
            await receiver.receive("lost.answer")
            trigger = proxy.after_client_sends(STORE.sha.encode(), action=action, direction="down")
            await sender.send("lost.answer", {"n": 1})
            assert trigger.fired.is_set()
            got = await asyncio.wait_for(receiver.receive("lost.answer"), 10)
            alone = await nothing_more(receiver, "lost.answer")
            engine = engine_for(sender)
            assert engine is not None
            retries = engine.writer.retries
            await sender.close()
            await receiver.close()
            return got, alone and retries >= 1

        got, once = run(scenario())
    assert got == {"n": 1}
    assert once


def test_a_refused_send_sent_again_is_refused_again(redis_server: RedisServer) -> None:
    """A pipeline whose answers were lost goes again whole. If one of its messages was
    refused (its queue full) and a later one of the same sender stored (a receiver made
    room in between, on another connection), the first must be refused again, not taken
    for a message stored before. The store script is called as the writer calls it."""
    admin = redis_server.admin()
    keys = Keys("ce")
    stream, seqs = keys.stream("tight.q!")

    def store(seq: int) -> Any:
        (result,) = admin.evalsha(
            STORE.sha, 2, stream, seqs, 1, 60_000, "sender-1", keys.note("tight.q!"), "0", "0",
            seq, "x", b"payload", "",
        )  # fmt: skip
        return result

    admin.script_load(STORE.source)
    assert store(1) not in ("", 0)  # the queue (capacity 1) is full now
    assert store(2) == 0  # refused
    admin.delete(stream)  # a receiver took the first
    assert store(3) not in ("", 0)
    assert store(2) == 0  # the retry of 2 is refused again
    assert store(3) == ""  # and that of 3 recognised as stored
    assert admin.xlen(stream) == 1


@pytest.mark.parametrize("action", ["reset", "blackhole"])
def test_a_claim_whose_answer_is_lost_is_delivered_once(
    redis_server: RedisServer, action: str
) -> None:
    with proxied(redis_server) as proxy:

        async def scenario() -> tuple[list[Any], int]:
            receiver = make(proxy_url(proxy), query_timeout=0.5)
            sender = make(redis_server.url)
            await sender.send("claimed.once", {"n": 0})
            assert await asyncio.wait_for(receiver.receive("claimed.once"), 10) == {"n": 0}
            trigger = proxy.after_client_sends(CLAIM.sha.encode(), action=action, direction="down")
            waiting = asyncio.ensure_future(receiver.receive("claimed.once"))
            await sender.send("claimed.once", {"n": 1})
            got = [await asyncio.wait_for(waiting, 10)]
            assert trigger.fired.is_set()
            if not await nothing_more(receiver, "claimed.once"):
                got.append("duplicate")
            pending = redis_server.admin().xpending("ce:ch:{claimed.once}", "readers")
            await sender.close()
            await receiver.close()
            return got, int(pending["pending"])

        got, pending = run(scenario())
    assert got == [{"n": 1}]
    assert pending == 0  # acknowledged from the pending list it was left in


def test_a_read_whose_answer_is_lost_loses_nothing(redis_server: RedisServer) -> None:
    with proxied(redis_server) as proxy:

        async def scenario() -> list[Any]:
            # Unsealed: no message rides in its announcement, every one is read.
            receiver = make(proxy_url(proxy), query_timeout=0.5, encryption_keys=False)
            sender = make(redis_server.url, encryption_keys=False)
            channel = await receiver.new_channel()
            first = asyncio.ensure_future(receiver.receive(channel))
            await sender.send(channel, {"n": 0})
            assert await asyncio.wait_for(first, 10) == {"n": 0}
            trigger = proxy.after_client_sends(b"XRANGE", action="reset", direction="down")
            await sender.send(channel, {"n": 1})
            await sender.send(channel, {"n": 2})
            got = [await asyncio.wait_for(receiver.receive(channel), 10) for _ in range(2)]
            assert trigger.fired.is_set()
            if not await nothing_more(receiver, channel):
                got.append("duplicate")
            await sender.close()
            await receiver.close()
            return got

        assert run(scenario()) == [{"n": 1}, {"n": 2}]


def test_killing_every_client_repeatedly_loses_and_duplicates_nothing(
    redis_server: RedisServer,
) -> None:
    traffic = traffic_while_killing(
        lambda **options: make(redis_server.url, **options),
        redis_server.kill_clients,
        group="killed",
        shared="killed.shared",
    )
    got, kills = run(traffic, timeout=180)
    assert kills >= 5, "the killer never caught a connection"
    for name in ("own", "shared", "group"):
        assert got[name] == list(range(COUNT)), name


def test_a_paused_server_fails_sends_by_their_deadline_and_recovers(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> list[Any]:
        sender = make(redis_server.url, query_timeout=0.3, pool_timeout=1.0)
        receiver = make(
            redis_server.url, query_timeout=0.3, heartbeat_interval=0.3, heartbeat_timeout=0.3
        )
        channel = await receiver.new_channel()
        first = asyncio.ensure_future(receiver.receive(channel))
        await sender.send(channel, {"n": 0})
        assert await asyncio.wait_for(first, 10) == {"n": 0}
        redis_server.pause()
        try:
            with pytest.raises(ServerUnavailableError):
                await asyncio.wait_for(sender.send(channel, {"n": "lost"}), 10)
        finally:
            redis_server.resume()
        await sender.send(channel, {"n": 1})
        got = []
        while not got or got[-1] != {"n": 1}:
            got.append(await asyncio.wait_for(receiver.receive(channel), 10))
        await sender.close()
        await receiver.close()
        return got

    got = run(scenario())
    # The refused send may have been stored before its answer was lost: at most once.
    assert got in ([{"n": 1}], [{"n": "lost"}, {"n": 1}])


def test_a_restarted_server_is_reported_and_traffic_resumes(redis_server: RedisServer) -> None:
    from channels_engines.hooks import Hook, ListenerRecovered

    recovered: list[ListenerRecovered] = []

    class Watch(Hook):
        events = (ListenerRecovered,)

        def handle(self, event: Any) -> None:
            recovered.append(event)

    async def scenario() -> Any:
        receiver = make(redis_server.url, hooks=[Watch()])
        sender = make(redis_server.url)
        channel = await receiver.new_channel()
        first = asyncio.ensure_future(receiver.receive(channel))
        await sender.send(channel, {"n": 0})
        assert await asyncio.wait_for(first, 10) == {"n": 0}
        await asyncio.to_thread(redis_server.restart)
        await sender.send(channel, {"n": 1})
        got = await asyncio.wait_for(receiver.receive(channel), 20)
        await sender.close()
        await receiver.close()
        return got

    assert run(scenario()) == {"n": 1}
    assert len(recovered) == 1
    # Nothing on disk: a restarted server kept none of the messages not yet received.
    assert recovered[0].may_have_missed


def test_a_server_out_of_memory_refuses_writes_clearly_and_loses_nothing(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``maxmemory`` reached under ``noeviction``: send() and group_add() raise
    ServerFullError (a ChannelFull) that names the cause, group_send() counts the members
    it missed and says why; every message whose send returned is received once and in
    order, from a process channel and a normal channel alike, and once the receivers have
    taken them the server has room again."""
    admin = redis_server.admin()
    payload = "x" * 2000

    async def scenario() -> None:
        # Capacity far above what fits in memory: the server's memory runs out first.
        sender = make(redis_server.url, capacity=100_000)
        receiver = make(redis_server.url, capacity=100_000)
        channel = await receiver.new_channel()
        await receiver.group_add("room", channel)
        admin.config_set("maxmemory-policy", "noeviction")
        limit = int(admin.info("memory")["used_memory"]) + 1_000_000
        admin.config_set("maxmemory", limit)
        accepted: dict[str, list[int]] = {channel: [], "memory.normal": []}
        refused: ServerFullError | None = None
        for n in range(10_000):
            target = channel if n % 2 else "memory.normal"
            try:
                await sender.send(target, {"n": n, "p": payload})
            except ServerFullError as exc:
                refused = exc
                break
            accepted[target].append(n)
        assert refused is not None, "the server never ran out of memory"
        assert isinstance(refused, ChannelFull)
        assert "send() to" in str(refused)
        assert "maxmemory" in str(refused)
        with pytest.raises(ServerFullError, match=r"group_add\(\) was refused"):
            await sender.group_add("room", "memory.other")
        await sender.group_send("room", {"n": "group", "p": payload})
        assert sender.events.get("group_send.dropped") == 1
        assert "1 refused by a Redis server with no memory left" in caplog.text

        for target, numbers in accepted.items():
            got = [(await asyncio.wait_for(receiver.receive(target), 10))["n"] for _ in numbers]
            assert got == numbers
            assert await nothing_more(receiver, target)
        await await_for(
            lambda: int(admin.info("memory")["used_memory"]) < limit - 500_000,
            "the receivers' deletions to free memory",
        )
        await sender.send(channel, {"n": "after"})
        assert await asyncio.wait_for(receiver.receive(channel), 10) == {"n": "after"}
        await sender.close()
        await receiver.close()

    run(scenario())
