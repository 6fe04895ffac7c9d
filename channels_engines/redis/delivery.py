"""Taking messages into this process's mailbox, each once and in order.

Messages of a process's own channels (``new_channel()``) are entries of its queue's
stream. The process hears of each one on the queue's pub/sub channel, in the order they
were added, and takes it straight from the announcement when the message rides along
(a note, see :mod:`.notes`); otherwise, and whenever it may have missed an announcement
(it just subscribed, it reconnected, the periodic sweep), it *reads* the stream after the
last entry it took. One read runs per queue at a time; announcements that arrive
meanwhile are held and handled after it, so none overtakes an entry the read takes. The
process takes only as many messages as its mailbox has room for; the rest stay in the
stream, counting against senders' capacity, until receivers make room. Entries taken
are deleted in batches, shortly after.

Messages of normal channels are claimed through the stream's consumer group, only as
many as there are receivers waiting here. A claim whose answer is lost leaves its entries
in this process's pending list; the next claim of that channel reads them from there
first. Claimed entries are acknowledged and deleted once they are in the mailbox.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..events import Events
from ..mailbox import Mailbox
from .calls import call, is_connection_error, read_range, run_script
from .keys import CLAIM, FORGET, SETTLE, Keys, Script
from .notes import Announcement, Notary, entry_key, parse
from .servers import Servers

__all__ = ["Delivery", "Inbox"]

logger = logging.getLogger("channels_engines.redis")

# Entries read per call; a read repeats while one is full and there is room.
_READ_BATCH = 256
# Entries taken wait this long (seconds) to be deleted together, unless a queue has a
# quarter of its capacity waiting to be deleted first: until then they count against
# senders' capacity checks.
FORGET_DELAY = 0.02

ServersOf = Callable[[], Awaitable[Servers]]


@dataclass
class Inbox:
    """Receiving state of one layer in one process, shared by its event loops."""

    mailbox: Mailbox = field(default_factory=Mailbox)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Own queue -> the last entry taken from its stream.
    cursors: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Own queues being read, and those to read again when that read ends.
    reading: set[str] = field(default_factory=set)
    read_again: set[str] = field(default_factory=set)
    #: Announcements that arrived during a read of their queue, in order.
    held: dict[str, list[Announcement]] = field(default_factory=dict)
    #: Own queues whose entries wait in the stream for room in the mailbox.
    backlog: set[str] = field(default_factory=set)
    #: Own queue -> (entry id, sender, seq) of entries taken and not yet deleted.
    taken: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    #: Normal channels being claimed, and those to claim again when the claim ends.
    claiming: set[str] = field(default_factory=set)
    claim_again: set[str] = field(default_factory=set)
    #: Normal channels whose pending list may hold entries of a lost claim answer, and
    #: ids of entries in the mailbox not yet acknowledged.
    unsure: set[str] = field(default_factory=set)
    unsettled: dict[str, set[str]] = field(default_factory=dict)
    #: (queue, sender) -> (latest sequence number delivered, when): a second copy of a
    #: message (a send retried across a failover, its first copy delivered from the old
    #: primary) carries a number already delivered.
    seen: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    #: Flushes seen: a read or claim that began before one drops what it found (the
    #: flush deleted it, and it must not reach the mailbox after the flush emptied it).
    epoch: int = 0

    def first_copy(self, queue: str, sender: str, seq: str, now: float) -> bool:
        """Whether this is the first copy of ``sender``'s message ``seq`` on ``queue``
        (lock held); remember it if so. A sender's messages to a queue arrive in the
        order of their numbers."""
        try:
            number = int(seq)
        except ValueError:
            return True
        latest = self.seen.get((queue, sender))
        if latest is not None and number <= latest[0]:
            return False
        self.seen[(queue, sender)] = (number, now)
        return True

    def forget_senders(self, older_than: float) -> None:
        """Forget senders not heard from since ``older_than`` (a monotonic time)."""
        with self.lock:
            stale = [key for key, (_, at) in self.seen.items() if at < older_than]
            for key in stale:
                del self.seen[key]

    def start(self, running: set[str], again: set[str], queue: str) -> bool:
        """True if the caller should read (or claim) ``queue``; else the running one
        repeats."""
        with self.lock:
            if queue in running:
                again.add(queue)
                return False
            running.add(queue)
            again.discard(queue)
            return True

    def clear(self) -> None:
        """After a flush: nothing taken before it is delivered, and every stream is read
        from its start (a stream made again may reuse ids below a cursor)."""
        with self.lock:
            self.epoch += 1
            self.mailbox.clear()
            self.cursors.clear()
            self.held.clear()
            self.backlog.clear()
            self.taken.clear()
            self.unsettled.clear()


class Delivery:
    """Takes messages for one engine (event loop) into the process's :class:`Inbox`."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        keys: Keys,
        servers: ServersOf,
        consumer: str,
        capacity_for: Callable[[str], int],
        events: Callable[[], Events],
        deadline: float,
        where: str,
        refused: Callable[[], bool],
    ) -> None:
        self._inbox = inbox
        self._keys = keys
        self._servers = servers
        self._consumer = consumer
        self._capacity_for = capacity_for
        self._events = events
        self._deadline = deadline
        self._where = where
        self._refused = refused
        self._forget_task: asyncio.Task[None] | None = None
        self.notary: Notary | None = None
        #: Messages taken straight from their announcement (for tests).
        self.from_notes = 0

    # Own queues ----------------------------------------------------------------------

    def announced(self, queue: str, data: bytes) -> bool:
        """Announcements on ``queue``'s channel; True if the stream must be read."""
        announcements = parse(data)
        if announcements is None:
            return False
        inbox = self._inbox
        with inbox.lock:
            if queue in inbox.reading:
                inbox.held.setdefault(queue, []).extend(announcements)
                return False
            # Up to the first that only a read can take: the read takes those after it.
            return any(not self._take_announced(queue, found) for found in announcements)

    def _take_announced(self, queue: str, found: Announcement) -> bool:
        """Take the message of ``found`` (lock held); False when only a read can."""
        inbox = self._inbox
        key = entry_key(found.entry_id)
        cursor = inbox.cursors.get(queue, (0, 0))
        if key <= cursor:
            return True  # taken already
        if queue in inbox.backlog:
            return True  # it waits in the stream behind others
        if entry_key(found.previous) > cursor:
            return False  # an entry before it was not taken: its announcement was missed
        note = (
            self.notary.read(self._keys.note(queue), found.note)
            if self.notary is not None and found.note
            else None
        )
        if note is None:
            return False
        if inbox.mailbox.count(queue) >= self._capacity_for(queue):
            inbox.backlog.add(queue)
            return True
        inbox.cursors[queue] = key
        left = note.expires_ms / 1000 - time.time()
        now = time.monotonic()
        if not inbox.first_copy(queue, str(note.sender), str(note.seq), now):
            self._events().count("receive.duplicate")
        elif left > 0:
            channels = [queue + local for local in note.locals]
            inbox.mailbox.put(channels, note.payload, now + left)
            self.from_notes += 1
        inbox.taken.setdefault(queue, []).append((found.entry_id, str(note.sender), str(note.seq)))
        self._forget_soon(queue)
        return True

    async def read(self, queue: str) -> None:
        """Take what ``queue``'s stream holds after the last entry taken, as far as the
        mailbox has room. Call after :meth:`Inbox.start` returned True for it."""
        inbox = self._inbox
        stream, _ = self._keys.stream(queue)
        try:
            while True:
                with inbox.lock:
                    room = self._capacity_for(queue) - inbox.mailbox.count(queue)
                    cursor = inbox.cursors.get(queue)
                    inbox.read_again.discard(queue)
                    epoch = inbox.epoch
                if room <= 0:
                    with inbox.lock:
                        inbox.backlog.add(queue)
                    break
                start = "-" if cursor is None else f"({cursor[0]}-{cursor[1]}"
                count = min(room, _READ_BATCH)
                servers = await self._servers()
                server_ms, entries = await call(
                    lambda: read_range(servers, stream, start, count),  # noqa: B023
                    deadline=self._deadline,
                    what="reading a queue",
                    where=self._where,
                    refused=self._refused,
                    servers=servers,
                )
                with inbox.lock:
                    if inbox.epoch != epoch:
                        continue  # flushed meanwhile: read the stream made since
                    found, taken = self._accept_entries(queue, int(server_ms), entries)
                # Deleted before they reach the mailbox: a receiver that takes one finds
                # its capacity freed. (A lost answer is asked again; the read is not.)
                if taken:
                    await self._script(FORGET, stream, _flat(taken), "deleting taken messages")
                with inbox.lock:
                    inbox.mailbox.put_many(found)
                    full = len(entries) == count
                    if not full:
                        inbox.backlog.discard(queue)
                    again = queue in inbox.read_again
                if not full and not again:
                    break
        finally:
            with inbox.lock:
                inbox.reading.discard(queue)
                held = inbox.held.pop(queue, [])
                unreadable = False
                for announcement in held:
                    if not self._take_announced(queue, announcement):
                        unreadable = True
                        break
        if unreadable and inbox.start(inbox.reading, inbox.read_again, queue):
            await self.read(queue)

    def _accept_entries(
        self, queue: str, server_ms: int, entries: Sequence[Any]
    ) -> tuple[list[tuple[list[str], bytes, float]], list[tuple[str, str, str]]]:
        """Entries read from ``queue``'s stream: what to put in the mailbox, and what to
        delete (lock held; the cursor moves past them)."""
        inbox = self._inbox
        cursor = inbox.cursors.get(queue, (0, 0))
        now = time.monotonic()
        found: list[tuple[list[str], bytes, float]] = []
        taken: list[tuple[str, str, str]] = []
        for raw_id, raw_fields in entries:
            entry_id = raw_id.decode()
            key = entry_key(entry_id)
            if key <= cursor:
                continue
            fields = _fields(raw_fields)
            cursor = key
            expires = int(fields.get(b"x", b"0"))
            sender, seq = fields.get(b"s", b"").decode(), fields.get(b"q", b"").decode()
            taken.append((entry_id, "", ""))  # an id the server gave: deleted as it is
            if expires <= server_ms:
                self._events().count("receive.expired")
                continue
            if not inbox.first_copy(queue, sender, seq, now):
                self._events().count("receive.duplicate")
                continue
            locals_ = fields.get(b"c", b"").decode().split(",")
            channels = [queue + local for local in locals_]
            found.append((channels, fields.get(b"m", b""), now + (expires - server_ms) / 1000))
        inbox.cursors[queue] = cursor
        return found, taken

    def room_again(self, queue: str) -> bool:
        """Whether ``queue`` waited for room and now has some (read it then)."""
        inbox = self._inbox
        with inbox.lock:
            return (
                queue in inbox.backlog
                and inbox.mailbox.count(queue) < self._capacity_for(queue)
                and queue not in inbox.reading
            )

    # Deleting what was taken ---------------------------------------------------------

    def _forget_soon(self, queue: str) -> None:
        """Delete taken entries within :data:`FORGET_DELAY`, or now when many wait
        (lock held)."""
        waiting = len(self._inbox.taken.get(queue, ()))
        if self._forget_task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # the sweep deletes them
            self._forget_task = loop.create_task(self._forget_later(), name="forget")
        elif waiting * 4 >= self._capacity_for(queue):
            self._forget_task.cancel()
            self._forget_task = asyncio.get_running_loop().create_task(self.forget())

    async def _forget_later(self) -> None:
        await asyncio.sleep(FORGET_DELAY)
        await self.forget()

    async def forget(self) -> None:
        """Delete the entries taken so far."""
        self._forget_task = None
        inbox = self._inbox
        with inbox.lock:
            taken, inbox.taken = inbox.taken, {}
        for queue, entries in taken.items():
            stream, _ = self._keys.stream(queue)
            try:
                await self._script(FORGET, stream, _flat(entries), "deleting taken messages")
            except Exception as exc:
                # Given back: the next deletion (or the sweep) tries again.
                with inbox.lock:
                    inbox.taken.setdefault(queue, [])[:0] = entries
                logger.debug("Deleting taken messages of %s failed (%s).", queue, exc)

    # Normal channels -----------------------------------------------------------------

    async def claim(self, queue: str) -> None:
        """Claim as many messages of normal channel ``queue`` as receivers wait for here.
        Call after :meth:`Inbox.start` returned True for it."""
        inbox = self._inbox
        stream, _ = self._keys.stream(queue)
        try:
            while True:
                with inbox.lock:
                    inbox.claim_again.discard(queue)
                    unsure = queue in inbox.unsure
                    epoch = inbox.epoch
                wanted = inbox.mailbox.unserved(queue)
                if wanted <= 0 and not unsure:
                    break
                servers = await self._servers()

                async def attempt(
                    servers: Servers = servers, wanted: int = wanted
                ) -> tuple[bool, Any]:
                    # Again after a lost answer: from this consumer's pending list first.
                    with inbox.lock:
                        from_pending = queue in inbox.unsure
                    count = _READ_BATCH if from_pending else max(wanted, 1)
                    try:
                        found = await run_script(
                            servers,
                            CLAIM,
                            [stream],
                            [self._consumer, count, "0" if from_pending else ">"],
                        )
                    except Exception as exc:
                        if is_connection_error(exc):
                            # The claim may have taken entries and lost the answer.
                            with inbox.lock:
                                inbox.unsure.add(queue)
                        raise
                    return from_pending, (count, found)

                unsure, (count, (server_ms, entries)) = await call(
                    attempt,
                    deadline=self._deadline,
                    what="claiming messages",
                    where=self._where,
                    refused=self._refused,
                    servers=servers,
                )
                with inbox.lock:
                    if inbox.epoch != epoch:
                        continue  # flushed meanwhile: what it claimed is gone
                    ids = self._take_claimed(queue, int(server_ms), entries)
                    if unsure:
                        inbox.unsure.discard(queue)
                    again = queue in inbox.claim_again
                if ids:
                    await self._settle(queue, stream, ids)
                if not unsure and len(entries) < count and not again:
                    break
        finally:
            with inbox.lock:
                inbox.claiming.discard(queue)

    def _take_claimed(self, queue: str, server_ms: int, entries: Sequence[Any]) -> list[str]:
        """Claimed entries into the mailbox (lock held); the ids to acknowledge."""
        inbox = self._inbox
        unsettled = inbox.unsettled.setdefault(queue, set())
        now = time.monotonic()
        ids = []
        for raw_id, raw_fields in entries:
            entry_id = raw_id.decode()
            ids.append(entry_id)
            if raw_fields is None or entry_id in unsettled:
                continue  # deleted meanwhile, or already in the mailbox
            unsettled.add(entry_id)
            fields = _fields(raw_fields)
            expires = int(fields.get(b"x", b"0"))
            if expires <= server_ms:
                self._events().count("receive.expired")
                continue
            sender, seq = fields.get(b"s", b"").decode(), fields.get(b"q", b"").decode()
            if not inbox.first_copy(queue, sender, seq, now):
                self._events().count("receive.duplicate")
                continue
            inbox.mailbox.put([queue], fields.get(b"m", b""), now + (expires - server_ms) / 1000)
        return ids

    async def _script(self, script: Script, stream: str, args: list[Any], what: str) -> Any:
        """A script on one stream, repeated after connection failures (it may be)."""
        servers = await self._servers()
        return await call(
            lambda: run_script(servers, script, [stream], args),
            deadline=self._deadline,
            what=what,
            where=self._where,
            refused=self._refused,
            servers=servers,
        )

    async def _settle(self, queue: str, stream: str, ids: list[str]) -> None:
        await self._script(SETTLE, stream, ids, "acknowledging claimed messages")
        with self._inbox.lock:
            unsettled = self._inbox.unsettled.get(queue)
            if unsettled is not None:
                unsettled.difference_update(ids)
                if not unsettled:
                    del self._inbox.unsettled[queue]


def _fields(raw: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(raw[::2], raw[1::2], strict=True))


def _flat(entries: Sequence[tuple[str, str, str]]) -> list[str]:
    return [part for entry in entries for part in entry]
