"""One server, several worker processes: ``uvicorn --workers 2`` and gunicorn with
``uvicorn_worker.UvicornWorker``, as they are deployed; then SIGTERM, as a process manager
stops them, must leave no connection behind on PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest

from .harness import (
    ChatServer,
    Observer,
    open_clients_on_distinct_workers,
    run,
    unique_room,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_workers_share_rooms_and_shut_down_cleanly(
    kind: str, start_server: Callable[..., ChatServer], observer: Observer
) -> None:
    server = start_server(kind, f"{kind}-workers", workers=2)
    room = unique_room(kind)

    async def scenario() -> None:
        first, second = await open_clients_on_distinct_workers(server, room)
        try:
            await first.say(f"hello from pid {first.pid}")
            await second.expect(f"hello from pid {first.pid}")
            await second.say(f"hello from pid {second.pid}")
            await first.expect(f"hello from pid {second.pid}")
            assert len(observer.members(room)) == 2
            assert observer.connections(server) > 0, "the workers' sessions are not named"

            # SIGTERM with both clients still connected.
            code = await asyncio.to_thread(server.terminate)
            assert code in (0, -signal.SIGTERM), f"{kind} exited with {code}"
            await first.expect_closed()
            await second.expect_closed()
        finally:
            await first.close()
            await second.close()

    run(scenario())
    wait_for(
        lambda: observer.connections(server) == 0,
        f"{kind}'s connections to leave PostgreSQL after SIGTERM",
    )
    # These servers close each WebSocket (code 1012) and run the consumer's disconnect(),
    # so the memberships go too, without waiting for the layer's expiry.
    wait_for(lambda: not observer.members(room), "the room's memberships to be removed")
