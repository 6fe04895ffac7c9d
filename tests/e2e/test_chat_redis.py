"""The chat example on ``ENGINE: "redis"``, with nothing changed but that setting: two
uvicorn workers share a room through a real Redis, then stop on SIGTERM and leave
neither connections nor memberships behind."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest

from tests.support.redis_servers import RedisServer

from .harness import ChatServer, open_clients_on_distinct_workers, run, unique_room, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def test_the_chat_runs_on_redis_with_only_the_setting_changed(
    start_server: Callable[..., ChatServer], redis_server: RedisServer
) -> None:
    admin = redis_server.admin()

    def layer_connections() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") == "channels_engines")

    server = start_server(
        "uvicorn",
        "redis-workers",
        workers=2,
        settings="tests.e2e.chat_on_redis",
        env={"CHAT_REDIS_URL": redis_server.url},
    )
    room = unique_room("redis")

    async def scenario() -> None:
        first, second = await open_clients_on_distinct_workers(server, room)
        try:
            await first.say(f"hello from pid {first.pid}")
            await second.expect(f"hello from pid {first.pid}")
            await second.say(f"hello from pid {second.pid}")
            await first.expect(f"hello from pid {second.pid}")
            assert admin.keys("channels_engines:group:*"), "no group in Redis"
            assert 0 < layer_connections() <= 2 * 3
            code = await asyncio.to_thread(server.terminate)
            assert code in (0, -signal.SIGTERM), f"uvicorn exited with {code}"
            await first.expect_closed()
            await second.expect_closed()
        finally:
            await first.close()
            await second.close()

    run(scenario())
    wait_for(lambda: layer_connections() == 0, "the workers' connections to leave Redis")
    wait_for(
        lambda: all(admin.zcard(key) == 0 for key in admin.keys("channels_engines:group:*")),
        "the room's memberships to be removed",
    )
