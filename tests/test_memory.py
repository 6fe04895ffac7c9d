"""The memory engine: the whole conformance kit, plus what is specific to it."""

from __future__ import annotations

import asyncio

from channels_engines import EngineChannelLayer
from channels_engines.testing import ChannelLayerConformance


class TestMemoryConformance(ChannelLayerConformance):
    config = {"ENGINE": "memory"}


def test_layers_do_not_share_messages() -> None:
    """Each layer instance has its own in-process store."""

    async def scenario() -> None:
        first, second = EngineChannelLayer(ENGINE="memory"), EngineChannelLayer(ENGINE="memory")
        await first.send("shared.name", {"type": "first"})
        await second.send("shared.name", {"type": "second"})
        assert await second.receive("shared.name") == {"type": "second"}
        assert await first.receive("shared.name") == {"type": "first"}

    asyncio.run(scenario())


def test_expired_message_removes_its_channel_from_groups() -> None:
    """A consumer that stopped reading leaves its groups when a message to it expires."""

    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory", expiry=0.2)
        stale, live = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("room", stale)
        await layer.group_add("room", live)
        await layer.group_send("room", {"type": "first"})
        assert await layer.receive(live) == {"type": "first"}
        await asyncio.sleep(1.2)  # past the expiry and the sweep interval
        await layer.group_send("room", {"type": "second"})
        assert await layer.receive(live) == {"type": "second"}
        await layer.send(stale, {"type": "direct"})
        assert await layer.receive(stale) == {"type": "direct"}

    asyncio.run(scenario())
