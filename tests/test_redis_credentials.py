"""Logins of the Redis engine: an ACL user with the rights docs/redis.md lists, and its
password rotated with ``ACL SETUSER`` during traffic, through a credential provider."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from channels_engines import EngineChannelLayer
from channels_engines.exceptions import InvalidConfigError
from tests.support.pgtools import run
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis

DOCS = Path(__file__).resolve().parents[1] / "docs" / "redis.md"


def documented_acl() -> list[str]:
    """The arguments of the ``ACL SETUSER`` line the docs give, password and name left
    to the test."""
    line = next(
        line for line in DOCS.read_text().splitlines() if line.startswith("ACL SETUSER chat ")
    )
    rules = shlex.split(line)[3:]
    return [rule for rule in rules if not rule.startswith(">")]


def create_user(server: RedisServer, name: str, password: str) -> None:
    server.admin().execute_command(
        "ACL", "SETUSER", name, "reset", f">{password}", *documented_acl()
    )


def test_the_documented_acl_is_enough_for_everything_the_layer_does(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_user(redis_server, "chat", "first-secret")
    url = redis_server.url.replace("redis://", "redis://chat:first-secret@")

    async def scenario() -> list[Any]:
        sender = EngineChannelLayer(ENGINE="redis", url=url)
        receiver = EngineChannelLayer(ENGINE="redis", url=url)
        own = await receiver.new_channel()
        await receiver.group_add("room", own)
        await receiver.group_add("room", "acl.shared")
        first = asyncio.ensure_future(receiver.receive(own))
        await sender.send(own, {"n": 1})
        got = [await asyncio.wait_for(first, 10)]
        await sender.group_send("room", {"n": 2})
        got.append(await asyncio.wait_for(receiver.receive(own), 10))
        got.append(await asyncio.wait_for(receiver.receive("acl.shared"), 10))
        await receiver.group_discard("room", own)
        await sender.flush()
        await sender.close()
        await receiver.close()
        return got

    assert run(scenario()) == [{"n": 1}, {"n": 2}, {"n": 2}]


def test_a_password_rotated_during_traffic_loses_nothing(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = redis_server.admin()
    create_user(redis_server, "chat", "secret-1")
    monkeypatch.setenv("CE_REDIS_USER", "chat")
    monkeypatch.setenv("CE_REDIS_PASSWORD", "secret-1")
    credentials = {
        "provider": "env",
        "user_variable": "CE_REDIS_USER",
        "password_variable": "CE_REDIS_PASSWORD",
    }
    rotations = 0

    def rotate(new: str, old: str) -> None:
        """What an operator does: add the new password, hand it out, drop the old one,
        and end the sessions still logged in with it."""
        nonlocal rotations
        admin.execute_command("ACL", "SETUSER", "chat", f">{new}")
        monkeypatch.setenv("CE_REDIS_PASSWORD", new)
        admin.execute_command("ACL", "SETUSER", "chat", f"<{old}")
        admin.execute_command("CLIENT", "KILL", "USER", "chat")
        rotations += 1

    async def scenario() -> dict[str, list[int]]:
        config: dict[str, Any] = {
            "ENGINE": "redis",
            "url": redis_server.url,
            "credentials": credentials,
            "capacity": 10_000,
        }
        sender, receiver = EngineChannelLayer(**config), EngineChannelLayer(**config)
        own = await receiver.new_channel()
        await receiver.group_add("rotating", own)
        got: dict[str, list[int]] = {"own": [], "shared": []}

        async def collect(name: str, channel: str, count: int) -> None:
            while len(got[name]) < count:
                got[name].append((await asyncio.wait_for(receiver.receive(channel), 30))["n"])

        collectors = asyncio.gather(collect("own", own, 600), collect("shared", "rot.shared", 300))
        for n in range(300):
            if n in (100, 200):
                rotate(f"secret-{n}", "secret-1" if n == 100 else "secret-100")
            await sender.send(own, {"n": n})
            await sender.group_send("rotating", {"n": 1000 + n})
            await sender.send("rot.shared", {"n": n})
        await asyncio.wait_for(collectors, 60)
        await sender.close()
        await receiver.close()
        return got

    got = run(scenario(), timeout=120)
    assert rotations == 2
    assert [n for n in got["own"] if n < 1000] == list(range(300))
    assert [n - 1000 for n in got["own"] if n >= 1000] == list(range(300))
    assert got["shared"] == list(range(300))


def test_a_password_in_the_url_and_a_provider_are_refused_together() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(
            ENGINE="redis", url="redis://chat:hunter2@127.0.0.1:1/0", credentials="env"
        )
    assert str(caught.value) == (
        "EngineChannelLayer: CONFIG sets both a password (in 'url') and 'credentials'. Give "
        "the password in 'url' for a fixed login, or name a credential provider in "
        "'credentials' for one that can change, not both."
    )
    assert "hunter2" not in repr(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/0",
        "redis://:pw@127.0.0.1:6379/0?ssl_cert_reqs=none",
        "unix://",
        "nonsense",
    ],
)
def test_a_url_that_is_not_a_redis_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE="redis", url=url)
    assert str(caught.value) == (
        "EngineChannelLayer: CONFIG['url'] is not a redis://, rediss:// or unix:// URL "
        "without query parameters (the value is not shown: it may hold a password)."
    )
    assert re.search(r"pw|nonsense|http", str(caught.value)) is None
