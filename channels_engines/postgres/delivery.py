"""Taking rows from the message table into this process's mailbox, each message once.

A claim deletes rows in a transaction that commits only after they were read, so a
connection that dies mid-claim loses nothing: uncommitted, the rows come back. What can
come back is what was already delivered, so:

- From a queue of this process's own channels (one claimer: this process), rows are
  delivered as soon as they are read, then the claim commits. A row that comes back, or
  a second copy stored by a retried send, carries a (sender, sequence number) this
  process has already delivered for that queue, and is dropped. Rows of one sender leave
  a queue in the order it stored them, so the latest number delivered per sender is all
  there is to remember.
- From a queue shared with other processes (a normal channel), rows are delivered only
  once the claim has committed; the claim leaves their keys in a ledger table, which
  settles whether it committed when the answer to COMMIT is lost.

Bad rows (written by another program or role) are skipped and counted, never delivered
and never allowed to fail the rest of their batch. Rows claimed before a flush that this
process had not yet heard of are dropped when it does (the flush epoch).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..events import Events
from ..mailbox import Mailbox
from ..validation import non_local_name, require_channel_name
from .deadlines import QueryTimeout, end_backend, fetch, outcome_unknown, within
from .schema import Statements
from .sending import ConnectionContext

__all__ = ["Delivery", "Inbox"]

logger = logging.getLogger("channels_engines.postgres")

# Rows claimed per query from a process-specific queue; the claim repeats while full.
_CLAIM_BATCH = 256
# Bad rows are reported at most this often (seconds); every one is counted.
_WARN_EVERY = 60.0

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


@dataclass
class Inbox:
    """What every event loop's engine of one layer shares in a process to receive."""

    mailbox: Mailbox = field(default_factory=Mailbox)
    lock: threading.Lock = field(default_factory=threading.Lock)
    claiming: set[str] = field(default_factory=set)
    claim_again: set[str] = field(default_factory=set)
    #: Own queues whose claim stopped because the mailbox held their capacity.
    backlog: set[str] = field(default_factory=set)
    #: (queue, sender) -> (latest sequence number delivered, when).
    seen: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    #: The latest flush epoch this process has seen (None: none yet).
    epoch: int | None = None
    last_warning: float = 0.0

    def start_claim(self, queue: str) -> bool:
        """True if the caller should claim ``queue``; else the running claim repeats."""
        with self.lock:
            if queue in self.claiming:
                self.claim_again.add(queue)
                return False
            self.claiming.add(queue)
            return True

    def finish_claim(self, queue: str, *, again: bool) -> bool:
        """True if the claim must run once more (more rows, or a wake-up meanwhile)."""
        with self.lock:
            if again or queue in self.claim_again:
                self.claim_again.discard(queue)
                return True
            self.claiming.discard(queue)
            return False

    def abandon_claim(self, queue: str) -> None:
        with self.lock:
            self.claiming.discard(queue)
            self.claim_again.discard(queue)

    def apply_epoch(self, epoch: int) -> bool:
        """Note a flush epoch; drop what was claimed before it. False if ``epoch`` is older
        than what is known (rows claimed with it were flushed). Call with ``lock`` held."""
        if self.epoch is None or epoch > self.epoch:
            if self.epoch is not None:
                self.mailbox.clear()
            self.epoch = epoch
            return True
        return epoch == self.epoch

    def forget_senders(self, older_than: float) -> None:
        """Forget senders not heard from since ``older_than`` (a monotonic time)."""
        with self.lock:
            stale = [key for key, (_, at) in self.seen.items() if at < older_than]
            for key in stale:
                del self.seen[key]


