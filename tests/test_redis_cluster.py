"""The Redis engine on a Redis Cluster (three primaries, one replica each), started by
the fixtures: the conformance kit whole, keys spread over every primary, a bounded
number of connections, and traffic that goes on while a slot moves and while a primary
fails over.

A slot moved with MIGRATE and a failover the primary agrees to (``CLUSTER FAILOVER``)
lose nothing: both tests check every message arrives once and in order. A primary that
crashes is replaced by its replica, which may not have had the primary's last writes
(replication is asynchronous): that test measures the loss and checks that nothing is
delivered twice and that everything sent once the cluster settled arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from channels_engines import EngineChannelLayer
from channels_engines.exceptions import InvalidConfigError
from channels_engines.testing import ChannelLayerConformance, engine_for
from tests.support.pgtools import run, unique
from tests.support.polling import await_for, wait_for
from tests.support.redis_servers import RedisCluster, RedisServer
from tests.support.redis_traffic import COUNT, traffic_while_killing

pytestmark = pytest.mark.redis

KEYS = ["k" * 40]
CLUSTER: list[RedisCluster] = []


@pytest.fixture(autouse=True)
def _cluster(redis_cluster: RedisCluster) -> None:
    CLUSTER[:] = [redis_cluster]


def nodes(cluster: RedisCluster, count: int = 1) -> list[str]:
    return [f"{host}:{port}" for host, port in cluster.startup_nodes[:count]]


def make(cluster: RedisCluster, **options: Any) -> EngineChannelLayer:
    config: dict[str, Any] = {
        "url": "redis:///0",
        "cluster_nodes": nodes(cluster),
        "prefix": "ce",
        "encryption_keys": KEYS,
        **options,
    }
    return EngineChannelLayer(ENGINE="redis", **config)


def our_connections(node: RedisServer) -> int:
    return sum(1 for client in node.admin().client_list() if client["name"] == "channels_engines")


class TestRedisClusterConformance(ChannelLayerConformance):
    @property
    def config(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            "ENGINE": "redis",
            "url": "redis:///0",
            "cluster_nodes": nodes(CLUSTER[0], 2),
            "prefix": unique("ce_cconf"),
        }

    def unreachable_config(self) -> dict[str, Any]:
        return {**self.config, "cluster_nodes": ["127.0.0.1:1"], "pool_timeout": 1.0}


def test_queues_and_groups_spread_over_every_primary(redis_cluster: RedisCluster) -> None:
    async def scenario() -> list[Any]:
        sender, receiver = make(redis_cluster), make(redis_cluster)
        channels = [await receiver.new_channel(f"p{n}") for n in range(30)]
        for n, channel in enumerate(channels):
            await receiver.group_add(f"room{n}", channel)
        for n in range(30):
            await sender.group_send(f"room{n}", {"room": n})
            await sender.send(f"work{n}", {"work": n})
        got = [await asyncio.wait_for(receiver.receive(c), 10) for c in channels]
        got += [await asyncio.wait_for(receiver.receive(f"work{n}"), 10) for n in range(30)]
        await sender.close()
        await receiver.close()
        return got

    # Keys of groups and streams on each primary (taken messages are deleted: groups
    # remain, and each is on the primary of its own hash tag).
    got = run(scenario())
    assert got == [{"room": n} for n in range(30)] + [{"work": n} for n in range(30)]
    counts = [primary.command("DBSIZE") for primary in redis_cluster.primaries()]
    assert all(count > 0 for count in counts), counts


def test_connections_stay_bounded_per_primary(redis_cluster: RedisCluster) -> None:
    """However many channels and groups: at most pool_max_size command connections per
    primary, and a pub/sub connection per primary the process hears from."""

    async def scenario() -> list[int]:
        sender, receiver = make(redis_cluster), make(redis_cluster)
        channels = [await receiver.new_channel() for _ in range(200)]
        waiting = [asyncio.ensure_future(receiver.receive(c)) for c in channels]
        shared = [asyncio.ensure_future(receiver.receive(f"jobs{n}")) for n in range(20)]
        for n, channel in enumerate(channels):
            await sender.group_add(f"room{n % 40}", channel)
        await asyncio.gather(*(sender.group_send(f"room{n}", {"n": n}) for n in range(40)))
        await asyncio.gather(*(sender.send(f"jobs{n}", {"n": n}) for n in range(20)))
        await asyncio.wait_for(asyncio.gather(*waiting, *shared), 20)
        counts = [our_connections(primary) for primary in redis_cluster.primaries()]
        await sender.close()
        await receiver.close()
        return counts

    counts = run(scenario())
    # Per primary: two processes' command connections (2 each) and the receiver's
    # pub/sub connection.
    assert all(count <= 5 for count in counts), counts
    assert [our_connections(primary) for primary in redis_cluster.primaries()] == [0, 0, 0]


async def _traffic(
    cluster: RedisCluster,
    disturb: Callable[[list[str]], Any],
    *,
    settled: Callable[[EngineChannelLayer], bool] | None = None,
    finally_: Callable[[EngineChannelLayer], Any] | None = None,
    **options: Any,
) -> dict[str, tuple[list[int], list[int], int]]:
    """Send to a process channel and a normal channel while ``disturb(streams)`` runs in
    a thread after 100 messages; go on until 200 messages after it returned (and, with
    ``settled``, after settled(sender) first held). Returns per channel what was sent,
    what arrived, and the first message sent once it was over; ``finally_(receiver)``
    is awaited before the layers close."""
    config: dict[str, Any] = {"capacity": 100_000, "pool_timeout": 30.0, **options}
    sender, receiver = make(cluster, **config), make(cluster, **config)
    own = await receiver.new_channel()
    shared = unique("cshared").replace("_", "-")
    first = asyncio.ensure_future(receiver.receive(own))
    await sender.send(own, {"n": -1})
    await asyncio.wait_for(first, 10)
    streams = [f"ce:in:{{{own.split('!')[0]}!}}", f"ce:ch:{{{shared}}}"]
    got: dict[str, list[int]] = {own: [], shared: []}

    async def collect(channel: str) -> None:
        while True:
            got[channel].append((await receiver.receive(channel))["n"])

    collectors = [asyncio.ensure_future(collect(channel)) for channel in got]
    sent: list[int] = []
    job: asyncio.Future[Any] | None = None
    after = -1
    n = 0
    while after < 0 or n < after + 200:
        if n == 100:
            job = asyncio.ensure_future(asyncio.to_thread(disturb, streams))
        over = job is not None and job.done() and (settled is None or settled(sender))
        if after < 0 and over:
            after = n
        await asyncio.gather(sender.send(own, {"n": n}), sender.send(shared, {"n": n}))
        sent.append(n)
        n += 1
    assert job is not None
    await job
    for channel in got:
        await await_for(
            lambda channel=channel: bool(got[channel]) and got[channel][-1] == n - 1,
            f"the last message on {channel}",
            30,
        )
    for collector in collectors:
        collector.cancel()
    if finally_ is not None:
        await finally_(receiver)
    await sender.close()
    await receiver.close()
    return {channel: (sent, values, after) for channel, values in got.items()}


def test_slots_moving_during_traffic_lose_and_duplicate_nothing(
    redis_cluster: RedisCluster,
) -> None:
    from redis.crc import key_slot

    def move(streams: list[str]) -> None:
        for stream in streams:
            slot = key_slot(stream.encode())
            source = redis_cluster.slot_owner(slot)
            target = next(p for p in redis_cluster.primaries() if p is not source)
            redis_cluster.migrate_slot(slot, target, batch=1)

    results = run(_traffic(redis_cluster, move), timeout=120)
    for channel, (sent, got, _after) in results.items():
        assert got == sent, f"{channel}: lost {sorted(set(sent) - set(got))}"


def test_a_failover_the_primary_agrees_to_loses_and_duplicates_nothing(
    redis_cluster: RedisCluster,
) -> None:
    from redis.crc import key_slot

    def fail_over(streams: list[str]) -> None:
        for stream in streams:
            redis_cluster.failover(redis_cluster.slot_owner(key_slot(stream.encode())))

    results = run(_traffic(redis_cluster, fail_over), timeout=120)
    for channel, (sent, got, _after) in results.items():
        assert got == sent, f"{channel}: lost {sorted(set(sent) - set(got))}"


def test_a_crashed_primary_loses_at_most_what_it_had_not_replicated(
    redis_cluster: RedisCluster,
) -> None:
    from redis.crc import key_slot

    killed: list[RedisServer] = []

    def crash(streams: list[str]) -> None:
        primary = redis_cluster.slot_owner(key_slot(streams[0].encode()))
        replica = redis_cluster.replicas_of(primary)[0]
        killed.append(primary)
        primary.kill()

        def promoted() -> bool:
            try:
                return replica.role() == "master"
            except Exception:
                return False

        wait_for(promoted, "the replica to take over", 30, every=0.05)

    def followed(sender: EngineChannelLayer) -> bool:
        engine = engine_for(sender)
        return engine is not None and engine.servers.refreshes > 1  # type: ignore[attr-defined]

    async def heard_again(receiver: EngineChannelLayer) -> None:
        """Its channels are subscribed where their slots are now (the sweep moves them
        off the dead node), so it no longer waits for sweeps to read its messages."""
        engine = engine_for(receiver)
        assert engine is not None

        def placed() -> bool:
            holders = [engine._holder(channel) for channel in engine._watched]  # type: ignore[attr-defined]
            return all(holder is not None and holder.connected for holder in holders)

        await await_for(placed, "the receiver's channels on live nodes", 20)

    results = run(
        _traffic(redis_cluster, crash, settled=followed, finally_=heard_again, sweep_interval=1.0),
        timeout=180,
    )
    for channel, (sent, got, after) in results.items():
        assert len(got) == len(set(got)), f"{channel}: a message was delivered twice"
        assert got == sorted(got), f"{channel}: messages arrived out of order"
        missing = sorted(set(sent) - set(got))
        assert all(n < after for n in missing), (channel, missing)
        print(f"{channel}: {len(missing)} of {len(sent)} acknowledged sends lost, all before")
    assert killed
    assert not killed[0].running


def test_killing_every_client_on_every_primary_repeatedly_loses_and_duplicates_nothing(
    redis_cluster: RedisCluster,
) -> None:
    def kill() -> int:
        return sum(primary.kill_clients() for primary in redis_cluster.primaries())

    traffic = traffic_while_killing(
        lambda **options: make(redis_cluster, **options),
        kill,
        group=unique("killed"),
        shared=unique("killed") + ".shared",
    )
    got, kills = run(traffic, timeout=180)
    assert kills >= 5, "the killer never caught a connection"
    for name in ("own", "shared", "group"):
        assert got[name] == list(range(COUNT)), name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"cluster_nodes": ["127.0.0.1:7000"], "sentinels": ["127.0.0.1:26379"]},
            "EngineChannelLayer: CONFIG sets both 'sentinels' and 'cluster_nodes'. A Redis "
            "Cluster fails over by itself: give 'cluster_nodes' alone.",
        ),
        (
            {"cluster_nodes": ["127.0.0.1:7000"], "url": "redis://127.0.0.1/2"},
            "EngineChannelLayer: with 'cluster_nodes', CONFIG['url'] must be a redis:// or "
            "rediss:// URL of database 0 (a Redis Cluster has only database 0); its host and "
            "port are not used.",
        ),
        (
            {"cluster_nodes": ["127.0.0.1:7000"], "url": "unix:///tmp/redis.sock"},
            "EngineChannelLayer: with 'cluster_nodes', CONFIG['url'] must be a redis:// or "
            "rediss:// URL of database 0 (a Redis Cluster has only database 0); its host and "
            "port are not used.",
        ),
    ],
)
def test_cluster_settings_that_cannot_work_are_refused(
    options: dict[str, Any], message: str
) -> None:
    if "sentinels" in options:
        options["service_name"] = "mymaster"
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE="redis", encryption_keys=KEYS, **options)
    assert str(caught.value) == message


@pytest.mark.parametrize("value", [[], ["localhost"], ["host:port"], "h:1"])
def test_cluster_nodes_must_be_host_port_strings(value: Any) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE="redis", cluster_nodes=value)
    assert str(caught.value).startswith("EngineChannelLayer: CONFIG['cluster_nodes'] ")
    assert "a non-empty list of 'host:port' strings or None" in str(caught.value)


def test_check_stats_and_purge_see_every_primary(redis_cluster: RedisCluster) -> None:
    import io
    import json

    from django.core.management import call_command
    from django.test import override_settings

    prefix = unique("cmd")

    def command(*args: str) -> Any:
        out = io.StringIO()
        call_command("channels_engines", *args, "--json", stdout=out, stderr=io.StringIO())
        return json.loads(out.getvalue())

    async def fill() -> None:
        layer = make(redis_cluster, prefix=prefix)
        for n in range(12):
            await layer.group_add(f"room{n}", f"jobs{n}")
            await layer.send(f"jobs{n}", {"n": n})
        await layer.close()

    run(fill())
    config = {"url": "redis:///0", "cluster_nodes": nodes(redis_cluster), "prefix": prefix}
    with override_settings(CHANNEL_LAYERS={"default": {"ENGINE": "redis", "CONFIG": config}}):
        (stats,) = command("stats")
        (check,) = command("check")
        purged = command("purge-expired")
    summary = stats["tables"]["Summary"][0]
    assert (summary["messages waiting"], summary["queues"], summary["groups"]) == (12, 12, 12)
    assert summary["memory used"].count(" + ") == 2  # one figure per primary
    assert (check["ok"], check["server"]) == (True, "Redis 7.0.15")
    # Each primary is named in its own warnings (the fixtures keep nothing on disk).
    named = {w.split(": ", 1)[0] for w in check["warnings"] if "keeps nothing on disk" in w}
    assert named == {f"{h}:{p}" for h, p in (s.address for s in redis_cluster.primaries())}
    assert purged["removed"] == {"messages": 0, "memberships": 0}


def test_a_half_moved_slot_sends_new_keys_to_the_importing_node_with_the_documented_acl(
    redis_cluster: RedisCluster,
) -> None:
    """While a slot is being moved, a key the source does not hold is made on the
    importing node (the source answers ASK, the engine sends ASKING there first). The
    layer logs in as a user with only the rights docs/redis.md gives for a cluster."""
    import re
    import shlex
    from pathlib import Path

    from redis.crc import key_slot

    docs = (Path(__file__).resolve().parents[1] / "docs" / "redis.md").read_text()
    line = next(line for line in docs.splitlines() if line.startswith("ACL SETUSER chat "))
    rules = [rule for rule in shlex.split(line)[3:] if not rule.startswith(">")]
    extra = re.search(r"In a cluster, add `([^`]+)`", docs)
    assert extra is not None
    rules += extra.group(1).split()
    for node in redis_cluster.nodes:
        node.command("ACL", "SETUSER", "chat", "reset", ">cluster-secret", *rules)

    name = unique("halfway").replace("_", "-")
    slot = key_slot(name.encode())
    source = redis_cluster.slot_owner(slot)
    target = next(p for p in redis_cluster.primaries() if p is not source)
    target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.command("CLUSTER", "MYID"))
    source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.command("CLUSTER", "MYID"))

    async def scenario() -> list[Any]:
        config = {"url": "redis://chat:cluster-secret@/0", "prefix": "channels_engines"}
        sender, receiver = make(redis_cluster, **config), make(redis_cluster, **config)
        await receiver.group_add(name, f"{name}.jobs")  # the group's key: {name} too
        await sender.send(f"{name}.jobs", {"n": 1})
        await sender.group_send(name, {"n": 2})
        got = [await asyncio.wait_for(receiver.receive(f"{name}.jobs"), 10) for _ in range(2)]
        await sender.close()
        await receiver.close()
        return got

    try:
        got = run(scenario())
        made_there = target.command("CLUSTER", "COUNTKEYSINSLOT", slot)
        left_at_source = source.command("CLUSTER", "COUNTKEYSINSLOT", slot)
    finally:
        redis_cluster.migrate_slot(slot, target)
        for node in redis_cluster.nodes:
            node.command("ACL", "DELUSER", "chat")
    assert got == [{"n": 1}, {"n": 2}]
    assert made_there > 0
    assert left_at_source == 0
