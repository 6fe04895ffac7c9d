"""The PostgreSQL engine as a whole: its parts wired per event loop, and closing.

Every test uses its own tables (a fresh ``table_prefix``, dropped afterwards) and its own
``application_name``, so it can count exactly its own server connections."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tests.support.pgtools import (
    Admin,
    Sampler,
    engine_of,
    make_layer,
    run,
    unique,
)
from tests.support.polling import wait_for

pytestmark = pytest.mark.postgres


def test_each_event_loop_has_its_own_listener_and_pool_within_the_same_budget(
    app: str, prefix: str, admin: Admin
) -> None:
    """A layer used by two event loops (as with a thread): 2 x (1 listener + 2 pooled)."""
    layer = make_layer(app, prefix=prefix, capacity=1000)
    listeners: dict[str, Any] = {}
    results: dict[str, list[int]] = {}

    async def receive_many(name: str, gate: threading.Barrier) -> None:
        channels = [f"loops.{name}-{index}" for index in range(50)]
        receivers = [asyncio.ensure_future(layer.receive(channel)) for channel in channels]
        await asyncio.sleep(0)
        await asyncio.to_thread(gate.wait, 30)  # both loops have receivers waiting
        await asyncio.gather(*(layer.send(channel, {"n": n}) for n, channel in enumerate(channels)))
        results[name] = [
            item["n"] for item in await asyncio.wait_for(asyncio.gather(*receivers), 30)
        ]
        listeners[name] = engine_of(layer).listener.backend_pid
        await asyncio.to_thread(gate.wait, 30)  # sampled before either loop closes
        await layer.close()

    gate = threading.Barrier(3)
    with Sampler(app) as sampler:
        threads = [
            threading.Thread(target=run, args=(receive_many(name, gate),)) for name in ("a", "b")
        ]
        for thread in threads:
            thread.start()
        gate.wait(30)
        sampler.sample()
        gate.wait(30)
        sampler.sample()
        for thread in threads:
            thread.join(60)
    assert results == {"a": list(range(50)), "b": list(range(50))}
    assert len(set(listeners.values())) == 2  # one LISTEN connection per loop
    assert sampler.max_connections <= 6, sampler.max_connections
    assert sampler.server_max <= 6, sampler.server_max
    wait_for(lambda: admin.count(app) == 0, "every connection released")


def test_a_receive_waiting_when_the_layer_is_closed_does_not_hang_forever(
    app: str, prefix: str
) -> None:
    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix)
        other = make_layer(unique("ce_t"), prefix=prefix)  # another process
        channel = await layer.new_channel()
        await other.send(channel, {"n": 0})
        assert await layer.receive(channel) == {"n": 0}
        waiting = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)
        await layer.close()
        await other.send(channel, {"n": 1})
        # It fails, or it gets the message; either way nothing is lost.
        done, _ = await asyncio.wait([waiting], timeout=5)
        assert done, "the receive() waiting at close() never returned"
        if waiting.exception() is not None:
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 1}
        else:
            assert waiting.result() == {"n": 1}
        await layer.close()
        await other.close()

    run(scenario())
