"""A worker dies mid-conversation: the other keeps working, a restarted one rejoins, and
SIGTERM at the end leaves no connection of either on PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest

from .harness import ChatClient, ChatServer, Observer, run, unique_room, wait_for

pytestmark = pytest.mark.e2e


def test_killed_worker_spares_the_other_and_rejoins(
    start_server: Callable[..., ChatServer], observer: Observer
) -> None:
    a = start_server("daphne", "failover-a", wait=False)
    b = start_server("daphne", "failover-b", wait=False)
    a.ready()
    b.ready()
    room = unique_room("failover")

    async def scenario() -> None:
        a1 = await ChatClient.open(a, room, "a1")
        a2 = await ChatClient.open(a, room, "a2")
        b1 = await ChatClient.open(b, room, "b1")
        clients = [a1, a2, b1]
        try:
            await a1.say("before the crash")
            for client in clients:
                await client.expect("before the crash")

            # SIGKILL: no shutdown code runs, memberships of b1 stay behind.
            await asyncio.to_thread(b.kill)
            await b1.expect_closed()
            wait_for(lambda: observer.connections(b) == 0, "the killed worker's sessions to end")

            await a1.say("after the crash")
            await a2.expect("after the crash")
            await a2.say("still talking")
            await a1.expect("still talking")

            await asyncio.to_thread(b.restart)
            b2 = await ChatClient.open(b, room, "b2")
            clients.append(b2)
            assert b2.pid != b1.pid
            await a1.say("welcome back")
            await b2.expect("welcome back")
            await b2.say("rejoined")
            await a1.expect("rejoined")
            await a2.expect("rejoined")

            # Clean shutdown, clients still connected.
            for server in (a, b):
                assert observer.connections(server) > 0
                code = await asyncio.to_thread(server.terminate)
                assert code in (0, -signal.SIGTERM), f"{server.worker} exited with {code}"
            for client in (a1, a2, b2):
                await client.expect_closed()
        finally:
            for client in clients:
                await client.close()

    run(scenario())
    for server in (a, b):
        wait_for(
            lambda server=server: observer.connections(server) == 0,
            f"{server.worker}'s connections to leave PostgreSQL after SIGTERM",
        )
