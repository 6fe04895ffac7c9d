"""What the engine stores: messages, gathered into pipelines, one at a time.

Concurrent sends on one event loop join the pipeline that follows the one in flight, so
a busy loop stores hundreds of messages per round trip. Pipelines run strictly one after
another on one connection, so everything one writer stores lands in the order of its
sequence numbers.

Each message is stored under the writer's sender id and a sequence number, which the
store script remembers per stream (:data:`.keys.STORE`). When the connection breaks
while a pipeline is in flight, the server may have stored it and lost only the answer;
the pipeline is then sent again on a fresh connection, and what was stored already is
recognised and not stored twice. So a send whose connection dies returns normally, and
the message arrives once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..senders import Sender
from .calls import call, is_noscript, load_scripts
from .keys import STORE, Keys

if TYPE_CHECKING:
    from .notes import Notary

__all__ = ["Store", "Writer"]

# Messages gathered into one pipeline at most.
_BATCH = 500


@dataclass(eq=False)
class Store:
    """One message for one queue: a normal channel (``locals`` empty), or a process queue
    (the part up to the '!') with the local parts of the channels it is for."""

    queue: str
    locals: str
    capacity: int
    payload: bytes
    seq: int = 0
    note: bytes = b""
    future: asyncio.Future[bool] | None = field(default=None, init=False)

    def done(self) -> bool:
        return self.future is not None and self.future.done()


class Writer:
    """Stores one event loop's messages in order (see the module docstring)."""

    def __init__(
        self,
        *,
        client: Callable[[], Awaitable[Any]],
        keys: Keys,
        sender: Sender,
        expiry: Callable[[], float],
        deadline: float,
        where: str,
        refused: Callable[[], bool],
        own_connection: bool,
    ) -> None:
        self._client = client
        # A connection of the writer's own, kept between batches (one of pool_max_size),
        # or None to take one from the pool per batch.
        self._own = own_connection
        self._conn: Any = None
        self._keys = keys
        self.sender = sender
        self._expiry = expiry
        self._deadline = deadline
        self._where = where
        self._refused = refused
        self._pending: list[Store] = []
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self.notary: Notary | None = None
        #: Pipelines sent, and pipelines sent again after a connection failure (for tests).
        self.batches = 0
        self.retries = 0

    async def store(self, items: list[Store]) -> list[bool]:
        """Store ``items``; for each, whether it was stored (False: its queue was full)."""
        loop = asyncio.get_running_loop()
        for item in items:
            item.future = loop.create_future()
        self._pending.extend(items)
        if not self._busy:
            # Nothing in flight: this caller sends the batch itself, without a task
            # hand-off; what others add meanwhile follows in a task.
            self._busy = True
            batch = self._take()
            try:
                await self._store(batch)
            except BaseException:
                # Cancelled in flight: the others in the batch still want an answer, and
                # the batch may go again (it keeps its sequence numbers).
                self._pending[:0] = [item for item in batch if not item.done()]
                raise
            finally:
                if self._pending:
                    self._task = loop.create_task(
                        self._drain(), name="channels_engines redis writer"
                    )
                else:
                    self._busy = False
        return [await item.future for item in items if item.future is not None]

    async def close(self) -> None:
        """Finish what was handed over (callers are waiting for it), then let go of the
        writer's connection."""
        task = self._task
        if task is not None:
            with contextlib.suppress(BaseException):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    def _take(self) -> list[Store]:
        batch = [item for item in self._pending[:_BATCH] if not item.done()]
        del self._pending[:_BATCH]
        return batch

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._store(self._take())
        finally:
            self._task = None
            self._busy = False

    async def _store(self, batch: list[Store]) -> None:
        """Store one batch and resolve its callers' futures."""
        if not batch:
            return
        self._number(batch)
        try:
            results = await call(
                lambda: self._send(batch),
                deadline=self._deadline,
                what="storing a message",
                where=self._where,
                refused=self._refused,
            )
        except Exception as exc:
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, result in zip(batch, results, strict=True):
            if item.future is None or item.future.done():
                continue
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.future.set_result(result != 0)

    def _number(self, batch: list[Store]) -> None:
        """Sequence numbers (and notes) in the order the batch will be stored."""
        expiry_ms = int(self._expiry() * 1000)
        expires_ms = int(time.time() * 1000) + expiry_ms
        for item in batch:
            if item.seq:
                continue  # sent before, by a caller that was cancelled
            item.seq = self.sender.take()
            if self.notary is not None and item.locals:
                item.note = self.notary.write(
                    self._keys.note(item.queue),
                    item.locals,
                    self.sender.id,
                    item.seq,
                    expires_ms,
                    item.payload,
                )

    async def _send(self, batch: list[Store]) -> list[Any]:
        """The store scripts of ``batch`` in one round trip on one connection, written and
        read directly (a pipeline object per batch costs more than the script); loads the
        scripts and sends again on NOSCRIPT (the store script does nothing twice)."""
        from redis.exceptions import ResponseError

        client = await self._client()
        pool = client.connection_pool
        expiry_ms = int(self._expiry() * 1000)
        commands: list[tuple[Any, ...]] = []
        for item in batch:
            stream, seqs = self._keys.stream(item.queue)
            normal = not item.locals
            commands.append(
                (
                    "EVALSHA",
                    STORE.sha,
                    2,
                    stream,
                    seqs,
                    item.capacity,
                    expiry_ms,
                    self.sender.id,
                    item.seq,
                    item.locals,
                    item.payload,
                    self._keys.wake(item.queue) if normal else self._keys.note(item.queue),
                    item.note,
                    "1" if normal else "0",
                )
            )
        self.batches += 1
        data = b"".join(_pack(command) for command in commands)
        for attempt in range(2):
            conn = await self._connection(pool)
            try:
                await conn.send_packed_command(data, check_health=False)
                results: list[Any] = []
                for _ in commands:
                    try:
                        results.append(await conn.read_response(disable_decoding=True))
                    except ResponseError as exc:
                        results.append(exc)
            except BaseException:
                self.retries += 1
                await conn.disconnect()
                raise
            finally:
                if not self._own:
                    await pool.release(conn)
            if attempt == 0 and any(is_noscript(r) for r in results if isinstance(r, Exception)):
                await load_scripts(client)
                continue
            return results
        return results

    async def drop_connection(self) -> None:
        """Close the writer's connection (the primary moved); the next batch opens one."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _connection(self, pool: Any) -> Any:
        if not self._own:
            return await pool.get_connection()
        if self._conn is None:
            self._conn = pool.make_connection()
        if not self._conn.is_connected:
            await self._conn.connect()
        return self._conn


def _pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP, for the arguments the writer sends (str, int, bytes)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = b"%d" % arg
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)
