"""Traffic through two redis layers: one message of each kind, or many while something
kills their connections again and again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from channels_engines import EngineChannelLayer

#: Messages sent of each kind: to a process channel, to a normal channel, to a group.
COUNT = 300


async def traffic_while_killing(
    make_layer: Callable[..., EngineChannelLayer],
    kill: Callable[[], int],
    *,
    group: str,
    shared: str,
) -> tuple[dict[str, list[int]], int]:
    """Send :data:`COUNT` messages of each kind, from one layer to another (both made by
    ``make_layer(**options)``), while a thread calls ``kill()`` (which returns how many
    connections it killed) every 50 ms; the numbers that arrived, in order of arrival,
    per kind ("own", "shared", "group"), and the kills."""
    # Capacity is not under test: the receiver falls behind while it reconnects.
    sender = make_layer(pool_timeout=20.0, capacity=100_000)
    receiver = make_layer(pool_timeout=20.0, capacity=100_000)
    try:
        return await _traffic(sender, receiver, kill, group=group, shared=shared)
    finally:
        await sender.close()
        await receiver.close()


async def _traffic(
    sender: EngineChannelLayer,
    receiver: EngineChannelLayer,
    kill: Callable[[], int],
    *,
    group: str,
    shared: str,
) -> tuple[dict[str, list[int]], int]:
    stop = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        while not stop.wait(0.05):
            kills += kill()

    own = await receiver.new_channel()
    await receiver.group_add(group, own)
    got: dict[str, list[int]] = {"own": [], "shared": [], "group": []}

    async def collect(name: str, channel: str, count: int) -> None:
        while len(got[name]) < count:
            message = await asyncio.wait_for(receiver.receive(channel), 30)
            got[name].append(message["n"])

    collectors = asyncio.gather(
        collect("own", own, COUNT * 2),  # direct and group messages share it
        collect("shared", shared, COUNT),
    )
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        for n in range(COUNT):
            await sender.send(own, {"n": n})
            await sender.send(shared, {"n": n})
            await sender.group_send(group, {"n": 10_000 + n})
        await asyncio.wait_for(collectors, 60)
    finally:
        stop.set()
        thread.join()
    got["group"] = [n - 10_000 for n in got["own"] if n >= 10_000]
    got["own"] = [n for n in got["own"] if n < 10_000]
    return got, kills


async def round_trip(
    sender: EngineChannelLayer, receiver: EngineChannelLayer, *, shared: str
) -> list[object]:
    """A message to a process channel, one to the group "room" it joined, and one to the
    normal channel ``shared``, in that order; what arrived. Closes both layers."""
    own = await receiver.new_channel()
    await receiver.group_add("room", own)
    first = asyncio.ensure_future(receiver.receive(own))
    await sender.send(own, {"n": 1})
    got: list[object] = [await asyncio.wait_for(first, 10)]
    await sender.group_send("room", {"n": 2})
    await sender.send(shared, {"n": 3})
    got.append(await asyncio.wait_for(receiver.receive(own), 10))
    got.append(await asyncio.wait_for(receiver.receive(shared), 10))
    await sender.close()
    await receiver.close()
    return got