class Delivery:
    """Claims rows for one engine (event loop) into the process's :class:`Inbox`."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        statements: Statements,
        connection: ConnectionContext,
        owns: Callable[[str], bool],
        capacity_for: Callable[[str], int],
        events: Callable[[], Events],
        expiry: float,
        max_message_size: int,
        query_timeout: float,
        pool_timeout: float,
    ) -> None:
        self.inbox = inbox
        self._statements = statements
        self._connection = connection
        self._owns = owns
        self._capacity_for = capacity_for
        self._events = events
        self._expiry = expiry
        self._max_message_size = max_message_size
        self._query_timeout = query_timeout
        self._pool_timeout = pool_timeout
        # A session abandoned mid-claim may still hold its rows' locks until it ends.
        self._abandoned: set[int] = set()
        # Sessions given up on idle in their transaction are ended by the server.
        self._idle_ms = str(max(1000, int(query_timeout * 2000)))

    def wanted(self, queue: str) -> int:
        """How many rows of ``queue`` to claim now."""
        mailbox = self.inbox.mailbox
        if self._owns(queue):
            return min(_CLAIM_BATCH, self._capacity_for(queue) - mailbox.count(queue))
        return mailbox.unserved(queue)

    async def claim(self, queue: str, conn: Connection | None = None) -> None:
        """Claim rows of ``queue`` until nothing more is wanted; ``conn`` is the listener's
        connection, or None for a pooled one.

        Only one claim per queue runs in the process at a time (across event loops), so
        rows enter the mailbox in id order and channels keep their FIFO order.
        """
        inbox = self.inbox
        own = self._owns(queue)
        try:
            while True:
                limit = self.wanted(queue)
                claimed = await self._claim(queue, limit, own, conn) if limit > 0 else 0
                full = own and limit < _CLAIM_BATCH and claimed == limit
                if full:
                    with inbox.lock:
                        inbox.backlog.add(queue)
                # A full batch may have left more (for a shared queue: bad or duplicate
                # rows may have taken the places of messages that receivers still wait for).
                again = claimed == limit > 0 and (not own or limit == _CLAIM_BATCH)
                if not inbox.finish_claim(queue, again=again):
                    return
        except BaseException:
            inbox.abandon_claim(queue)
            raise

    def room_again(self, queue: str) -> bool:
        """After a receive from ``queue``: whether a claim should fetch what was left in
        the table when the mailbox was full."""
        inbox = self.inbox
        with inbox.lock:
            if queue not in inbox.backlog:
                return False
            if inbox.mailbox.count(queue) * 2 > self._capacity_for(queue):
                return False
            inbox.backlog.discard(queue)
            return True

    async def read_epoch(self, conn: Connection) -> None:
        """Read the flush epoch (a flush was announced, or may have been missed)."""
        rows = await fetch(
            conn,
            self._statements.flush_epoch,
            None,
            timeout=self._query_timeout,
            what="reading the flush epoch",
        )
        if rows:
            with self.inbox.lock:
                self.inbox.apply_epoch(int(rows[0][0]))

    def flushed(self, epoch: int) -> None:
        """This process flushed the layer, moving the epoch to ``epoch``."""
        with self.inbox.lock:
            self.inbox.apply_epoch(epoch)

    # Claiming ------------------------------------------------------------------------

    async def _claim(self, queue: str, limit: int, own: bool, conn: Connection | None) -> int:
        if conn is not None:
            return await self._claim_on(conn, queue, limit, own)
        async with self._connection(self._pool_timeout) as pooled:
            return await self._claim_on(pooled, queue, limit, own)

    async def _claim_on(self, conn: Connection, queue: str, limit: int, own: bool) -> int:
        timeout = self._query_timeout
        await self._end_abandoned(conn)
        pid = conn.info.backend_pid
        statement = self._statements.claim_own if own else self._statements.claim_shared
        parameters = {
            "queue": queue,
            "limit": limit,
            "idle_ms": self._idle_ms,
            "max_size": self._max_message_size,
        }
        try:
            rows = await within(
                conn, _begin_and_fetch(conn, statement, parameters), timeout, "a claim"
            )
        except BaseException as exc:
            self._note_abandoned(exc, conn, pid)
            await _roll_back(conn, timeout)
            raise
        if own:
            # Delivered before the commit: if it does not commit, the rows come back and
            # are dropped as already delivered.
            self._deliver(queue, rows, own=True)
            try:
                await within(conn, conn.execute("COMMIT"), timeout, "a claim's commit")
            except BaseException as exc:
                self._note_abandoned(exc, conn, pid)
                raise
            return len(rows)
        try:
            await within(conn, conn.execute("COMMIT"), timeout, "a claim's commit")
        except Exception as exc:
            if not outcome_unknown(exc, conn):
                raise
            if not await self._committed(queue, rows, pid, exc):
                raise
        self._deliver(queue, rows, own=False)
        return len(rows)

    async def _committed(
        self, queue: str, rows: Sequence[tuple[Any, ...]], pid: int, error: Exception
    ) -> bool:
        """Whether a shared claim whose COMMIT went unanswered committed: its session is
        ended first, so that the ledger's answer is final."""
        keys = [(_ledger_sender(row), int(row[5])) for row in rows]
        if not keys:
            return True
        async with self._connection(self._pool_timeout) as conn:
            if getattr(error, "sqlstate", None) not in ("57P01", "57P02"):
                if isinstance(error, QueryTimeout) and error.backend_pid:
                    pid = error.backend_pid
                await end_backend(conn, pid, self._pool_timeout)
            found = await fetch(
                conn,
                self._statements.claimed_count,
                {
                    "queue": queue,
                    "senders": [sender for sender, _ in keys],
                    "seqs": [seq for _, seq in keys],
                },
                timeout=self._query_timeout,
                what="checking a claim",
            )
        return bool(found and found[0][0])

    async def _end_abandoned(self, conn: Connection) -> None:
        for pid in list(self._abandoned):
            self._abandoned.discard(pid)
            with contextlib.suppress(psycopg.OperationalError):
                await end_backend(conn, pid, self._query_timeout)

    def _note_abandoned(self, exc: BaseException, conn: Connection, pid: int) -> None:
        if isinstance(exc, QueryTimeout) and exc.backend_pid:
            self._abandoned.add(exc.backend_pid)
        elif conn.closed and pid:
            self._abandoned.add(pid)

    # Delivering ----------------------------------------------------------------------

    def _deliver(self, queue: str, rows: Sequence[tuple[Any, ...]], *, own: bool) -> None:
        """Put good, new rows into the mailbox; count the rest."""
        if not rows:
            return
        inbox = self.inbox
        events = self._events()
        now = time.monotonic()
        items = []
        invalid = oversized = duplicates = flushed = 0
        with inbox.lock:
            epoch = rows[0][6]
            if epoch is not None and not inbox.apply_epoch(int(epoch)):
                flushed = len(rows)
                rows = ()
            for _, channels, payload, ttl, sender, seq, _, fresh, size, _ in rows:
                if payload is None and size is not None:
                    # Over max_message_size: what the layer counts as undecodable.
                    oversized += 1
                    self._report(queue, f"a payload of {size:,} bytes, over max_message_size")
                    continue
                problem = self._problem(queue, channels, payload, ttl)
                if problem is not None:
                    invalid += 1
                    self._report(queue, problem)
                    continue
                if not fresh:
                    duplicates += 1
                    continue
                if own and sender:
                    key = (queue, int(sender))
                    latest = inbox.seen.get(key)
                    if latest is not None and int(seq) <= latest[0]:
                        duplicates += 1
                        continue
                    inbox.seen[key] = (int(seq), now)
                expires_at = now + min(float(ttl), self._expiry)
                items.append((channels, bytes(payload), expires_at))
            inbox.mailbox.put_many(items)
        events.count("receive.invalid_row", invalid)
        events.count("receive.undecodable", oversized)
        events.count("receive.duplicate", duplicates)
        events.count("receive.flushed", flushed)

    def _problem(self, queue: str, channels: Any, payload: Any, ttl: Any) -> str | None:
        if not isinstance(channels, list) or not channels:
            return "no channels"
        for channel in channels:
            try:
                require_channel_name(channel)
            except TypeError:
                return "an invalid channel name"
            if non_local_name(channel) != queue:
                return "a channel that does not belong to its queue"
        if not isinstance(payload, (bytes, memoryview)):
            return "no payload"
        try:
            if not math.isfinite(float(ttl)):
                return "an expiry that is not finite"
        except (TypeError, ValueError, OverflowError):
            return "an expiry that is not a number"
        return None

    def _report(self, queue: str, problem: str) -> None:
        now = time.monotonic()
        inbox = self.inbox
        if now - inbox.last_warning >= _WARN_EVERY:
            inbox.last_warning = now
            logger.warning(
                "Skipped a row of queue %r in the message table: it has %s. It was not "
                "written by this layer (another program or role writes to its tables, or "
                "a process with a larger max_message_size); every such row is counted "
                "(receive.invalid_row, receive.undecodable for oversized payloads).",
                queue,
                problem,
            )


async def _begin_and_fetch(
    conn: Connection, statement: str, parameters: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """BEGIN, then the claim. (Sending both in one simple query would save a round trip
    but put the queue's name into the SQL text, where names never go.)"""
    await conn.execute("BEGIN")
    cursor = await conn.execute(statement, parameters)
    return await cursor.fetchall()


async def _roll_back(conn: Connection, timeout: float) -> None:
    """End a claim's transaction that failed on a connection that still works."""
    if conn.closed or conn.broken:
        return
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(Exception):
            await within(conn, conn.execute("ROLLBACK"), timeout, "ending a failed claim")


def _ledger_sender(row: tuple[Any, ...]) -> int:
    """The sender under which a shared claim recorded ``row`` in the ledger."""
    return int(row[4]) or -int(row[0])
