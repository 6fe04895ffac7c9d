"""Optional flow control for the sender: at most N messages not yet acknowledged.

Used by large_1mib only. Without it a fast sender piles megabytes up in front of a
slower receiver, and the number becomes a buffer-overflow test (Redis disconnects a
pub/sub subscriber that lags by 32 MB) with queueing for latency. Acknowledgements are
small messages sent back over the same layer, so every subject pays for them alike.
"""

from __future__ import annotations

import asyncio
from typing import Any

ACK = "bench.ack"


class AckWindow:
    """Sender side: a semaphore released by acknowledgements from the receiver."""

    def __init__(self, layer: Any, size: int) -> None:
        self._layer = layer
        self._slots = asyncio.Semaphore(size)
        self.channel = ""
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Create the acknowledgement channel and start reading it."""
        self.channel = await self._layer.new_channel()
        self._reader = asyncio.create_task(self._read())

    async def acquire(self) -> None:
        """Wait for a free slot before sending."""
        await self._slots.acquire()

    async def _read(self) -> None:
        while True:
            message = await self._layer.receive(self.channel)
            if message.get("type") == ACK:
                self._slots.release()


async def acknowledge(layer: Any, message: dict[str, Any]) -> None:
    """Receiver side: acknowledge a message that asks for it."""
    reply = message.get("ack")
    if reply:
        await layer.send(reply, {"type": ACK, "seq": message.get("seq")})
