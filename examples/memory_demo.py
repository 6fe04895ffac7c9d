"""Two Channels consumers talking through channels_engines' memory engine; no server needed.

Run it from a checkout of the repository, with a Python that has channels_engines
installed: in a virtual environment after ``pip install -e .``, or the chat demo's::

    .demo-venv/bin/python examples/memory_demo.py

Django is configured in code, with the layer written the way a project's settings.py would
write it. Each consumer runs as an ASGI application driven by asgiref's communicator,
which stands in for a web server: the consumers join a group, then receive a message sent
to one of them, a message sent to the group, and a group message sent from synchronous
code, as a Django view would send it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["channels", "channels_engines"],
    CHANNEL_LAYERS={"default": {"ENGINE": "memory"}},
)
django.setup()

from asgiref.sync import async_to_sync  # noqa: E402
from asgiref.testing import ApplicationCommunicator  # noqa: E402
from channels.consumer import AsyncConsumer  # noqa: E402
from channels.exceptions import StopConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402

GROUP = "lobby"


class Member(AsyncConsumer):
    """Joins the group when told to, reports every chat message, leaves when told to."""

    async def demo_join(self, event: dict[str, Any]) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.send({"type": "demo.joined", "channel": self.channel_name})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send({"type": "demo.received", "text": event["text"]})

    async def demo_leave(self, event: dict[str, Any]) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)
        raise StopConsumer


def announce_from_sync_code(text: str) -> None:
    """What a Django view or management command does: no event loop of its own."""
    async_to_sync(get_channel_layer().group_send)(GROUP, {"type": "chat.message", "text": text})


async def main() -> None:
    layer = get_channel_layer()
    print(f"Channel layer: {layer!r}, extensions {layer.extensions}")

    members = {
        name: ApplicationCommunicator(Member.as_asgi(), {"type": "demo", "user": name})
        for name in ("alice", "bob")
    }
    channels = {}
    for name, member in members.items():
        await member.send_input({"type": "demo.join"})
        joined = await member.receive_output(timeout=1)
        channels[name] = joined["channel"]
        print(f"{name} joined group {GROUP!r} with channel {joined['channel']}")

    async def show(name: str) -> None:
        message = await members[name].receive_output(timeout=1)
        print(f"  {name} received: {message['text']!r}")

    print("\nA message to bob's channel only:")
    await layer.send(channels["bob"], {"type": "chat.message", "text": "Hi Bob, just for you."})
    await show("bob")
    assert await members["alice"].receive_nothing(), "alice got bob's message"

    print(f"\nA message to the group {GROUP!r}:")
    await layer.group_send(GROUP, {"type": "chat.message", "text": "Hello, lobby!"})
    for name in members:
        await show(name)

    print("\nA group message from synchronous code (async_to_sync in another thread):")
    await asyncio.to_thread(announce_from_sync_code, "The server restarts at noon.")
    for name in members:
        await show(name)

    for member in members.values():
        await member.send_input({"type": "demo.leave"})
        await member.wait(timeout=1)
    print("\nBoth consumers left the group and stopped.")


if __name__ == "__main__":
    asyncio.run(main())
