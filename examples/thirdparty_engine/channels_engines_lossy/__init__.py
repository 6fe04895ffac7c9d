"""An in-process engine that loses messages on purpose, for resilience testing.

Real transports lose messages: a process restarts, a buffer overflows, a connection
drops. ``ENGINE: "lossy"`` behaves like the memory engine except that it drops a chosen
share of messages, so that tests can check how consumers cope. It is also the example
engine of the channels_engines documentation: everything it uses is public API.
"""

from __future__ import annotations

import random
import threading
import time

from channels.exceptions import ChannelFull

from channels_engines import BaseChannelEngine, EngineConfig, Mailbox, Option, non_local_name

__all__ = ["LossyEngine"]
__version__ = "0.1.0"


def _share(value: float) -> str | None:
    """Check hook for drop_rate: the type is already checked, the range is ours."""
    return None if 0 <= value <= 1 else "a number from 0 to 1"


class LossyStore:
    """What every event loop of one layer shares: messages, groups, the random source."""

    def __init__(self, seed: int | None) -> None:
        self.lock = threading.Lock()
        self.mailbox = Mailbox()
        #: group -> channel -> monotonic deadline of the membership (None: never expires)
        self.groups: dict[str, dict[str, float | None]] = {}
        self.next_sweep = 0.0
        # Not for security: a seeded generator makes the drops reproducible.
        self.random = random.Random(seed)  # noqa: S311


class LossyEngine(BaseChannelEngine):
    """In-process channels and groups that drop ``drop_rate`` of the messages sent."""

    name = "lossy"
    version = __version__
    description = "In-process channels that drop a share of messages, for resilience tests."
    extensions = ("groups", "flush")
    options = {
        "drop_rate": Option(
            (float,),
            0.0,
            "Share of messages dropped, from 0 (none) to 1 (all).",
            check=_share,
            describe_as="a number from 0 to 1",
        ),
        "seed": Option(
            (int,),
            None,
            "Seed of the random choice of dropped messages; None: unseeded.",
            nullable=True,
        ),
    }

    shared: LossyStore

    @classmethod
    def create_shared(cls, config: EngineConfig) -> LossyStore:
        # One store per layer and process, whichever event loop uses it.
        return LossyStore(config.options["seed"])

    async def send(self, channel: str, message: bytes) -> None:
        store = self.shared
        queue = non_local_name(channel)
        capacity = self.config.capacity_for(channel)
        now = time.monotonic()
        with store.lock:
            self._sweep(now)
            if store.mailbox.count(queue) >= capacity:
                self._sweep(now, force=True)  # expired messages count until swept
                if store.mailbox.count(queue) >= capacity:
                    raise ChannelFull(channel)
            if not self._lose():
                store.mailbox.put([channel], message, now + self.config.expiry)

    async def receive(self, channel: str) -> bytes:
        # The mailbox never loses a message to a cancelled receive().
        return await self.shared.mailbox.get(channel)

    async def group_add(self, group: str, channel: str) -> None:
        expiry = self.config.group_expiry
        deadline = None if expiry is None else time.monotonic() + expiry
        with self.shared.lock:
            self.shared.groups.setdefault(group, {})[channel] = deadline

    async def group_discard(self, group: str, channel: str) -> None:
        with self.shared.lock:
            members = self.shared.groups.get(group, {})
            members.pop(channel, None)
            if not members:
                self.shared.groups.pop(group, None)

    async def group_send(self, group: str, message: bytes) -> None:
        store = self.shared
        now = time.monotonic()
        with store.lock:
            self._sweep(now)
            # Members whose channels share a capacity (one process's channels) get one
            # message between them, counted once. Each member may lose its copy.
            members = store.groups.get(group, {})
            by_queue: dict[str, list[str]] = {}
            for channel, deadline in list(members.items()):
                if deadline is not None and deadline <= now:
                    del members[channel]  # the membership lapsed
                elif not self._lose():
                    by_queue.setdefault(non_local_name(channel), []).append(channel)
            if not members:
                store.groups.pop(group, None)
            for queue, channels in by_queue.items():
                # group_send never raises ChannelFull: a member at capacity misses it.
                if store.mailbox.count(queue) < self.config.capacity_for(queue):
                    store.mailbox.put(channels, message, now + self.config.expiry)

    async def flush(self) -> None:
        with self.shared.lock:
            self.shared.mailbox.clear()
            self.shared.groups.clear()

    def _lose(self) -> bool:
        """Whether to drop one message (lock held: the generator is shared)."""
        rate: float = self.config.options["drop_rate"]
        return rate > 0 and self.shared.random.random() < rate

    def _sweep(self, now: float, *, force: bool = False) -> None:
        """Drop expired messages, at most once a second unless forced (lock held)."""
        store = self.shared
        if force or now >= store.next_sweep:
            store.next_sweep = now + 1.0
            store.mailbox.expire(now)
            store.mailbox.drain_expired()  # unused here; draining keeps the set small
