"""Physical floor for PostgreSQL: LISTEN/NOTIFY with the payload inline, no table.

One connection listens, one connection sends `SELECT pg_notify(%s, %s)` in autocommit
(psycopg prepares it after a few calls). Every send is awaited: one notifying commit
per message, which is the cost any NOTIFY-based layer pays at least once per message
unless it batches. No table means no durability and an 8000-byte payload limit, so this
floor does not run the 1 MiB scenario.
"""

from __future__ import annotations

import asyncio

import psycopg
from psycopg import sql

from benchmarks.raw_router import (
    LocalRouter,
    Message,
    group_topic,
    pack_text,
    split_channel,
    unpack_text,
)

_NOTIFY = "SELECT pg_notify(%s, %s)"


class RawPgLayer:
    """The thinnest adapter giving LISTEN/NOTIFY the channel-layer calls."""

    extensions = ["groups", "flush"]

    def __init__(self, dsn: str, *, per_call_connections: bool = False) -> None:
        self._dsn = dsn
        self._per_call = per_call_connections
        self._router = LocalRouter()
        self._send_conn: psycopg.AsyncConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None

    async def new_channel(self, prefix: str = "specific") -> str:
        """A process-specific channel (the prefix is irrelevant to the floor)."""
        return self._router.new_channel()

    async def send(self, channel: str, message: Message) -> None:
        """One awaited NOTIFY on the receiving process' topic."""
        topic, local = split_channel(channel)
        await self._notify(topic, f"{local}:{pack_text(message)}")

    async def group_add(self, group: str, channel: str) -> None:
        """Local membership; must happen before the first receive (one LISTEN batch)."""
        if self._reader is not None:
            raise RuntimeError("raw floor: group_add after the first receive is not supported")
        self._router.add_member(group, channel)

    async def group_send(self, group: str, message: Message) -> None:
        """One NOTIFY on the group topic; each listening process fans out locally."""
        await self._notify(group_topic(group), pack_text(message))

    async def receive(self, channel: str) -> Message:
        """Wait on the channel's local queue, listening first if needed."""
        if self._reader is None:
            await self._start_reader()
        return await self._router.queue(channel).get()

    async def flush(self) -> None:
        """Nothing is stored, so nothing to flush."""

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _notify(self, topic: str, payload: str) -> None:
        if self._per_call:
            # Each async_to_sync call runs on a new event loop: a connection cannot
            # outlive it, so the sync path pays a connect per call.
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

    async def _start_reader(self) -> None:
        async with self._get_lock():
            if self._reader is not None:
                return
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            for topic in [self._router.topic, *self._router.group_topics]:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(topic)))
            self._reader = asyncio.create_task(self._read(conn))

    async def _read(self, conn: psycopg.AsyncConnection) -> None:
        own = self._router.topic
        async for note in conn.notifies():
            if note.channel == own:
                local, _, data = note.payload.partition(":")
                self._router.deliver(local, unpack_text(data))
            else:
                self._router.deliver_group(note.channel, unpack_text(note.payload))
