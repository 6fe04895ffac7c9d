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
    ) -> None:
        self._client = client
        self._keys = keys
        self.sender = sender
        self._expiry = expiry
        self._deadline = deadline
        self._where = where
        self._refused = refused
        self._pending: list[Store] = []
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
        if self._task is None:
            self._task = loop.create_task(self._drain(), name="channels_engines redis writer")
        return [await item.future for item in items if item.future is not None]

    async def close(self) -> None:
        """Finish what was handed over (callers are waiting for it)."""
        task = self._task
        if task is not None:
            with contextlib.suppress(BaseException):
                await task

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = [item for item in self._pending[:_BATCH] if not item.done()]
                del self._pending[:_BATCH]
                if not batch:
                    continue
                self._number(batch)
                try:
                    results = await call(
                        lambda batch=batch: self._send(batch),  # type: ignore[misc]
                        deadline=self._deadline,
                        what="storing a message",
                        where=self._where,
                        refused=self._refused,
                    )
                except Exception as exc:
                    for item in batch:
                        if item.future is not None and not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item, result in zip(batch, results, strict=True):
                    if item.future is None or item.future.done():
                        continue
                    if isinstance(result, Exception):
                        item.future.set_exception(result)
                    else:
                        item.future.set_result(result != 0)
        finally:
            self._task = None

    def _number(self, batch: list[Store]) -> None:
        """Sequence numbers (and notes) in the order the batch will be stored."""
        expiry_ms = int(self._expiry() * 1000)
        expires_ms = int(time.time() * 1000) + expiry_ms
        for item in batch:
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
        """One pipeline of store scripts; loads the scripts and sends again on NOSCRIPT
        (the store script does nothing twice)."""
        client = await self._client()
        self.batches += 1
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            expiry_ms = int(self._expiry() * 1000)
            for item in batch:
                stream, seqs = self._keys.stream(item.queue)
                normal = not item.locals
                pipe.evalsha(
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
            try:
                results: list[Any] = await pipe.execute(raise_on_error=False)
            except Exception:
                self.retries += 1
                raise
            if attempt == 0 and any(is_noscript(r) for r in results if isinstance(r, Exception)):
                await load_scripts(client)
                continue
            return results
        return results
