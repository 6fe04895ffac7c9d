"""The chat example on two daphne processes: rooms work across processes.

Each client is connected to one process; what reaches a client on the other process went
through the PostgreSQL channel layer, since the processes share nothing else.
"""

from __future__ import annotations

import pytest

from .harness import (
    ChatClient,
    ChatServer,
    Observer,
    post_announcement,
    run,
    send_chat_command,
    unique_room,
    wait_for,
)

pytestmark = pytest.mark.e2e

Pair = tuple[ChatServer, ChatServer]


def test_room_messages_cross_processes(daphne_pair: Pair) -> None:
    a, b = daphne_pair
    room, other_room = unique_room("cross"), unique_room("elsewhere")

    async def scenario() -> None:
        on_a = await ChatClient.open(a, room)
        on_b = await ChatClient.open(b, room)
        elsewhere = await ChatClient.open(b, other_room)
        try:
            assert on_a.pid != on_b.pid
            await on_a.say("hello from a", name="ada")
            message = await on_b.expect("hello from a")
            assert message["name"] == "ada"
            assert message["worker"] == on_a.worker
            assert message["via"] == "websocket"
            await on_a.expect("hello from a")  # the sender is in the room too

            await on_b.say("hello from b")
            assert (await on_a.expect("hello from b"))["worker"] == on_b.worker

            # Rooms are separate groups: the other room heard nothing.
            await elsewhere.expect_silence(0.5)
        finally:
            for client in (on_a, on_b, elsewhere):
                await client.close()

    run(scenario())


def test_disconnect_leaves_the_group(daphne_pair: Pair, observer: Observer) -> None:
    a, b = daphne_pair
    room = unique_room("leave")

    async def scenario() -> None:
        on_a = await ChatClient.open(a, room)
        on_b = await ChatClient.open(b, room)
        try:
            members = observer.members(room)
            assert len(members) == 2
            # Process-specific channels: each membership names its own process.
            assert len({channel.split("!")[0] for channel in members}) == 2

            await on_b.close()
            remaining = wait_for(
                lambda: (rows := observer.members(room)) and len(rows) == 1 and rows,
                "the closed client's membership to be removed",
            )
            assert remaining[0] in members

            # The room still works for who is left.
            await on_a.say("still here")
            await on_a.expect("still here")
        finally:
            await on_a.close()
        wait_for(lambda: not observer.members(room), "the room's group to be empty")

    run(scenario())


def test_sync_view_broadcasts_to_every_process(daphne_pair: Pair) -> None:
    a, b = daphne_pair
    room = unique_room("view")

    async def scenario() -> None:
        on_a = await ChatClient.open(a, room)
        on_b = await ChatClient.open(b, room)
        try:
            # A plain Django view on process a; async_to_sync inside it.
            response = await _in_thread(post_announcement, a, room, "from the view")
            assert response["sent"] is True
            for client in (on_a, on_b):
                message = await client.expect("from the view")
                assert message["via"] == "view"
                assert message["worker"] == response["worker"]
        finally:
            await on_a.close()
            await on_b.close()

    run(scenario())


def test_management_command_broadcasts_to_every_process(
    daphne_pair: Pair, chat_database: str
) -> None:
    a, b = daphne_pair
    room = unique_room("command")

    async def scenario() -> None:
        on_a = await ChatClient.open(a, room)
        on_b = await ChatClient.open(b, room)
        try:
            output = await _in_thread(send_chat_command, chat_database, room, "from the shell")
            assert "Sent" in output
            for client in (on_a, on_b):
                message = await client.expect("from the shell")
                # Sent from outside any server: no worker is named as its sender.
                assert (message["via"], message["name"], message["worker"]) == (
                    "command",
                    "ops",
                    None,
                )
        finally:
            await on_a.close()
            await on_b.close()

    run(scenario())


async def _in_thread(function, *args):  # type: ignore[no-untyped-def]
    """Blocking helpers (HTTP, a subprocess) must not stall the clients' event loop."""
    import asyncio

    return await asyncio.to_thread(function, *args)
