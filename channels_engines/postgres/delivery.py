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
from .notes import Notary, Note
from .schema import Statements
from .sending import ConnectionContext

__all__ = ["Delivery", "Inbox"]

logger = logging.getLogger("channels_engines.postgres")

# Rows claimed per query from a process-specific queue; the claim repeats while full.
_CLAIM_BATCH = 256
# Rows of delivered notes deleted per statement.
_REAP_BATCH = 1000
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
    #: Notes (None for a wake-up) that arrived while their queue was being claimed.
    held: dict[str, list[Note | None]] = field(default_factory=dict)
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

    def abandon_claim(self, queue: str) -> None:
        """A claim failed: notes held for it are dropped, their rows stay for the next."""
        with self.lock:
            self.claiming.discard(queue)
            self.claim_again.discard(queue)
            self.held.pop(queue, None)

    def apply_epoch(self, epoch: int) -> bool:
        """Note a flush epoch; drop what was claimed before it. False if ``epoch`` is older
        than what is known (rows claimed with it were flushed). Call with ``lock`` held."""
        if self.epoch is None or epoch > self.epoch:
            if self.epoch is not None:
                self.mailbox.clear()
                # Notes waiting for a claim were sent before the flush.
                self.held.clear()
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
        expiry: Callable[[], float],
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
        #: Reads notes (messages inside notifications); None when messages are not sealed.
        self.notary: Notary | None = None
        # (queue, sender, seq) of rows whose messages were delivered from notes.
        self._delivered: list[tuple[str, int, int]] = []
        self._last_forgery_warning = 0.0
        # The flush epoch as of the notifications this engine's listener has read: notes
        # are used only while it is the process's epoch.
        self.stream_epoch: int | None = None
        #: Messages delivered straight from their notification, and their rows deleted
        #: (for tests and stats).
        self.from_notes = 0
        self.reaped = 0

    def take_notes(self, queue: str, identifier: str, texts: Sequence[str]) -> bool:
        """Deliver the messages that these notifications for this process's own ``queue``
        carry. True if the queue must be claimed: a notification only woke it.

        While a claim of the queue runs, notes wait for it (a note must not overtake a
        row the claim is taking) and are delivered when it ends. When the mailbox is
        full, their rows stay in the table for a later claim.
        """
        notary = self.notary
        notes: list[Note | None] = []  # None: a wake-up, its row needs a claim
        forged = 0
        for text in texts:
            if not text or notary is None:
                notes.append(None)
                continue
            note = notary.read(identifier, text)
            if note is None or non_local_name(note.channel) != queue:
                forged += 1
                continue
            notes.append(note)
        if forged:
            self._forgeries(queue, forged)
        if not notes:
            return False
        inbox = self.inbox
        with inbox.lock:
            if queue in inbox.claiming:
                held = inbox.held.setdefault(queue, [])
                held.extend(notes)
                if len(held) > self._capacity_for(queue):
                    # More than fits: the claim runs again and takes their rows.
                    inbox.held[queue] = [None]
                return False
            if inbox.epoch is None or self.stream_epoch != inbox.epoch:
                # A flush this listener has not reached in its notifications yet (or
                # no epoch known at all): notes before it are of messages the flush
                # removed, so the table decides until then.
                return True
            if None in notes or queue in inbox.backlog:
                # Rows that only a claim can take come first; the notes' rows stay
                # in the table, and the claim takes them in order.
                return queue not in inbox.backlog
            counts = self._deliver_notes(queue, notes)  # type: ignore[arg-type]
        self._after_notes(*counts)
        return False

    def _deliver_notes(self, queue: str, notes: Sequence[Note]) -> tuple[Any, ...]:
        """Put notes into the mailbox (with ``inbox.lock`` held); counts for
        :meth:`_after_notes`."""
        inbox = self.inbox
        now, wall = time.monotonic(), time.time()
        delivered: list[tuple[str, int, int]] = []
        duplicates = expired = flushed = 0
        if queue in inbox.backlog:
            # The mailbox filled up: rows wait in the table, and the claim that takes
            # them once there is room must not be overtaken.
            return delivered, duplicates, expired, flushed
        room = self._capacity_for(queue) - inbox.mailbox.count(queue)
        items = []
        for note in notes:
            key = (queue, note.sender)
            latest = inbox.seen.get(key)
            if latest is not None and note.seq <= latest[0]:
                duplicates += 1
                continue
            ttl = min(note.expires_at - wall, self._expiry())
            if ttl <= 0:
                expired += 1  # its row expires too, and is cleaned up
                continue
            if room <= 0:
                # Full: the rest stay in the table until a receive makes room.
                inbox.backlog.add(queue)
                break
            room -= 1
            inbox.seen[key] = (note.seq, now)
            items.append(([note.channel], note.payload, now + ttl))
            delivered.append((queue, note.sender, note.seq))
        inbox.mailbox.put_many(items)
        return delivered, duplicates, expired, flushed

    def _after_notes(
        self, delivered: list[tuple[str, int, int]], duplicates: int, expired: int, flushed: int
    ) -> None:
        self._delivered.extend(delivered)
        events = self._events()
        self.from_notes += len(delivered)
        events.count("receive.duplicate", duplicates)
        events.count("receive.expired", expired)
        events.count("receive.flushed", flushed)

    def _finish_claim(self, queue: str, *, again: bool) -> bool:
        """End a round of a claim: True if it must run once more. Notes that arrived
        meanwhile are delivered now, unless one only woke the queue (then the claim
        runs again and takes their rows)."""
        inbox = self.inbox
        with inbox.lock:
            if again or queue in inbox.claim_again:
                inbox.claim_again.discard(queue)
                return True
            held = inbox.held.pop(queue, [])
            if None in held or (held and self.stream_epoch != inbox.epoch):
                return True
            counts = self._deliver_notes(queue, held) if held else None  # type: ignore[arg-type]
            inbox.claiming.discard(queue)
        if counts is not None:
            self._after_notes(*counts)
        return False

    async def reap(self, conn: Connection) -> None:
        """Delete the rows of the messages delivered from notes, in one statement, on the
        listener's connection (whose plain index scans mark the entries of rows deleted
        before as dead). A row left by a failure is claimed later and dropped as already
        delivered."""
        rows, self._delivered = self._delivered, []
        while rows:
            batch, rows = rows[:_REAP_BATCH], rows[_REAP_BATCH:]
            found = await fetch(
                conn,
                self._statements.reap,
                {
                    "queues": [queue for queue, _, _ in batch],
                    "senders": [sender for _, sender, _ in batch],
                    "seqs": [seq for _, _, seq in batch],
                },
                timeout=self._query_timeout,
                what="deleting delivered rows",
            )
            self.reaped += int(found[0][0]) if found else 0

    def _forgeries(self, queue: str, count: int) -> None:
        self._events().count("receive.forged_notification", count)
        now = time.monotonic()
        if now - self._last_forgery_warning >= _WARN_EVERY:
            self._last_forgery_warning = now
            logger.warning(
                "Ignored %d notification(s) for queue %r that carry a message but do not "
                "verify with this layer's keys. Either another database role sends "
                "notifications on the layer's names, or processes of this layer do not "
                "share SECRET_KEY or CONFIG['encryption_keys']. Nothing was delivered from "
                "them (receive.forged_notification counts them).",
                count,
                queue,
            )

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
                if not self._finish_claim(queue, again=again):
                    break
        except BaseException:
            inbox.abandon_claim(queue)
            raise
        if self._delivered:
            # Notes held for this claim were delivered as it ended: their rows go now.
            if conn is not None:
                await self.reap(conn)
            else:
                async with self._connection(self._pool_timeout) as pooled:
                    await self.reap(pooled)

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
        if not rows:
            return
        epoch = int(rows[0][0])
        with self.inbox.lock:
            self.inbox.apply_epoch(epoch)
            # This listener has read every notification sent before the epoch it read
            # (which may be older than what the process knows by now).
            self.stream_epoch = epoch

    def flushed(self, epoch: int) -> None:
        """This process flushed the layer, moving the epoch to ``epoch`` (notes are then
        used again once the listener reaches the flush's notification)."""
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
                # A second copy first: its first was delivered (or counted) already,
                # from this table or from its notification.
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
                expires_at = now + min(float(ttl), self._expiry())
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
