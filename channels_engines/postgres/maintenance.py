"""Periodic work of one engine, in every process that uses the layer, sending or receiving.

Every ``sweep_interval`` the engine's own housekeeping runs (safety claims where the loop
receives, buffered messages past their expiry, credentials due for refresh); every
``cleanup_interval`` one process at a time, whichever takes the transaction-level lock
first, deletes expired rows and memberships in batches. A process that only sends takes
its turn too, so the tables do not grow where nobody receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg

from ..inspection import Purged
from .deadlines import fetch, transaction
from .schema import Statements
from .sending import ConnectionContext

__all__ = ["Maintenance"]

logger = logging.getLogger("channels_engines.postgres")

# Expired rows deleted per statement by the cleanup; at most this many statements a turn.
CLEANUP_BATCH = 5000
_CLEANUP_ROUNDS = 20
#: What a cleanup counts, in the order :meth:`Maintenance._cleanup_batch` returns it.
_REMOVED = ("messages", "memberships", "claim records", "idle group streams")

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


class Maintenance:
    """Runs ``housekeeping()`` every ``interval`` seconds and the table cleanup every
    ``cleanup_interval`` seconds, until stopped."""

    def __init__(
        self,
        *,
        interval: float,
        cleanup_interval: float,
        housekeeping: Callable[[], Awaitable[None]],
        connection: ConnectionContext,
        statements: Statements,
        expired_channels: Callable[[], Iterable[str]],
        query_timeout: float,
        pool_timeout: float,
    ) -> None:
        self._interval = interval
        self._cleanup_interval = cleanup_interval
        self._housekeeping = housekeeping
        self._connection = connection
        self._statements = statements
        self._expired_channels = expired_channels
        self._query_timeout = query_timeout
        self._pool_timeout = pool_timeout
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        #: Cleanup turns this engine took part in (for tests and stats).
        self.cleanups = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="channels_engines maintenance"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _run(self) -> None:
        # Processes started together spread their cleanups over the interval.
        next_cleanup = time.monotonic() + self._cleanup_interval * 0.5
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._housekeeping()
            except Exception as exc:
                logger.warning("Housekeeping of the postgres engine failed (%s); will retry.", exc)
            if time.monotonic() >= next_cleanup:
                next_cleanup = time.monotonic() + self._cleanup_interval
                try:
                    await self.cleanup()
                except Exception as exc:
                    if not self._failing:
                        logger.warning("Expiry cleanup failed (%s); will retry.", exc)
                    self._failing = True
                else:
                    if self._failing:
                        logger.info("Expiry cleanup works again.")
                    self._failing = False

    async def cleanup(self) -> Purged:
        """Delete expired rows in batches, if no other process is doing it right now."""
        statements = self._statements
        timeout = self._query_timeout
        gone = sorted(self._expired_channels())
        self.cleanups += 1
        async with self._connection(self._pool_timeout) as conn:
            if gone:
                await fetch(
                    conn,
                    statements.leave_groups,
                    {"channels": gone},
                    timeout=timeout,
                    what="removing memberships of channels whose messages expired",
                )
            removed = dict.fromkeys(_REMOVED, 0)
            for turn in range(_CLEANUP_ROUNDS):
                counts = await self._cleanup_batch(conn)
                if counts is None:
                    # Another process holds the lock: it is deleting the same rows.
                    return Purged(removed, skipped=turn == 0)
                for kind, count in zip(_REMOVED, counts, strict=True):
                    removed[kind] += count
                if max(counts) < CLEANUP_BATCH:
                    break
            return Purged(removed)

    async def _cleanup_batch(self, conn: Connection) -> tuple[int, ...] | None:
        """One batch in one transaction: how many rows of each kind it deleted, or None
        when another process holds the cleanup lock."""
        statements = self._statements
        timeout = self._query_timeout
        limit = {"limit": CLEANUP_BATCH}
        async with transaction(conn, timeout, "the expiry cleanup"):
            locked = await fetch(
                conn,
                statements.try_cleanup_lock,
                [statements.cleanup_lock],
                timeout=timeout,
                what="the cleanup lock",
            )
            if not (locked and locked[0][0]):
                return None
            counts = await fetch(
                conn,
                statements.delete_expired_messages,
                limit,
                timeout=timeout,
                what="deleting expired messages",
            )
            members = await fetch(
                conn,
                statements.delete_expired_members,
                limit,
                timeout=timeout,
                what="deleting expired memberships",
            )
            claims = await fetch(
                conn,
                statements.delete_expired_claims,
                limit,
                timeout=timeout,
                what="deleting expired claim records",
            )
            streams = await fetch(
                conn,
                statements.delete_idle_streams,
                limit,
                timeout=timeout,
                what="deleting the order of idle group streams",
            )
        # Messages, the memberships of channels they were addressed to, expired
        # memberships, claim records, and the order of idle streams.
        return (
            int(counts[0][0]),
            int(counts[0][1]) + int(members[0][0]),
            int(claims[0][0]),
            int(streams[0][0]),
        )
