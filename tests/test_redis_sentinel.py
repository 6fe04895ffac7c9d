"""The Redis engine behind Redis Sentinel: it finds the primary through the Sentinels and
follows a failover forced during traffic, against a real group (a primary, a replica,
three Sentinels) started by the fixtures.

Redis replicates asynchronously: a failover can lose writes the old primary had
acknowledged. The failover test measures that loss and checks that nothing is delivered
twice and that everything sent once the engine followed the failover arrives.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from channels_engines import EngineChannelLayer, ServerUnavailableError
from channels_engines.exceptions import InvalidConfigError
from channels_engines.testing import ChannelLayerConformance, engine_for
from tests.support.pgtools import run, unique
from tests.support.polling import await_for
from tests.support.redis_servers import SentinelGroup
from tests.support.redis_traffic import round_trip

pytestmark = pytest.mark.redis


def make(group: SentinelGroup, **options: Any) -> EngineChannelLayer:
    options.setdefault("url", "redis:///0")
    return EngineChannelLayer(
        ENGINE="redis",
        sentinels=[f"{host}:{port}" for host, port in group.sentinels],
        service_name=group.service_name,
        prefix="ce",
        **options,
    )


GROUP: list[SentinelGroup] = []


class TestRedisSentinelConformance(ChannelLayerConformance):
    """The whole kit through the Sentinels (a key prefix of this run's own)."""

    prefix = unique("ce_sconf")

    @pytest.fixture(autouse=True)
    def _group(self, redis_sentinel: SentinelGroup) -> None:
        GROUP[:] = [redis_sentinel]

    @property
    def config(self) -> dict[str, Any]:  # type: ignore[override]
        group = GROUP[0]
        return {
            "ENGINE": "redis",
            "url": "redis:///0",
            "sentinels": [f"{host}:{port}" for host, port in group.sentinels],
            "service_name": group.service_name,
            "prefix": self.prefix,
        }

    def unreachable_config(self) -> dict[str, Any]:
        return {**self.config, "sentinels": ["127.0.0.1:1"], "pool_timeout": 1.0}


def test_messages_and_groups_go_through_the_primary_the_sentinels_name(
    redis_sentinel: SentinelGroup,
) -> None:
    pair = make(redis_sentinel), make(redis_sentinel)
    got = run(round_trip(*pair, shared="sentinel.shared"))
    assert got == [{"n": 1}, {"n": 2}, {"n": 3}]
    primary = redis_sentinel.primary_server()
    assert primary.admin().exists("ce:group:{room}") == 1


def test_a_failover_during_traffic_duplicates_nothing_and_is_followed(
    redis_sentinel: SentinelGroup,
) -> None:
    async def scenario() -> tuple[list[int], list[int], int, int]:
        config: dict[str, Any] = {"capacity": 100_000, "pool_timeout": 20.0}
        sender, receiver = make(redis_sentinel, **config), make(redis_sentinel, **config)
        own = await receiver.new_channel()
        first = asyncio.ensure_future(receiver.receive(own))
        await sender.send(own, {"n": -1})
        await asyncio.wait_for(first, 10)
        sent: list[int] = []
        got: list[int] = []
        after = -1  # the first message sent once the sender had followed the failover

        async def collect() -> None:
            while True:
                got.append((await receiver.receive(own))["n"])

        collector = asyncio.ensure_future(collect())
        n = 0
        failover = None
        # Traffic before, during and after the failover, until 100 messages went out
        # after the sender had followed it.
        while after < 0 or n < after + 100:
            if n == 100:
                failover = asyncio.ensure_future(asyncio.to_thread(redis_sentinel.failover))
            engine = engine_for(sender)
            if after < 0 and engine is not None and engine.failovers_followed:
                after = n
            await sender.send(own, {"n": n})
            sent.append(n)
            n += 1
        assert failover is not None
        await failover
        count = n
        # Everything sent after the failover was followed arrives; wait for the last.
        await await_for(lambda: bool(got) and got[-1] == count - 1, "the last message", 30)
        collector.cancel()
        followed = engine_for(sender).failovers_followed  # type: ignore[union-attr]
        await sender.close()
        await receiver.close()
        return sent, got, after, followed

    sent, got, after, followed = run(scenario(), timeout=120)
    assert followed >= 1
    assert 0 < after < len(sent)
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert got == sorted(got), "messages arrived out of order"
    missing = sorted(set(sent) - set(got))
    assert all(n < after for n in missing), missing
    print(f"failover: {len(missing)} of {len(sent)} acknowledged sends lost, all before it")


def test_sentinels_that_ask_for_a_password_get_it_from_sentinel_credentials() -> None:
    """Sentinels with a password of their own (requirepass), guarding a primary with
    another: the layer asks the Sentinels with ``sentinel_credentials``, including on the
    connection that hears of failovers, and follows one."""
    from tests.redis_fixtures import _binaries

    _binaries()
    with SentinelGroup(password="data-secret", sentinel_password="sentinel-secret") as group:
        sentinel_login = {"provider": "static", "password": "sentinel-secret"}

        async def scenario() -> tuple[list[Any], int]:
            options: dict[str, Any] = {
                "url": "redis://:data-secret@/0",
                "sentinel_credentials": sentinel_login,
            }
            sender, receiver = make(group, **options), make(group, **options)
            own = await receiver.new_channel()
            first = asyncio.ensure_future(receiver.receive(own))
            await sender.send(own, {"n": 1})
            got = [await asyncio.wait_for(first, 10)]
            await asyncio.to_thread(group.failover)
            engine = engine_for(sender)
            assert engine is not None
            await await_for(lambda: engine.failovers_followed >= 1, "the failover followed", 20)
            await sender.send(own, {"n": 2})
            got.append(await asyncio.wait_for(receiver.receive(own), 20))
            followed = engine.failovers_followed
            await sender.close()
            await receiver.close()
            return got, followed

        got, followed = run(scenario(), timeout=60)

        async def without() -> None:
            layer = make(group, url="redis://:data-secret@/0", pool_timeout=1.0)
            try:
                await layer.send("sentinel.jobs", {"n": 1})
            finally:
                await layer.close()

        with pytest.raises(ServerUnavailableError):
            run(without())
    assert got == [{"n": 1}, {"n": 2}]
    assert followed >= 1


def test_sentinel_credentials_without_sentinels_are_refused() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE="redis", sentinel_credentials="env")
    assert str(caught.value) == (
        "EngineChannelLayer: CONFIG['sentinel_credentials'] is given without 'sentinels'. "
        "It is the login of the Sentinels themselves; the primary's login is "
        "'credentials' (or the one in 'url')."
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"sentinels": ["127.0.0.1:26379"]},
            "EngineChannelLayer: CONFIG['sentinels'] is given without 'service_name'. Name "
            "the primary the Sentinels monitor, e.g. 'service_name': 'mymaster'.",
        ),
        (
            {"service_name": "mymaster"},
            "EngineChannelLayer: CONFIG['service_name'] is given without 'sentinels'. List "
            "the Sentinels ('host:port') in 'sentinels', or leave 'service_name' out.",
        ),
    ],
)
def test_sentinels_and_service_name_go_together(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE="redis", **options)
    assert str(caught.value) == message


@pytest.mark.parametrize("value", [[], ["localhost"], ["host:port"], ["h:70000"], "h:1", [1]])
def test_sentinels_must_be_host_port_strings(value: Any) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE="redis", sentinels=value, service_name="mymaster")
    assert str(caught.value).startswith("EngineChannelLayer: CONFIG['sentinels'] ")
    assert "a non-empty list of 'host:port' strings or None" in str(caught.value)
