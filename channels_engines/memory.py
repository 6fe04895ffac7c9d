"""The in-process engine: full channel layer semantics, no server.

The reference engine for tests and local development. Messages and groups live in one
process (shared by all its event loops), so it cannot carry messages between processes.
"""

from __future__ import annotations

import threading
import time

from channels.exceptions import ChannelFull

from ._version import __version__
from .contract import BaseChannelEngine, EngineConfig
from .mailbox import Mailbox
from .validation import non_local_name

__all__ = ["MemoryEngine"]

# Full sweeps of expired messages and memberships run at most this often (seconds).
_SWEEP_INTERVAL = 1.0


class MemoryStore:
    """Messages and group memberships of one layer in one process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mailbox = Mailbox()
        #: group -> channel -> monotonic deadline of the membership (None: never)
        self.groups: dict[str, dict[str, float | None]] = {}
        self.next_sweep = 0.0


class MemoryEngine(BaseChannelEngine):
    """In-process channels and groups for tests and development."""

    name = "memory"
    version = __version__
    description = "In-process channels and groups, for tests and local development."
    extensions = ("groups", "flush")
    messages_leave_process = False

    shared: MemoryStore

    @classmethod
    def create_shared(cls, config: EngineConfig) -> MemoryStore:
        return MemoryStore()

    async def send(self, channel: str, message: bytes) -> None:
        store = self.shared
        queue = non_local_name(channel)
        capacity = self.config.capacity_for(channel)
        now = self._maintain()
        if store.mailbox.count(queue) >= capacity:
            # Expired messages still count until swept; sweep now before refusing.
            now = self._maintain(force=True)
        with store.lock:
            if store.mailbox.count(queue) >= capacity:
                raise ChannelFull(channel)
            store.mailbox.put([channel], message, now + self.config.expiry)

    async def receive(self, channel: str) -> bytes:
        self._maintain()
        return await self.shared.mailbox.get(channel)

    async def group_add(self, group: str, channel: str) -> None:
        expiry = self.config.group_expiry
        deadline = None if expiry is None else time.monotonic() + expiry
        with self.shared.lock:
            self.shared.groups.setdefault(group, {})[channel] = deadline

    async def group_discard(self, group: str, channel: str) -> None:
        with self.shared.lock:
            members = self.shared.groups.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self.shared.groups[group]

    async def group_send(self, group: str, message: bytes) -> int:
        store = self.shared
        now = self._maintain()
        expires_at = now + self.config.expiry
        by_queue: dict[str, list[str]] = {}
        with store.lock:
            for channel, deadline in store.groups.get(group, {}).items():
                if deadline is None or deadline > now:
                    by_queue.setdefault(non_local_name(channel), []).append(channel)
            written = 0
            for queue, channels in by_queue.items():
                if store.mailbox.count(queue) < self.config.capacity_for(queue):
                    store.mailbox.put(channels, message, expires_at)
                    written += 1
        self.events.count("group_send.dropped", len(by_queue) - written)
        return written

    async def flush(self) -> None:
        with self.shared.lock:
            self.shared.mailbox.clear()
            self.shared.groups.clear()

    def _maintain(self, *, force: bool = False) -> float:
        """Drop expired messages and memberships, at most once per sweep interval.

        A channel that had a message expire leaves every group, as the specification
        allows: its consumer has stopped reading.
        """
        store = self.shared
        now = time.monotonic()
        if now < store.next_sweep and not force:
            return now
        with store.lock:
            store.next_sweep = now + _SWEEP_INTERVAL
            store.mailbox.expire(now)
            gone = store.mailbox.drain_expired()
            for group, members in list(store.groups.items()):
                for channel, deadline in list(members.items()):
                    if channel in gone or (deadline is not None and deadline <= now):
                        del members[channel]
                if not members:
                    del store.groups[group]
        return now
