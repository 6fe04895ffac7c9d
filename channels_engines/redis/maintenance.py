"""Periodic work of one engine: the safety net under pub/sub.

Every ``sweep_interval`` the engine reads its queues and claims for its waiting
receivers (in case an announcement was lost), drops expired messages from the mailbox,
deletes what was taken, and refreshes credentials ahead of expiry. Expired stream
entries and memberships need no cleanup of their own: the scripts trim them as they go,
and keys expire with their last entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Maintenance"]

logger = logging.getLogger("channels_engines.redis")


class Maintenance:
    """Runs ``housekeeping()`` every ``interval`` seconds until stopped."""

    def __init__(self, *, interval: float, housekeeping: Callable[[], Awaitable[None]]) -> None:
        self._interval = interval
        self._housekeeping = housekeeping
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="channels_engines redis maintenance"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._housekeeping()
            except Exception as exc:
                if not self._failing:
                    logger.warning("Housekeeping of the redis engine failed (%s); will retry.", exc)
                self._failing = True
            else:
                if self._failing:
                    logger.info("Housekeeping of the redis engine works again.")
                self._failing = False
