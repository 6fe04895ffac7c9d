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

A server out of memory (``maxmemory`` under ``noeviction``) refuses a store script at its
first write, so such a message is refused whole, like one at capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..senders import Sender
from .calls import call, is_noscript, load_scripts, out_of_memory
from .keys import STORE, Keys
from .servers import Servers, redirection

if TYPE_CHECKING:
    from .notes import Notary

__all__ = ["Outcome", "Store", "Writer"]

#: What became of a message: stored, refused at its queue's capacity, or refused by a
#: server with no memory left.
Outcome = Literal["stored", "full", "no memory"]

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
    future: asyncio.Future[Outcome] | None = field(default=None, init=False)

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
        self._queue_parts: dict[str, tuple[str, bytes]] = {}
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
        #: Store scripts run: one per queue per pipeline (for tests).
        self.scripts = 0

    async def store(self, items: list[Store]) -> list[Outcome]:
        """Store ``items``; for each, what became of it."""
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
                if out_of_memory(result):
                    item.future.set_result("no memory")
                else:
                    item.future.set_exception(result)
            else:
                item.future.set_result("stored" if result != 0 else "full")

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
        """The messages of ``batch``: one store script per queue, with all of that queue's
        messages (one announcement for them all), in one round trip per server, written
        and read directly (a pipeline object per batch costs more than the scripts). What a
        server did not run (NOSCRIPT, a cluster's MOVED, ASK or TRYAGAIN) goes again, in
        order, where it now belongs; the store script does nothing twice."""
        # Each queue's messages, in the order of their sequence numbers.
        queues: dict[str, list[int]] = {}
        for index, item in enumerate(batch):
            queues.setdefault(item.queue, []).append(index)
        common = _arg(int(self._expiry() * 1000)) + _arg(self.sender.id)
        sharded = b"$1\r\n1\r\n" if servers.sharded else b"$1\r\n0\r\n"
        units = list(queues.values())
        commands: list[bytes] = []
        streams: list[str] = []
        for indexes in units:
            first = batch[indexes[0]]
            stream, queue_part = self._queue_part(first.queue)
            normal = not first.locals
            streams.append(stream)
            parts = [
                b"*%d\r\n" % (11 + 4 * len(indexes)),
                _STORE_HEAD,
                queue_part,
                _arg(first.capacity),
                common,
                _arg(self._keys.wake(first.queue) if normal else self._keys.note(first.queue)),
                b"$1\r\n1\r\n" if normal else b"$1\r\n0\r\n",
                sharded,
            ]
            for index in indexes:
                item = batch[index]
                parts += (_arg(item.seq), _arg(item.locals), _arg(item.payload), _arg(item.note))
            commands.append(b"".join(parts))
        self.batches += 1
        self.scripts += len(units)
        replies: list[Any] = [None] * len(units)
        todo = list(range(len(units)))
        asked: dict[int, Any] = {}  # unit -> the node a half-moved slot sends it to
        until = time.monotonic() + self._deadline
        pause = 0.02
        while todo:
            # By server, and whether a half-moved slot sends them there.
            groups: dict[tuple[Any, bool], list[int]] = {}
            for unit in todo:
                node = asked.get(unit)
                place = (
                    (node, True)
                    if node is not None
                    else (await servers.node_of(streams[unit]), False)
                )
                groups.setdefault(place, []).append(unit)
            runs = [
                self._run_on(servers, node, [commands[u] for u in members], asking)
                for (node, asking), members in groups.items()
            ]
            # One server (the usual case): no task per batch.
            answers = [await runs[0]] if len(runs) == 1 else await asyncio.gather(*runs)
            todo, asked, wait = [], {}, False
            for members, answered in zip(groups.values(), answers, strict=True):
                for unit, reply in zip(members, answered, strict=True):
                    replies[unit] = reply
                    if not isinstance(reply, Exception):
                        continue
                    found = redirection(reply)
                    if servers.redirected(reply):
                        todo.append(unit)
                    elif found is not None and found[0] == "ASK":
                        asked[unit] = found[2]
                        todo.append(unit)
                    elif servers.may_retry(reply):
                        todo.append(unit)
                        wait = True
            todo.sort()
            if todo and not wait:
                await self._let_go_of_others(servers)
            if todo and wait:
                if time.monotonic() + pause > until:
                    break  # given up: those answer with the error they had
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
        results: list[Any] = [None] * len(batch)
        for indexes, reply in zip(units, replies, strict=True):
            for position, index in enumerate(indexes):
                results[index] = reply if isinstance(reply, Exception) else reply[position]
        return results

    def _queue_part(self, queue: str) -> tuple[str, bytes]:
        """A queue's stream, and its stream and sequence hash as packed arguments."""
        found = self._queue_parts.get(queue)
        if found is None:
            if len(self._queue_parts) >= _QUEUE_PARTS:
                self._queue_parts.clear()
            stream, seqs = self._keys.stream(queue)
            found = self._queue_parts[queue] = (stream, _arg(stream) + _arg(seqs))
        return found

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
                # The writer's own connections have no socket timeout (redis-py would run
                # every write in a task of its own to apply it): one deadline per batch.
                async with _deadline(self._own and pool.connection_kwargs.get("socket_timeout")):
                    if not conn.is_connected:
                        await conn.connect()
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
            untimed = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
            kept = self._conns[node] = (pool, untimed)
        return kept[1]


def _deadline(seconds: float | bool | None) -> Any:
    """A deadline for the block (none for None or False)."""
    if not seconds:
        return contextlib.nullcontext()
    if sys.version_info >= (3, 11):
        return asyncio.timeout(seconds)
    from async_timeout import timeout  # type: ignore[import-not-found,unused-ignore]

    return timeout(seconds)


def _arg(value: str | bytes | int) -> bytes:
    """One argument of a command in RESP (str, int or bytes)."""
    if isinstance(value, str):
        value = value.encode()
    elif isinstance(value, int):
        value = b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _pack(args: tuple[str | bytes | int, ...]) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(_arg(arg) for arg in args)


# What every store command starts with, after its length: EVALSHA, the script, two keys.
_STORE_HEAD = _arg("EVALSHA") + _arg(STORE.sha) + _arg(2)
# Queues whose packed key names are kept (then forgotten all at once).
_QUEUE_PARTS = 10_000
