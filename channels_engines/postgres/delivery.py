"""Taking messages into this process's mailbox, each once and in order.

Messages of a process's own channels (``new_channel()``) reach it two ways: straight from
their notification (a *note*, see :mod:`.notes`), or from the table. Rows of its own
queues are claimed (deleted in a transaction), and rows of its groups' streams are read
after the last one it handled (see :mod:`.schema`); both are taken in one statement, a
*catch-up*, so that they are seen in one snapshot and delivered in id order. Only one
catch-up runs per process at a time, and notes that arrive meanwhile are held, in the
order they arrived, until it ends: a note never overtakes a row that came before it. A
message delivered twice (a note and then its row, a retried send, a claim whose commit
was lost) carries a (sender, sequence number) already delivered for its queue or stream,
and is dropped; rows of one sender come in the order it stored them, so the latest
number per sender is all there is to remember.

Rows of a queue shared with other processes (a normal channel) are claimed on their own
and delivered only once the claim has committed; the claim leaves their keys in a ledger
table, which settles whether it committed when the answer to COMMIT is lost.

Bad rows (written by another program or role) are skipped and counted, never delivered
and never allowed to fail the rest of their batch. Rows taken before a flush that this
process had not yet heard of are dropped when it does (the flush epoch).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from ..events import Events
from ..validation import non_local_name, require_channel_name
from .deadlines import QueryTimeout, end_backend, fetch, outcome_unknown, read_only, within
from .inbox import Inbox
from .notes import Notary, Note
from .schema import Statements
from .sending import ConnectionContext

__all__ = ["Delivery"]

logger = logging.getLogger("channels_engines.postgres")

# Rows claimed per query from a process-specific queue, and read per group stream; a
# catch-up repeats while one is full.
_CLAIM_BATCH = 256
_STREAM_BATCH = 1000
# Rows of delivered notes deleted per statement.
_REAP_BATCH = 1000
# Rows of delivered notes wait this long (seconds) to be deleted together, unless a
# queue's waiting rows reach a quarter of its capacity first: until deleted they count
# against senders' capacity checks.
REAP_DELAY = 0.02
# Bad rows and dropped group messages are reported at most this often (seconds).
_WARN_EVERY = 60.0
# What a notification that needs the table is marked with while held.
_TABLE = object()

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


class Delivery:
    """Takes messages for one engine (event loop) into the process's :class:`Inbox`."""

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
        # When the oldest of them was delivered (monotonic), and how many each queue has.
        self._delivered_since = 0.0
        self._undeleted: dict[str, int] = {}
        self._reap_now = False
        # When each kind of warning was last logged (monotonic seconds).
        self._warned: dict[str, float] = {}
        # The flush epoch as of the notifications this engine's listener has read: notes
        # are used only while it is the process's epoch.
        self.stream_epoch: int | None = None
        #: Messages delivered straight from their notification, group messages delivered
        #: from group streams, rows of delivered notes deleted (for tests and stats).
        self.from_notes = 0
        self.from_streams = 0
        self.reaped = 0

    # Notes -------------------------------------------------------------------------

    def take(self, notifications: Sequence[tuple[str, str, str]]) -> bool:
        """Deliver what these notifications of own queues and group streams carry, in
        order: ``(queue, identifier, payload)``. True if a catch-up must run: one only
        woke its queue, or could not be used; it and those after it are held for then.
        While a catch-up runs, everything is held."""
        if not notifications:
            return False
        inbox = self.inbox
        with inbox.lock:
            if inbox.catching_up or inbox.held:
                inbox.held.extend(notifications)
                # Held after a catch-up that failed: the next one takes them.
                return not inbox.catching_up
            return self._take(list(notifications))

    def _take(self, notifications: list[tuple[str, str, str]], covered: int = 0) -> bool:
        """:meth:`take` with ``inbox.lock`` held. The first ``covered`` notifications
        arrived before a catch-up that has just read the table: what they announce
        was in its snapshot, so they need no other."""
        inbox = self.inbox
        delivered: list[tuple[str, int, int]] = []
        counts = [0, 0, 0, 0, 0]  # duplicates, expired, from streams, dropped, forged
        for index, (queue, identifier, payload) in enumerate(notifications):
            if queue.startswith("#"):
                outcome = self._stream_note(queue, identifier, payload, counts)
            else:
                outcome = self._own_note(queue, identifier, payload, counts, delivered)
            if outcome is _TABLE and index >= covered:
                inbox.held.extend(notifications[index:])
                break
        self._counted(delivered, counts)
        return bool(inbox.held)

    def _own_note(
        self,
        queue: str,
        identifier: str,
        text: str,
        counts: list[int],
        delivered: list[tuple[str, int, int]],
    ) -> object:
        inbox = self.inbox
        if not text or self.notary is None:
            return _TABLE  # a wake-up: its row is in the table
        note = self.notary.read(identifier, text)
        if note is None or non_local_name(note.channel) != queue:
            counts[4] += 1
            self._forgeries(queue)
            return None
        if not self._epoch_known():
            return _TABLE
        latest = inbox.seen.get((queue, note.sender))
        if latest is not None and note.seq <= latest[0]:
            return None  # its row was taken from the table first
        if queue in inbox.backlog:
            return None  # the mailbox was full: its row waits in the table
        ttl = min(note.expires_at - time.time(), self._expiry())
        if ttl <= 0:
            counts[1] += 1  # its row expires too, and is cleaned up
            return None
        if inbox.mailbox.count(queue) >= self._capacity_for(queue):
            # Full: this row and later ones wait until a receive makes room.
            inbox.backlog.add(queue)
            return None
        now = time.monotonic()
        inbox.seen[(queue, note.sender)] = (note.seq, now)
        inbox.mailbox.put([note.channel], note.payload, now + ttl)
        inbox.noted.add((queue, note.sender, note.seq))
        delivered.append((queue, note.sender, note.seq))
        return None

    def _stream_note(self, queue: str, identifier: str, text: str, counts: list[int]) -> object:
        """A group stream's notification is ``prev:last:note``: the stream's message before
        it, its own id, and the note (empty when it did not fit). ``prev`` and ``last``
        come from the server, unsigned, so a note is used only if its (sender, sequence
        number) is new and ``prev`` is where this process stands: a replayed note
        changes nothing."""
        inbox = self.inbox
        prev_text, _, rest = text.partition(":")
        last_text, _, body = rest.partition(":")
        try:
            prev, last = int(prev_text), int(last_text)
        except ValueError:
            counts[4] += 1
            self._forgeries(queue)
            return None
        note: Note | None = None
        if body and self.notary is not None:
            note = self.notary.read(identifier, body)
            if note is None or f"#{note.channel}" != queue:
                counts[4] += 1
                self._forgeries(queue)
                return None
        cursor = inbox.cursors.get(queue)
        if cursor is None:
            return None  # not (or no longer) followed
        if note is not None:
            latest = inbox.seen.get((queue, note.sender))
            if latest is not None and note.seq <= latest[0]:
                return None  # read from the table first, or replayed
        if last <= cursor and note is None:
            return None  # read from the table already
        if note is None or prev != cursor or not self._epoch_known():
            return _TABLE
        inbox.cursors[queue] = last
        inbox.seen[(queue, note.sender)] = (note.seq, time.monotonic())
        put, expired, dropped = self._to_members(
            queue, last, note.payload, note.expires_at - time.time()
        )
        counts[1] += expired
        counts[2] += put
        counts[3] += dropped
        return None

    def _epoch_known(self) -> bool:
        # A flush this listener has not reached in its notifications yet (or no epoch
        # known at all): notes before it are of messages the flush removed, so the
        # table decides until then.
        return self.inbox.epoch is not None and self.stream_epoch == self.inbox.epoch

    def _to_members(
        self, queue: str, message_id: int, payload: bytes, ttl: float
    ) -> tuple[int, int, int]:
        """Put a group stream's message into the mailbox for this process's members that
        had joined before it (``inbox.lock`` held): (put, expired, dropped at capacity)."""
        inbox = self.inbox
        ttl = min(ttl, self._expiry())
        if ttl <= 0:
            return 0, 1, 0
        now = time.monotonic()
        by_queue: dict[str, list[str]] = {}
        for channel, (joined, until) in inbox.members(queue).items():
            if message_id > joined and (until is None or until > now):
                by_queue.setdefault(non_local_name(channel), []).append(channel)
        put = dropped = 0
        for own, channels in by_queue.items():
            if own in inbox.backlog or inbox.mailbox.count(own) >= self._capacity_for(own):
                dropped += 1
                continue
            inbox.mailbox.put(sorted(channels), payload, now + ttl)
            put += 1
        return put, 0, dropped

    def _counted(self, delivered: list[tuple[str, int, int]], counts: list[int]) -> None:
        duplicates, expired, from_streams, dropped, _ = counts
        if delivered:
            if not self._delivered:
                self._delivered_since = time.monotonic()
            self._delivered.extend(delivered)
            undeleted = self._undeleted
            for queue, _, _ in delivered:
                waiting = undeleted.get(queue, 0) + 1
                undeleted[queue] = waiting
                if waiting * 4 >= self._capacity_for(queue):
                    self._reap_now = True
            if len(self._delivered) >= _REAP_BATCH:
                self._reap_now = True
        self.from_notes += len(delivered)
        self.from_streams += from_streams
        events = self._events()
        events.count("receive.duplicate", duplicates)
        events.count("receive.expired", expired)
        if dropped:
            events.count("group_send.dropped", dropped)
            self._full(dropped)

    def _due(self, kind: str) -> bool:
        """Whether a warning of ``kind`` may be logged now (at most once a minute)."""
        now = time.monotonic()
        if now - self._warned.get(kind, -_WARN_EVERY) < _WARN_EVERY:
            return False
        self._warned[kind] = now
        return True

    def _full(self, count: int) -> None:
        if self._due("full"):
            logger.warning(
                "%d group message(s) missed this process's members: their channels were at "
                "capacity (group_send.dropped counts them). Their consumers do not keep up, "
                "or the capacity is too small.",
                count,
            )

    # Catch-ups ---------------------------------------------------------------------

    def room_again(self, queue: str) -> bool:
        """After a receive from ``queue``: whether a catch-up should fetch what was left
        in the table when the mailbox was full."""
        inbox = self.inbox
        with inbox.lock:
            if queue not in inbox.backlog:
                return False
            if inbox.mailbox.count(queue) * 2 > self._capacity_for(queue):
                return False
            inbox.backlog.discard(queue)
            return True

    async def catch_up(self, conn: Connection | None = None) -> None:
        """Take what the table holds for this process's own queues and group streams, in
        one snapshot, then the notes held meanwhile; again while there may be more.
        Call after :meth:`Inbox.start_catch_up` returned True. ``conn`` is the
        listener's connection, or None for a pooled one."""
        inbox = self.inbox
        try:
            while True:
                with inbox.lock:
                    inbox.catch_up_again = False
                    covered = len(inbox.held)
                    limits = {
                        queue: min(
                            _CLAIM_BATCH, self._capacity_for(queue) - inbox.mailbox.count(queue)
                        )
                        for queue in inbox.own_queues
                    }
                    after = dict(inbox.cursors)
                more = False
                if limits or after:
                    more = await self._catch_up_once(limits, after, conn)
                with inbox.lock:
                    if more or inbox.catch_up_again:
                        continue
                    held, inbox.held = inbox.held, []
                    inbox.catching_up = False
                    if not held or not self._take(held, covered):
                        break
                    # A held note needs the table: catch up again (it stays held).
                    inbox.catching_up = True
        except BaseException:
            with inbox.lock:
                inbox.catching_up = False
            raise
        if self._delivered and conn is None:
            # Rows of the notes delivered as it ended go now: the listener, which deletes
            # them otherwise (see reap_in), may be waiting for a notification.
            async with self._connection(self._pool_timeout) as pooled:
                await self.reap(pooled)

    async def _catch_up_once(
        self, limits: dict[str, int], after: dict[str, int], conn: Connection | None
    ) -> bool:
        if conn is not None:
            return await self._catch_up_on(conn, limits, after)
        async with self._connection(self._pool_timeout) as pooled:
            return await self._catch_up_on(pooled, limits, after)

    async def _catch_up_on(
        self, conn: Connection, limits: dict[str, int], after: dict[str, int]
    ) -> bool:
        """One catch-up statement in a transaction; True if a queue or stream may hold
        more. Rows are delivered before the commit: if it does not commit, the claimed
        rows come back and are dropped as already delivered."""
        timeout = self._query_timeout
        await self._end_abandoned(conn)
        pid = conn.info.backend_pid
        wanted = {queue: limit for queue, limit in limits.items() if limit > 0}
        parameters = {
            "queues": list(wanted),
            "limits": list(wanted.values()),
            "streams": list(after),
            "after": list(after.values()),
            "stream_limit": _STREAM_BATCH,
            "idle_ms": self._idle_ms,
            "max_size": self._max_message_size,
        }
        statement = self._statements.catch_up
        try:
            rows = await within(
                conn, _begin_and_fetch(conn, statement, parameters), timeout, "a catch-up"
            )
        except BaseException as exc:
            self._note_abandoned(exc, conn, pid)
            await _roll_back(conn, timeout)
            raise
        claimed, read = self._deliver_caught_up(rows, set(wanted))
        try:
            await within(conn, conn.execute("COMMIT"), timeout, "a catch-up's commit")
        except BaseException as exc:
            self._note_abandoned(exc, conn, pid)
            raise
        more = False
        with self.inbox.lock:
            for queue, limit in limits.items():
                count = claimed.get(queue, 0)
                if limit <= 0 or (count == limit and limit < _CLAIM_BATCH):
                    # Full: the rest waits until a receive makes room.
                    self.inbox.backlog.add(queue)
                elif count == limit:
                    more = True
        return more or any(count >= _STREAM_BATCH for count in read.values())

    def _deliver_caught_up(
        self, rows: Sequence[tuple[Any, ...]], own: set[str]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Deliver a catch-up's rows in id order; rows claimed per own queue and read per
        stream."""
        claimed: dict[str, int] = {}
        read: dict[str, int] = {}
        if not rows:
            return claimed, read
        inbox = self.inbox
        counts = {"invalid": 0, "oversized": 0, "duplicates": 0, "flushed": 0, "expired": 0}
        from_streams = dropped = 0
        now = time.monotonic()
        with inbox.lock:
            epoch = rows[0][7]
            if epoch is not None and not inbox.apply_epoch(int(epoch)):
                counts["flushed"] = len(rows)
                rows = ()
            for message_id, queue, channels, payload, ttl, sender, seq, _, size, _ in rows:
                stream = queue.startswith("#")
                tally = read if stream else claimed
                tally[queue] = tally.get(queue, 0) + 1
                if stream:
                    cursor = inbox.cursors.get(queue)
                    if cursor is None or message_id <= cursor:
                        continue
                    inbox.cursors[queue] = int(message_id)
                key = (queue, int(sender))
                if sender:
                    latest = inbox.seen.get(key)
                    if latest is not None and int(seq) <= latest[0]:
                        # The row of a note delivered already is expected; anything
                        # else is a second copy (a retried write, a claim that came back).
                        if (queue, int(sender), int(seq)) not in inbox.noted:
                            counts["duplicates"] += 1
                        inbox.noted.discard((queue, int(sender), int(seq)))
                        continue
                    inbox.seen[key] = (int(seq), now)
                if payload is None and size is not None:
                    # Over max_message_size: what the layer counts as undecodable.
                    counts["oversized"] += 1
                    self._report(queue, f"a payload of {size:,} bytes, over max_message_size")
                    continue
                if stream:
                    problem = self._stream_problem(payload, ttl)
                else:
                    problem = self._problem(queue, channels, payload, ttl)
                if problem is not None:
                    counts["invalid"] += 1
                    self._report(queue, problem)
                    continue
                if stream:
                    put, expired, full = self._to_members(
                        queue, int(message_id), bytes(payload), float(ttl)
                    )
                    from_streams += put
                    counts["expired"] += expired
                    dropped += full
                    continue
                expires_at = now + min(float(ttl), self._expiry())
                inbox.mailbox.put(channels, bytes(payload), expires_at)
        events = self._events()
        events.count("receive.invalid_row", counts["invalid"])
        events.count("receive.undecodable", counts["oversized"])
        events.count("receive.duplicate", counts["duplicates"])
        events.count("receive.flushed", counts["flushed"])
        events.count("receive.expired", counts["expired"])
        self.from_streams += from_streams
        if dropped:
            events.count("group_send.dropped", dropped)
            self._full(dropped)
        return claimed, read

    async def sync_members(
        self, conn: Connection, own: str, identifier: Callable[[str], str]
    ) -> bool:
        """Read this process's memberships from the table (another process changed them,
        a flush removed them, or the listener was away). True if a catch-up must read
        group streams: one is followed now, or went back."""
        inbox = self.inbox
        inbox.start_sync()
        try:
            rows = await fetch(
                conn,
                self._statements.members_of,
                {"own": own},
                timeout=self._query_timeout,
                what="reading this process's group memberships",
            )
        except BaseException:
            inbox.abandon_sync()
            raise
        now = time.monotonic()
        return inbox.end_sync(
            [
                (group, channel, int(joined), None if left is None else now + float(left))
                for group, channel, joined, _, left in rows
            ],
            {group: int(last) for group, _, _, last, _ in rows},
            identifier,
        )

    # Shared queues -----------------------------------------------------------------

    def wanted(self, queue: str) -> int:
        """How many rows of shared ``queue`` to claim now: one per receiver waiting."""
        return self.inbox.mailbox.unserved(queue)

    async def claim(self, queue: str, conn: Connection | None = None) -> None:
        """Claim rows of shared ``queue`` until nothing more is wanted; ``conn`` is the
        listener's connection, or None for a pooled one. Call after
        :meth:`Inbox.start_claim` returned True; one claim per queue runs at a time."""
        inbox = self.inbox
        try:
            while True:
                limit = self.wanted(queue)
                claimed = await self._claim(queue, limit, conn) if limit > 0 else 0
                # A full batch may have left more: bad or duplicate rows may have taken
                # the places of messages that receivers still wait for.
                with inbox.lock:
                    if claimed == limit > 0 or queue in inbox.claim_again:
                        inbox.claim_again.discard(queue)
                        continue
                    inbox.claiming.discard(queue)
                return
        except BaseException:
            inbox.abandon_claim(queue)
            raise

    async def _claim(self, queue: str, limit: int, conn: Connection | None) -> int:
        if conn is not None:
            return await self._claim_on(conn, queue, limit)
        async with self._connection(self._pool_timeout) as pooled:
            return await self._claim_on(pooled, queue, limit)

    async def _claim_on(self, conn: Connection, queue: str, limit: int) -> int:
        timeout = self._query_timeout
        await self._end_abandoned(conn)
        pid = conn.info.backend_pid
        parameters = {
            "queue": queue,
            "limit": limit,
            "idle_ms": self._idle_ms,
            "max_size": self._max_message_size,
        }
        try:
            rows = await within(
                conn,
                _begin_and_fetch(conn, self._statements.claim_shared, parameters),
                timeout,
                "a claim",
            )
        except BaseException as exc:
            self._note_abandoned(exc, conn, pid)
            await _roll_back(conn, timeout)
            raise
        try:
            await within(conn, conn.execute("COMMIT"), timeout, "a claim's commit")
        except Exception as exc:
            if not outcome_unknown(exc, conn):
                raise
            if not await self._committed(queue, rows, pid, exc):
                raise
        self._deliver_shared(queue, rows)
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
        elif conn.closed and pid and not read_only(exc):
            self._abandoned.add(pid)

    # Flushes -----------------------------------------------------------------------

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
        self.inbox.forget_groups()

    # Rows of notes -----------------------------------------------------------------

    def reap_in(self) -> float | None:
        """Seconds until the rows of delivered notes are due to be deleted (0: now), or
        None when there are none. Deleting them together saves a statement per message;
        a queue whose rows reach a quarter of its capacity is due at once, so senders'
        capacity checks stay close to what waits."""
        if not self._delivered:
            return None
        if self._reap_now:
            return 0.0
        return max(0.0, self._delivered_since + REAP_DELAY - time.monotonic())

    async def reap_before_closing(self) -> None:
        """Delete the rows of delivered notes still waiting, on a pooled connection, as
        the engine closes. A failure leaves them to expire: nobody else claims them."""
        if not self._delivered:
            return
        try:
            async with self._connection(self._pool_timeout) as conn:
                await self.reap(conn)
        except Exception as exc:
            logger.debug("Could not delete the rows of delivered notes on closing: %r", exc)

    async def reap(self, conn: Connection) -> None:
        """Delete the rows of the messages delivered from notes, in one statement, on the
        listener's connection (whose plain index scans mark the entries of rows deleted
        before as dead). A row left by a failure is claimed later and dropped as already
        delivered."""
        rows, self._delivered = self._delivered, []
        self._undeleted.clear()
        self._reap_now = False
        while rows:
            batch, rows = rows[:_REAP_BATCH], rows[_REAP_BATCH:]
            with self.inbox.lock:
                self.inbox.noted.difference_update(batch)
            found = await fetch(
                conn,
                self._statements.reap,
                {
                    "queues": sorted({queue for queue, _, _ in batch}),
                    "senders": [sender for _, sender, _ in batch],
                    "seqs": [seq for _, _, seq in batch],
                },
                timeout=self._query_timeout,
                what="deleting delivered rows",
            )
            self.reaped += int(found[0][0]) if found else 0

    def _forgeries(self, queue: str) -> None:
        self._events().count("receive.forged_notification")
        if self._due("forged"):
            logger.warning(
                "Ignored a notification for queue %r that carries a message but does not "
                "verify with this layer's keys. Either another database role sends "
                "notifications on the layer's names, or processes of this layer do not "
                "share SECRET_KEY or CONFIG['encryption_keys']. Nothing was delivered from "
                "it (receive.forged_notification counts them).",
                queue,
            )

    # Delivering ----------------------------------------------------------------------

    def _deliver_shared(self, queue: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Put good, new rows of a shared queue into the mailbox; count the rest."""
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
            for _, channels, payload, ttl, _, _, _, fresh, size, _ in rows:
                # A second copy: its first was claimed (and delivered) already.
                if not fresh:
                    duplicates += 1
                    continue
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

    def _stream_problem(self, payload: Any, ttl: Any) -> str | None:
        if not isinstance(payload, (bytes, memoryview)):
            return "no payload"
        return self._ttl_problem(ttl)

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
        return self._ttl_problem(ttl)

    @staticmethod
    def _ttl_problem(ttl: Any) -> str | None:
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
