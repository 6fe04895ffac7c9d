"""Process-local half of the raw floors: channel names, queues and group members.

A raw floor process listens on ONE topic of its own (plus one topic per group it has
members in) and routes by the local part of the channel name, so 500 channels cost one
LISTEN/SUBSCRIBE, not 500. This mirrors what a real layer must do and keeps the floor
honest: the server work is one notification per message per process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import Coroutine
from typing import Any

import msgpack

Message = dict[str, Any]


def pack(message: Message) -> bytes:
    """Serialize like the layers do (msgpack, bin type)."""
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def unpack(data: bytes) -> Message:
    """Inverse of `pack`."""
    message: Message = msgpack.unpackb(data, raw=False)
    return message


def pack_text(message: Message) -> str:
    """msgpack as base64 text, because a NOTIFY payload is text."""
    return base64.b64encode(pack(message)).decode("ascii")


def unpack_text(data: str) -> Message:
    """Inverse of `pack_text`."""
    return unpack(base64.b64decode(data))


def split_channel(channel: str) -> tuple[str, str]:
    """ "<topic>!<local>" -> (topic, local)."""
    topic, _, local = channel.partition("!")
    return topic, local


def group_topic(group: str) -> str:
    """A short, identifier-safe topic per group (NOTIFY channels stop at 63 bytes)."""
    return "bench_g_" + hashlib.blake2b(group.encode(), digest_size=12).hexdigest()


class LocalRouter:
    """Per-process queues for channels and group members."""

    def __init__(self) -> None:
        self.topic = "bench_" + uuid.uuid4().hex[:20]
        self._queues: dict[str, asyncio.Queue[Message]] = {}
        self._members: dict[str, set[str]] = {}

    def new_channel(self) -> str:
        """A process-specific channel name routed through this process' topic."""
        return f"{self.topic}!{uuid.uuid4().hex[:16]}"

    def queue(self, channel: str) -> asyncio.Queue[Message]:
        """The local queue of a channel, created on first use."""
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = asyncio.Queue()
        return queue

    def add_member(self, group: str, channel: str) -> None:
        """Record a local member of a group."""
        self._members.setdefault(group_topic(group), set()).add(channel)

    @property
    def group_topics(self) -> list[str]:
        """Topics this process must listen on for its groups."""
        return list(self._members)

    def deliver(self, local: str, message: Message) -> None:
        """Route a message for one of this process' channels."""
        self.queue(f"{self.topic}!{local}").put_nowait(message)

    def deliver_group(self, topic: str, message: Message) -> None:
        """Fan a group message out to the local members (one notification per process)."""
        for channel in self._members.get(topic, ()):
            self.queue(channel).put_nowait(message)


class RawFloor:
    """What both raw floors share: local routing, and one reader task per process.

    Subclasses send with one NOTIFY/PUBLISH per call and implement :meth:`_listen`.
    """

    extensions = ["groups", "flush"]

    def __init__(self, *, per_call_connections: bool) -> None:
        self._per_call = per_call_connections
        self._router = LocalRouter()
        self._reader: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None

    async def new_channel(self, prefix: str = "specific") -> str:
        """A process-specific channel (the prefix is irrelevant to the floor)."""
        return self._router.new_channel()

    async def group_add(self, group: str, channel: str) -> None:
        """Local membership; must happen before the first receive (one subscription)."""
        if self._reader is not None:
            raise RuntimeError("raw floor: group_add after the first receive is not supported")
        self._router.add_member(group, channel)

    async def receive(self, channel: str) -> Message:
        """Wait on the channel's local queue, subscribing first if needed."""
        if self._reader is None:
            async with self._get_lock():
                if self._reader is None:
                    self._reader = asyncio.create_task(await self._listen())
        return await self._router.queue(channel).get()

    async def flush(self) -> None:
        """Nothing is stored, so nothing to flush."""

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _listen(self) -> Coroutine[Any, Any, None]:
        """Subscribe to this process' topic and its group topics; return the reader loop."""
        raise NotImplementedError
