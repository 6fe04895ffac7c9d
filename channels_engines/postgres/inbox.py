"""What every event loop's engine of one layer shares in a process to receive.

Besides the mailbox, the process keeps what makes each message arrive once and in order:
the latest sequence number delivered per sender and queue, the flush epoch, the notes
held while a catch-up reads the table, and the group memberships of its own channels,
with how far it has read each group's stream. Everything is guarded by one thread lock:
``async_to_sync`` runs engines of one process on several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..mailbox import Mailbox
from .schema import stream_queue

__all__ = ["Inbox"]

#: A membership of one of this process's channels: the last message of the group's stream
#: when it joined, and when it expires (monotonic seconds) or None.
Membership = tuple[int, "float | None"]


@dataclass
class Inbox:
    """Receiving state of one layer in one process (see the module docstring)."""

    mailbox: Mailbox = field(default_factory=Mailbox)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Normal (shared) queues being claimed, and those to claim again when it ends.
    claiming: set[str] = field(default_factory=set)
    claim_again: set[str] = field(default_factory=set)
    #: This process's own queues (one per new_channel() prefix) that a loop receives on.
    own_queues: set[str] = field(default_factory=set)
    #: A catch-up (own queues and group streams read in one snapshot) is running, and
    #: another was asked for meanwhile.
    catching_up: bool = False
    catch_up_again: bool = False
    #: Notifications (queue, identifier, payload) that arrived during a catch-up, or
    #: after one that needed the table, in the order they arrived.
    held: list[tuple[str, str, str]] = field(default_factory=list)
    #: Own queues whose rows stay in the table because the mailbox held their capacity.
    backlog: set[str] = field(default_factory=set)
    #: (queue, sender, seq) of messages delivered from notes whose rows are still in the
    #: table (a catch-up that takes one drops it without counting it as a duplicate).
    noted: set[tuple[str, int, int]] = field(default_factory=set)
    #: (queue, sender) -> (latest sequence number delivered, when).
    seen: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    #: The latest flush epoch this process has seen (None: none yet).
    epoch: int | None = None
    last_warning: float = 0.0
    #: Groups with members among this process's channels: group -> channel -> membership.
    groups: dict[str, dict[str, Membership]] = field(default_factory=dict)
    #: Stream queue ('#' + group) -> id of the last stream row handled, per group followed.
    cursors: dict[str, int] = field(default_factory=dict)
    #: Stream queue -> its LISTEN identifier.
    streams: dict[str, str] = field(default_factory=dict)
    #: Memberships must be read from the table again (another process flushed).
    members_stale: bool = False
    #: While memberships are read from the table: local changes made meanwhile, applied
    #: again on top of what was read.
    changes: list[tuple[Any, ...]] | None = None
    #: Per engine with a listener: call (from any thread) with identifiers to LISTEN on.
    watchers: dict[int, Callable[[list[str]], None]] = field(default_factory=dict)

    # Claims of shared queues -----------------------------------------------------------

    def start_claim(self, queue: str) -> bool:
        """True if the caller should claim ``queue``; else the running claim repeats."""
        with self.lock:
            if queue in self.claiming:
                self.claim_again.add(queue)
                return False
            self.claiming.add(queue)
            return True

    def abandon_claim(self, queue: str) -> None:
        with self.lock:
            self.claiming.discard(queue)
            self.claim_again.discard(queue)

    # Catch-ups -------------------------------------------------------------------------

    def start_catch_up(self) -> bool:
        """True if the caller should run a catch-up; else the running one runs again."""
        with self.lock:
            if self.catching_up:
                self.catch_up_again = True
                return False
            self.catching_up = True
            self.catch_up_again = False
            return True

    def end_catch_up(self) -> None:
        with self.lock:
            self.catching_up = False

    # Flushes ---------------------------------------------------------------------------

    def apply_epoch(self, epoch: int) -> bool:
        """Note a flush epoch; drop what was received before it. False if ``epoch`` is
        older than what is known (rows read with it were flushed). Call with ``lock``."""
        if self.epoch is None or epoch > self.epoch:
            if self.epoch is not None:
                self.mailbox.clear()
                # Notes waiting for a catch-up were sent before the flush.
                self.held.clear()
                # The flush removed memberships; which remain is read from the table.
                self.members_stale = True
            self.epoch = epoch
            return True
        return epoch == self.epoch

    def forget_senders(self, older_than: float) -> None:
        """Forget senders not heard from since ``older_than`` (a monotonic time)."""
        with self.lock:
            stale = [key for key, (_, at) in self.seen.items() if at < older_than]
            for key in stale:
                del self.seen[key]

    # Group memberships of this process's channels -------------------------------------

    def join(
        self, group: str, channel: str, joined: int, expires_at: float | None, identifier: str
    ) -> None:
        """``channel`` of this process joined ``group`` after stream message ``joined``."""
        with self.lock:
            if self.changes is not None:
                self.changes.append((group, channel, joined, expires_at))
            self._join(group, channel, joined, expires_at)
            new = self._follow(group, joined, identifier)
        if new:
            self._tell_watchers([identifier])

    def leave(self, group: str | None, channels: Iterable[str]) -> None:
        """``channels`` left ``group`` (every group, for None)."""
        channels = list(channels)
        with self.lock:
            if self.changes is not None:
                self.changes.append((group, channels))
            self._leave(group, channels)

    def start_sync(self) -> None:
        """Memberships are about to be read from the table: record local changes."""
        with self.lock:
            self.changes = []

    def end_sync(
        self,
        rows: Iterable[tuple[str, str, int, float | None]],
        lasts: dict[str, int],
        identifier: Callable[[str], str],
    ) -> bool:
        """Memberships as the table has them (``rows``: group, channel, joined, expires
        at; ``lasts``: each group's last stream message), with local changes made since
        :meth:`start_sync` applied on top. True if a stream must be read: a group is
        followed now, or its stream went back."""
        new: list[str] = []
        reset = False
        with self.lock:
            self.members_stale = False
            fresh: dict[str, dict[str, Membership]] = {}
            for group, channel, joined, expires_at in rows:
                last = lasts.get(group, 0)
                queue = stream_queue(group)
                if self.cursors.get(queue, 0) > last:
                    # The stream went back: the server lost its unlogged tables in a
                    # crash and their ids start again. Read it from the start.
                    self.cursors[queue] = 0
                    reset = True
                fresh.setdefault(group, {})[channel] = (min(joined, last), expires_at)
            self.groups = fresh
            for change in self.changes or ():
                if len(change) == 2:
                    self._leave(*change)
                else:
                    self._join(*change)
            self.changes = None
            for queue in [queue for queue in self.cursors if queue[1:] not in self.groups]:
                del self.cursors[queue]
                self.streams.pop(queue, None)
            for group, members in self.groups.items():
                joined = min(member[0] for member in members.values())
                if self._follow(group, joined, identifier(stream_queue(group))):
                    new.append(self.streams[stream_queue(group)])
        self._tell_watchers(new)
        return reset or bool(new)

    def abandon_sync(self) -> None:
        with self.lock:
            self.changes = None

    def forget_groups(self) -> None:
        """Every membership is gone (this process flushed the layer)."""
        with self.lock:
            self.groups.clear()
            self.cursors.clear()
            self.streams.clear()
            self.members_stale = False

    def members(self, queue: str) -> dict[str, Membership]:
        """This process's members of the group whose stream is ``queue`` (lock held)."""
        return self.groups.get(queue[1:], {})

    def _join(self, group: str, channel: str, joined: int, expires_at: float | None) -> None:
        members = self.groups.setdefault(group, {})
        previous = members.get(channel)
        # Added again while a member: it keeps getting what came after it first joined.
        members[channel] = (previous[0] if previous else joined, expires_at)

    def _leave(self, group: str | None, channels: Sequence[str]) -> None:
        for name in [group] if group is not None else list(self.groups):
            members = self.groups.get(name)
            if members is None:
                continue
            for channel in channels:
                members.pop(channel, None)
            if not members:
                del self.groups[name]
                self.cursors.pop(stream_queue(name), None)
                self.streams.pop(stream_queue(name), None)

    def _follow(self, group: str, joined: int, identifier: str) -> bool:
        queue = stream_queue(group)
        self.streams[queue] = identifier
        if queue in self.cursors:
            return False
        self.cursors[queue] = joined
        return True

    def _tell_watchers(self, identifiers: list[str]) -> None:
        if identifiers:
            for watch in list(self.watchers.values()):
                watch(identifiers)
