"""``manage.py channels_engines`` on a redis layer, against a real server: check, stats,
purge-expired, and schema (which the engine does not need)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from channels_engines import EngineChannelLayer
from tests.support.pgtools import run
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis


def command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("channels_engines", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def layers(server: RedisServer) -> dict[str, Any]:
    return {"default": {"ENGINE": "redis", "CONFIG": {"url": server.url, "prefix": "cmd"}}}


def fill(server: RedisServer) -> Any:
    async def scenario() -> Any:
        layer = EngineChannelLayer(ENGINE="redis", url=server.url, prefix="cmd")
        own = [await layer.new_channel() for _ in range(3)]
        for channel in own:
            await layer.group_add("lobby", channel)
        await layer.group_add("lobby", "worker.jobs")
        for n in range(5):
            await layer.send("worker.jobs", {"n": n})
        await layer.send(own[0], {"n": 0})
        await layer.close()

    run(scenario())


def test_check_reports_the_server_and_warns_about_what_needs_attention(
    redis_server: RedisServer,
) -> None:
    redis_server.admin().config_set("maxmemory-policy", "allkeys-lru")
    with override_settings(CHANNEL_LAYERS=layers(redis_server)):
        (found,) = json.loads(command("check", "--json")[0])
    assert (found["engine"], found["ok"], found["server"]) == ("redis", True, "Redis 7.0.15")
    assert found["connections"]["per_process"] == 3
    assert found["connections"]["limit"] == int(
        redis_server.admin().config_get("maxclients")["maxclients"]
    )
    assert found["warnings"][0].startswith(
        "maxmemory-policy is allkeys-lru: when the server runs out of memory it deletes keys"
    )
    assert any("keeps nothing on disk" in warning for warning in found["warnings"])


def test_stats_counts_queues_groups_and_connections(redis_server: RedisServer) -> None:
    fill(redis_server)
    with override_settings(CHANNEL_LAYERS=layers(redis_server)):
        (found,) = json.loads(command("stats", "--json")[0])
        text, _ = command("stats")
    tables = found["tables"]
    summary = tables["Summary"][0]
    assert (summary["messages waiting"], summary["groups"], summary["members"]) == (6, 1, 4)
    queues = tables["Queues (the 20 with most messages waiting)"]
    assert queues[0] == {"queue": "worker.jobs", "kind": "normal", "waiting": 5}
    assert queues[1]["kind"] == "process"
    assert queues[1]["waiting"] == 1
    assert tables["Groups (the 20 with most members)"] == [{"group": "lobby", "members": 4}]
    assert "Queues (the 20 with most messages waiting):" in text.splitlines()


def test_purge_expired_trims_what_expired(redis_server: RedisServer) -> None:
    admin = redis_server.admin()
    # A message added long ago (its id is the server's clock then) beside a fresh one,
    # and a membership that expired beside one that never does.
    admin.xadd("cmd:ch:{old.jobs}", {"s": 1, "q": 1, "x": 1, "c": "", "m": b"old"}, id="1-1")
    admin.xadd("cmd:ch:{old.jobs}", {"s": 1, "q": 2, "x": 1, "c": "", "m": b"new"}, id="*")
    admin.zadd("cmd:group:{old}", {"old.jobs": 1, "new.jobs": float("inf")})
    with override_settings(CHANNEL_LAYERS=layers(redis_server)):
        found = json.loads(command("purge-expired", "--json")[0])
    assert found == {
        "alias": "default",
        "removed": {"messages": 1, "memberships": 1},
        "skipped": False,
    }
    assert admin.xlen("cmd:ch:{old.jobs}") == 1
    assert admin.zrange("cmd:group:{old}", 0, -1) == ["new.jobs"]


def test_schema_says_the_engine_needs_none(redis_server: RedisServer) -> None:
    with (
        override_settings(CHANNEL_LAYERS=layers(redis_server)),
        pytest.raises(CommandError) as caught,
    ):
        command("schema")
    assert str(caught.value) == (
        "schema is not available for CHANNEL_LAYERS['default']: the redis engine needs no "
        "schema: its keys are made as they are used."
    )
