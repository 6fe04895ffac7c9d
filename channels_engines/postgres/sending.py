"""What the engine writes: messages and memberships, gathered into batches, one at a time.

Concurrent calls on one event loop join the batch that follows the one in flight, so a
busy loop sends hundreds of messages per round trip, and a call that finds nothing in
flight is sent at once, without a task hand-off. Batches run strictly one after another,
so everything one writer stores commits in the order of its sequence numbers.

Each message is stored under the writer's sender id and a sequence number. When the
connection breaks while a batch is in flight, the server may have committed it and lost
only the answer; the batch is then sent again on a fresh connection, marked as a retry:
rows already stored or already claimed from a shared queue are not stored twice, and a
process that received the first copy from its own queue drops the second by its sequence
number (:mod:`.delivery`). So a call whose connection dies returns normally, and the
message arrives once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from ..senders import Sender, Senders
from .deadlines import (
    QueryTimeout,
    ServerReadOnly,
    end_backend,
    fetch,
    outcome_unknown,
    read_only,
)
from .schema import Statements

if TYPE_CHECKING:
    from .notes import Notary

__all__ = ["SendNotConfirmed", "Sender", "Senders", "Writer"]

# Calls gathered into one batch at most.
_BATCH = 500
# Back-off between attempts to confirm a batch (seconds): doubling, with jitter.
_RETRY_FIRST = 0.02
_RETRY_MAX = 0.5
# SQLSTATEs of a server session that is certainly gone: no need to end it first.
_SESSION_ENDED = frozenset({"57P01", "57P02"})

Connection = psycopg.AsyncConnection[tuple[Any, ...]]
ConnectionContext = Callable[[float], contextlib.AbstractAsyncContextManager[Connection]]


class SendNotConfirmed(psycopg.OperationalError):
    """A write whose outcome could not be learnt before its deadline."""


@dataclass(eq=False)
class _Call:
    future: asyncio.Future[Any] | None = field(default=None, init=False)

    def cancelled(self) -> bool:
        """Abandoned by its caller before it was sent (then it is never sent)."""
        return self.future is not None and self.future.done()

    def resolve(self, result: Any) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(exc)


@dataclass(eq=False)
class _Message(_Call):
    """A direct send (``queue`` set) or a group send (``queue`` None, ``target`` a group)."""

    target: str
    payload: bytes
    queue: str | None = None
    listen: str | None = None
    capacity: int | None = None
    seq: int = 0
    note: str = ""


@dataclass(eq=False)
class _Membership(_Call):
    add: bool
    group: str
    channel: str
    queue: str = ""
    listen: str = ""
    capacity: int = 0
    expiry: float | None = None


class Writer:
    """Stores one event loop's messages and memberships, one batch at a time.

    ``connection(timeout)`` gives a pooled connection (waiting at most ``timeout``);
    ``query_timeout`` bounds every round trip and ``deadline`` a whole call, retries
    included.
    """

    def __init__(
        self,
        *,
        connection: ConnectionContext,
        statements: Statements,
        sender: Sender,
        own: str,
        expiry: Callable[[], float],
        query_timeout: float,
        deadline: float,
    ) -> None:
        self._connection = connection
        self._statements = statements
        self.sender = sender
        self._own = own
        self._expiry = expiry
        self._query_timeout = query_timeout
        self._deadline = deadline
        self._pending: list[_Call] = []
        self._busy = False
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        #: Writes notes (messages inside notifications) for process-specific channels;
        #: None when the layer does not seal messages.
        self.notary: Notary | None = None
        #: Batches stored, and attempts repeated because an answer was lost (for tests
        #: and stats).
        self.batches = 0
        self.retries = 0

    async def send(
        self, queue: str, channel: str, listen: str, capacity: int, payload: bytes
    ) -> bool:
        """Store a message for ``channel``; False if its queue is at capacity."""
        accepted: bool = await self._submit(
            _Message(target=channel, payload=payload, queue=queue, listen=listen, capacity=capacity)
        )
        return accepted

    async def group_send(self, group: str, stream: str, payload: bytes) -> tuple[int, int]:
        """Store a message for every member of ``group`` (``stream``: the LISTEN identifier
        of its stream): (receiving queues and streams, accepted)."""
        counts: tuple[int, int] = await self._submit(
            _Message(target=group, payload=payload, listen=stream)
        )
        return counts

    async def group_add(
        self, group: str, channel: str, queue: str, listen: str, capacity: int, expiry: float | None
    ) -> int:
        """Store a membership; the last message of the group's stream when it joined."""
        joined: int = await self._submit(
            _Membership(
                add=True,
                group=group,
                channel=channel,
                queue=queue,
                listen=listen,
                capacity=capacity,
                expiry=expiry,
            )
        )
        return joined

    async def group_discard(self, group: str, channel: str) -> None:
        await self._submit(_Membership(add=False, group=group, channel=channel))

    async def close(self) -> None:
        """Finish the batch in flight; calls still queued fail."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await flusher
        pending, self._pending = self._pending, []
        for call in pending:
            call.fail(RuntimeError("the channel layer was closed"))

    # Batching ------------------------------------------------------------------------

    async def _submit(self, call: _Call) -> Any:
        if self._closed:
            raise RuntimeError("the channel layer was closed")
        if self._busy:
            # A batch is in flight: join the next one.
            call.future = asyncio.get_running_loop().create_future()
            self._pending.append(call)
            return await call.future
        # Nothing in flight: send right here, without a task hand-off.
        self._busy = True
        try:
            results = await self._run([call])
        finally:
            self._busy = False
            self._start_flusher()
        result = results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _start_flusher(self) -> None:
        if self._pending and not self._busy and not self._closed:
            self._busy = True
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = [call for call in self._pending[:_BATCH] if not call.cancelled()]
                del self._pending[:_BATCH]
                if not batch:
                    continue
                for call, result in zip(batch, await self._run(batch), strict=True):
                    if isinstance(result, BaseException):
                        call.fail(result)
                    else:
                        call.resolve(result)
        finally:
            self._busy = False
            self._flusher = None
            self._start_flusher()

    async def _run(self, batch: Sequence[_Call]) -> list[Any]:
        """Store ``batch``: memberships first, then messages; a result or error per call."""
        self.batches += 1
        results: dict[_Call, Any] = {}
        memberships = [call for call in batch if isinstance(call, _Membership)]
        messages = [call for call in batch if isinstance(call, _Message)]
        if memberships:
            try:
                joined = await self._confirmed(lambda conn, retry: self._members(conn, memberships))
            except Exception as exc:
                results.update((call, exc) for call in memberships)
            else:
                results.update(
                    (call, joined.get((call.group, call.channel), 0)) for call in memberships
                )
        if messages:
            expires_at = time.time() + self._expiry()
            for message in messages:
                message.seq = self.sender.take()
                if self.notary is not None and message.queue != message.target:
                    # Process-specific, or a group's stream: the receiving processes can
                    # take it from the notification.
                    message.note = self.notary.write(
                        message.listen or "",
                        message.target,
                        self.sender.id,
                        message.seq,
                        expires_at,
                        message.payload,
                    )
            for part in _one_per_group(messages):

                async def store(conn: Connection, retry: bool, part: list[_Message] = part) -> Any:
                    return await self._messages(conn, part, retry)

                try:
                    counts = await self._confirmed(store)
                except Exception as exc:
                    results.update((call, exc) for call in part)
                else:
                    for message, (queues, accepted) in zip(part, counts, strict=True):
                        direct = message.queue is not None
                        results[message] = accepted > 0 if direct else (queues, accepted)
        return [results[call] for call in batch]

    # Statements ----------------------------------------------------------------------

    async def _members(
        self, conn: Connection, calls: Sequence[_Membership]
    ) -> dict[tuple[str, str], int]:
        latest: dict[tuple[str, str], _Membership] = {}
        for call in calls:  # the last call for a key wins
            latest.pop((call.group, call.channel), None)
            latest[(call.group, call.channel)] = call
        adds = [call for call in latest.values() if call.add]
        discards = [call for call in latest.values() if not call.add]
        timeout = self._query_timeout
        joined: dict[tuple[str, str], int] = {}
        if adds:
            rows = await fetch(
                conn,
                self._statements.group_add,
                {
                    "groups": [call.group for call in adds],
                    "channels": [call.channel for call in adds],
                    "queues": [call.queue for call in adds],
                    "listens": [call.listen for call in adds],
                    "capacities": [call.capacity for call in adds],
                    "expiries": [call.expiry for call in adds],
                    "own": self._own,
                },
                timeout=timeout,
                what="group_add()",
            )
            joined = {(row[0], row[1]): int(row[2]) for row in rows}
        if discards:
            await fetch(
                conn,
                self._statements.group_discard,
                {
                    "groups": [call.group for call in discards],
                    "channels": [call.channel for call in discards],
                    "own": self._own,
                },
                timeout=timeout,
                what="group_discard()",
            )
        return joined

    async def _messages(
        self, conn: Connection, calls: Sequence[_Message], retry: bool
    ) -> list[tuple[int, int]]:
        statements = self._statements
        timeout = self._query_timeout
        first = calls[0]
        if len(calls) == 1 and first.queue is not None and not retry:
            rows = await fetch(
                conn,
                statements.send_one,
                {
                    "queue": first.queue,
                    "channel": first.target,
                    "payload": first.payload,
                    "capacity": first.capacity,
                    "listen": first.listen,
                    "expiry": self._expiry(),
                    "sender": self.sender.id,
                    "seq": first.seq,
                    "note": first.note,
                },
                timeout=timeout,
                what="send()",
            )
            return [(1, 1 if rows else 0)]
        rows = await fetch(
            conn,
            statements.write_retry if retry else statements.write,
            {
                "targets": [call.target for call in calls],
                "queues": [call.queue for call in calls],
                "listens": [call.listen for call in calls],
                "capacities": [call.capacity for call in calls],
                "payloads": [call.payload for call in calls],
                "seqs": [call.seq for call in calls],
                "notes": [call.note for call in calls],
                "expiry": self._expiry(),
                "sender": self.sender.id,
            },
            timeout=timeout,
            what="a batch of sends" if len(calls) > 1 else "group_send()",
        )
        return [(int(row[1]), int(row[2])) for row in rows]

    # Confirmation --------------------------------------------------------------------

    async def _confirmed(self, work: Callable[[Connection, bool], Awaitable[Any]]) -> Any:
        """Run ``work`` until its outcome is known: done, or failed without committing.

        If the connection breaks under it, the server session is ended (so that it cannot
        commit later) and ``work`` runs again on a fresh connection, as a retry, until the
        call's deadline. A session that can only read wrote nothing: ``work`` runs again
        on a fresh one (after a failover, on the new primary), until the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline
        failure: BaseException | None = None  # why the latest attempt's outcome is unknown
        abandoned: int | None = None  # a server session that may still commit it
        refused: BaseException | None = None  # the latest refusal of a read-only session
        delay = _RETRY_FIRST
        while True:
            retry = failure is not None
            remaining = deadline - loop.time()
            if retry and remaining <= 0:
                raise SendNotConfirmed(
                    "the server did not confirm a write before the deadline "
                    f"(CONFIG['pool_timeout'], {self._deadline:g} s) and the connection "
                    "broke while it was in flight: it may or may not have been stored "
                    f"({_reason(failure)})"
                ) from failure
            if refused is not None and remaining <= 0:
                raise ServerReadOnly(refused, seconds=self._deadline) from refused
            attempt = _Attempt()
            try:
                async with self._connection(max(remaining, 0.001)) as conn:
                    if abandoned is not None:
                        # The abandoned session must not commit behind the retry's back.
                        await end_backend(conn, abandoned, self._query_timeout)
                        abandoned = None
                    attempt.pid = conn.info.backend_pid
                    try:
                        return await work(conn, retry)
                    except Exception as exc:
                        attempt.unknown = outcome_unknown(exc, conn)
                        raise
            except Exception as exc:
                if attempt.unknown:
                    failure = exc
                    if getattr(exc, "sqlstate", None) not in _SESSION_ENDED:
                        abandoned = attempt.pid
                        if isinstance(exc, QueryTimeout) and exc.backend_pid:
                            abandoned = exc.backend_pid
                elif read_only(exc):
                    refused = exc
                elif attempt.pid is not None or not retry or not _transient(exc):
                    # A definite failure of the write itself, or no connection at all
                    # before anything was sent: the caller learns it now.
                    raise
            self.retries += 1
            pause = min(delay, max(deadline - loop.time(), 0.0))
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311
            delay = min(delay * 2, _RETRY_MAX)


@dataclass
class _Attempt:
    pid: int | None = None
    unknown: bool = False


def _transient(exc: BaseException) -> bool:
    """A failure to get a working connection while retrying: keep trying until the deadline."""
    return isinstance(exc, psycopg.OperationalError)


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_per_group(messages: Sequence[_Message]) -> list[list[_Message]]:
    """Consecutive parts of ``messages`` in which no group is sent to twice: a group's
    stream takes one message per statement."""
    parts: list[list[_Message]] = [[]]
    groups: set[str] = set()
    for message in messages:
        if message.queue is None:
            if message.target in groups:
                parts.append([])
                groups = set()
            groups.add(message.target)
        parts[-1].append(message)
    return parts
