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
from .servers import Servers

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
        servers: Callable[[], Awaitable[Servers]],
        keys: Keys,
        sender: Sender,
        expiry: Callable[[], float],
        deadline: float,
        where: str,
        refused: Callable[[], bool],
        own_connection: bool,
    ) -> None:
        self._servers = servers
        # A connection of the writer's own per server, kept between batches (one of
        # pool_max_size), or none: one from the pool per batch.
        self._own = own_connection
        self._conns: dict[Any, tuple[Any, Any]] = {}
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
        conns, self._conns = list(self._conns.values()), {}
        for _pool, conn in conns:
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
            servers = await self._servers()
            results = await call(
                lambda: self._send(servers, batch),
                deadline=self._deadline,
                what="storing a message",
                where=self._where,
                refused=self._refused,
                servers=servers,
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

    async def _send(self, servers: Servers, batch: list[Store]) -> list[Any]:
        """The store scripts of ``batch`` in one round trip per server, written and read
        directly (a pipeline object per batch costs more than the script). What a server
        did not run (NOSCRIPT, a cluster's MOVED, ASK or TRYAGAIN) goes again, in order,
        where it now belongs; the store script does nothing twice."""
        expiry_ms = int(self._expiry() * 1000)
        commands: list[bytes] = []
        streams: list[str] = []
        for item in batch:
            stream, seqs = self._keys.stream(item.queue)
            normal = not item.locals
            streams.append(stream)
            commands.append(
                _pack(
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
                        "1" if servers.sharded else "0",
                    )
                )
            )
        self.batches += 1
        results: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        asked: dict[int, Any] = {}  # index -> the node a half-moved slot sends it to
        until = time.monotonic() + self._deadline
        pause = 0.02
        while todo:
            # By server, and whether a half-moved slot sends them there.
            groups: dict[tuple[Any, bool], list[int]] = {}
            for index in todo:
                node = asked.get(index)
                place = (
                    (node, True)
                    if node is not None
                    else (await servers.node_of(streams[index]), False)
                )
                groups.setdefault(place, []).append(index)
            runs = [
                self._run_on(servers, node, [commands[i] for i in indexes], asking)
                for (node, asking), indexes in groups.items()
            ]
            # One server (the usual case): no task per batch.
            answers = [await runs[0]] if len(runs) == 1 else await asyncio.gather(*runs)
            todo, asked, wait = [], {}, False
            for indexes, replies in zip(groups.values(), answers, strict=True):
                for index, reply in zip(indexes, replies, strict=True):
                    results[index] = reply
                    if not isinstance(reply, Exception):
                        continue
                    if servers.redirected(reply):
                        todo.append(index)
                    elif _is_ask(reply):
                        asked[index] = reply.node_addr  # type: ignore[attr-defined]
                        todo.append(index)
                    elif servers.may_retry(reply):
                        todo.append(index)
                        wait = True
            todo.sort()
            if todo and not wait:
                await self._let_go_of_others(servers)
            if todo and wait:
                if time.monotonic() + pause > until:
                    break  # given up: those answer with the error they had
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
        return results

    async def _run_on(
        self, servers: Servers, node: Any, commands: list[bytes], asking: bool
    ) -> list[Any]:
        """``commands`` on ``node``'s server in one round trip: each answer, or the error
        it answered with (after ``ASKING`` each, for a slot being imported there)."""
        from redis.exceptions import ResponseError

        client = servers.client_of(node)
        pool = client.connection_pool
        asking_prefix = _pack(("ASKING",)) if asking else b""
        data = b"".join(asking_prefix + command for command in commands)
        for attempt in range(2):
            conn = await self._connection(node, pool)
            try:
                await conn.send_packed_command(data, check_health=False)
                results: list[Any] = []
                for _ in commands:
                    try:
                        if asking:
                            await conn.read_response(disable_decoding=True)
                        results.append(await conn.read_response(disable_decoding=True))
                    except ResponseError as exc:
                        results.append(exc)
            except BaseException as exc:
                self.retries += 1
                closed_under_us = isinstance(exc, AttributeError) and not conn.is_connected
                await conn.disconnect()
                if closed_under_us:
                    # drop_connection() closed it under this batch (the primary moved):
                    # redis-py then finds its stream gone. Sent again, like any failure.
                    from redis.exceptions import ConnectionError

                    raise ConnectionError("the connection was closed while in use") from exc
                raise
            finally:
                if not self._own:
                    await pool.release(conn)
            if attempt == 0 and any(is_noscript(r) for r in results if isinstance(r, Exception)):
                await load_scripts(client)
                continue
            return results
        return results

    async def _let_go_of_others(self, servers: Servers) -> None:
        """Close connections to servers that hold no keys now (a demoted primary)."""
        for node in [node for node in self._conns if not servers.serves(node)]:
            _pool, conn = self._conns.pop(node)
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def drop_connection(self) -> None:
        """Close the writer's connections (the primary moved); the next batch opens one."""
        for _pool, conn in list(self._conns.values()):
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _connection(self, node: Any, pool: Any) -> Any:
        if not self._own:
            return await pool.get_connection()
        kept = self._conns.get(node)
        if kept is None or kept[0] is not pool:
            if kept is not None:  # that server's pool was closed and made again
                with contextlib.suppress(Exception):
                    await kept[1].disconnect()
            kept = self._conns[node] = (pool, pool.make_connection())
        conn = kept[1]
        if not conn.is_connected:
            await conn.connect()
        return conn


def _is_ask(error: BaseException) -> bool:
    from redis.exceptions import AskError

    return isinstance(error, AskError)


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
