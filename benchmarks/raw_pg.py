"""Physical floor for PostgreSQL: LISTEN/NOTIFY with the payload inline, no table.

One connection listens, one connection sends `SELECT pg_notify(%s, %s)` in autocommit
(psycopg prepares it after a few calls). Every send is awaited: one notifying commit
per message, which is the cost any NOTIFY-based layer pays at least once per message
unless it batches. No table means no durability and an 8000-byte payload limit, so this
floor does not run the 1 MiB scenario.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.raw_router import (
    Message,
    RawFloor,
    group_topic,
    pack_text,
    split_channel,
    unpack_text,
)

_NOTIFY = "SELECT pg_notify(%s, %s)"


class RawPgLayer(RawFloor):
    """The thinnest adapter giving LISTEN/NOTIFY the channel-layer calls."""

    def __init__(self, dsn: str, *, per_call_connections: bool = False) -> None:
        super().__init__(per_call_connections=per_call_connections)
        self._dsn = dsn
        self._send_conn: psycopg.AsyncConnection | None = None

    async def send(self, channel: str, message: Message) -> None:
        """One awaited NOTIFY on the receiving process' topic."""
        topic, local = split_channel(channel)
        await self._notify(topic, f"{local}:{pack_text(message)}")

    async def group_send(self, group: str, message: Message) -> None:
        """One NOTIFY on the group topic; each listening process fans out locally."""
        await self._notify(group_topic(group), pack_text(message))

    async def _notify(self, topic: str, payload: str) -> None:
        if self._per_call:
            # Each async_to_sync call runs on a new event loop and the floor keeps
            # nothing between loops, so the sync path pays a connect per call.
            async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                await conn.execute(_NOTIFY, (topic, payload))
            return
        if self._send_conn is None:
            async with self._get_lock():
                if self._send_conn is None:
                    self._send_conn = await psycopg.AsyncConnection.connect(
                        self._dsn, autocommit=True
                    )
        await self._send_conn.execute(_NOTIFY, (topic, payload))

    async def _listen(self) -> Coroutine[Any, Any, None]:
        conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        for topic in [self._router.topic, *self._router.group_topics]:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(topic)))
        return self._read(conn)

    async def _read(self, conn: psycopg.AsyncConnection) -> None:
        own = self._router.topic
        async for note in conn.notifies():
            if note.channel == own:
                local, _, data = note.payload.partition(":")
                self._router.deliver(local, unpack_text(data))
            else:
                self._router.deliver_group(note.channel, unpack_text(note.payload))
