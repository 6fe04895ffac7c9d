"""Per-channel message buffers shared by every event loop of a process.

``async_to_sync`` runs each call in a new event loop, on another thread, so a message
taken from a server (or sent in-process) by one loop may be received by another. The
buffers are therefore guarded by a thread lock, and receivers wait on a future of their
own loop which producers resolve thread-safely. A message leaves its buffer only when a
receiver takes it synchronously, so a cancelled ``receive()`` never loses one: the wake-up
it was given passes on to the next receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence

from .validation import non_local_name

__all__ = ["Mailbox"]


class _Unit:
    """One message as counted against capacity, however many channels it was put on.

    A group message delivered to several process-specific channels of one process counts
    once against their shared capacity, as the specification's shared capacity intends.
    """

    __slots__ = ("queue", "remaining")

    def __init__(self, queue: str, remaining: int) -> None:
        self.queue = queue
        self.remaining = remaining


_Item = tuple[float, bytes, _Unit]


class Mailbox:
    """FIFO buffers of messages per channel, with waiting receivers.

    ``expires_at`` is a :func:`time.monotonic` deadline; an expired message is dropped
    instead of delivered, and its channel is remembered for :meth:`drain_expired`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffers: dict[str, deque[_Item]] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        # Receivers woken for a buffered message that have not yet taken it.
        self._promised: dict[str, set[asyncio.Future[None]]] = {}
        self._queued: Counter[str] = Counter()
        self._expired: set[str] = set()

    # Producers --------------------------------------------------------------------

    def put(self, channels: Sequence[str], message: bytes, expires_at: float) -> None:
        """Buffer one message for ``channels`` (all with the same non-local part), waking
        one receiver per channel. Callers check capacity first (:meth:`count`)."""
        with self._lock:
            self._put(channels, message, expires_at)

    def put_many(self, items: Iterable[tuple[Sequence[str], bytes, float]]) -> None:
        """Buffer several ``(channels, message, expires_at)`` at once, in order."""
        with self._lock:
            for channels, message, expires_at in items:
                self._put(channels, message, expires_at)

    def _put(self, channels: Sequence[str], message: bytes, expires_at: float) -> None:
        unit = _Unit(non_local_name(channels[0]), len(channels))
        self._queued[unit.queue] += 1
        for channel in channels:
            buffer = self._buffers.get(channel)
            if buffer is None:
                buffer = self._buffers[channel] = deque()
            buffer.append((expires_at, message, unit))
            self._wake_one(channel)

    # Receivers --------------------------------------------------------------------

    def take_nowait(self, channel: str) -> bytes | None:
        """The next unexpired message of ``channel``, or None."""
        with self._lock:
            return self._pop(channel, time.monotonic())

    async def get(self, channel: str) -> bytes:
        """Wait for and return the next unexpired message of ``channel``."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                message = self._pop(channel, time.monotonic())
                if message is not None:
                    return message
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.setdefault(channel, deque()).append(waiter)
            try:
                await waiter
            except BaseException:
                with self._lock:
                    self._keep_promise(channel, waiter)
                    self._discard_waiter(channel, waiter)
                    # A wake-up this receiver was given but cannot use goes to the next one.
                    if self._buffers.get(channel):
                        self._wake_one(channel)
                raise
            with self._lock:
                self._keep_promise(channel, waiter)

    # Inspection and maintenance ---------------------------------------------------

    def count(self, queue: str) -> int:
        """Messages buffered for channels whose non-local part is ``queue``.

        A message put on several channels of the queue at once counts once.
        """
        with self._lock:
            return self._queued.get(queue, 0)

    def waiting(self) -> dict[str, int]:
        """Channels that receivers are waiting on, with how many wait on each."""
        with self._lock:
            return {channel: len(waiters) for channel, waiters in self._waiters.items()}

    def waiting_on(self, channel: str, loop: asyncio.AbstractEventLoop | None = None) -> int:
        """Receivers waiting on ``channel`` (only those of ``loop``, when given)."""
        with self._lock:
            waiters = self._waiters.get(channel, ())
            if loop is None:
                return len(waiters)
            return sum(1 for waiter in waiters if waiter.get_loop() is loop)

    def unserved(self, channel: str) -> int:
        """Receivers of ``channel`` that no buffered message will serve: waiting ones,
        and woken ones that have not yet run, less the messages buffered for them."""
        with self._lock:
            waiting = len(self._waiters.get(channel, ())) + len(self._promised.get(channel, ()))
            buffer = self._buffers.get(channel)
            return waiting - (len(buffer) if buffer else 0)

    def buffered(self, channel: str) -> int:
        with self._lock:
            buffer = self._buffers.get(channel)
            return len(buffer) if buffer else 0

    def expire(self, now: float | None = None) -> None:
        """Drop every expired message and forget empty buffers."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for channel in list(self._buffers):
                buffer = self._buffers[channel]
                while buffer and buffer[0][0] <= now:
                    self._release(buffer.popleft()[2])
                    self._expired.add(channel)
                if not buffer:
                    del self._buffers[channel]

    def drain_expired(self) -> set[str]:
        """Channels that had a message expire since the last call."""
        with self._lock:
            expired, self._expired = self._expired, set()
            return expired

    def interrupt(self, loop: asyncio.AbstractEventLoop, error: BaseException) -> None:
        """Make every receiver waiting on ``loop`` raise ``error`` (call it from that loop)."""
        with self._lock:
            for waiters in self._waiters.values():
                for waiter in waiters:
                    if waiter.get_loop() is loop and not waiter.done():
                        waiter.set_exception(error)

    def clear(self) -> None:
        """Drop every buffered message; waiting receivers keep waiting."""
        with self._lock:
            self._buffers.clear()
            self._queued.clear()
            self._expired.clear()

    # Internals (lock held) --------------------------------------------------------

    def _pop(self, channel: str, now: float) -> bytes | None:
        buffer = self._buffers.get(channel)
        while buffer:
            expires_at, message, unit = buffer.popleft()
            self._release(unit)
            if not buffer:
                del self._buffers[channel]
            if expires_at > now:
                return message
            self._expired.add(channel)
        return None

    def _release(self, unit: _Unit) -> None:
        unit.remaining -= 1
        if unit.remaining == 0:
            self._queued[unit.queue] -= 1
            if self._queued[unit.queue] <= 0:
                del self._queued[unit.queue]

    def _keep_promise(self, channel: str, waiter: asyncio.Future[None]) -> None:
        promised = self._promised.get(channel)
        if promised is not None:
            promised.discard(waiter)
            if not promised:
                del self._promised[channel]

    def _wake_one(self, channel: str) -> None:
        waiters = self._waiters.get(channel)
        while waiters:
            waiter = waiters.popleft()
            if _wake(waiter):
                self._promised.setdefault(channel, set()).add(waiter)
                break
        if waiters is not None and not waiters:
            del self._waiters[channel]

    def _discard_waiter(self, channel: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(channel)
        if waiters is None:
            return
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)
        if not waiters:
            del self._waiters[channel]


def _wake(waiter: asyncio.Future[None]) -> bool:
    """Resolve ``waiter`` from any thread; False if it can no longer be woken."""
    if waiter.done():
        return False
    loop = waiter.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        waiter.set_result(None)
        return True
    try:
        loop.call_soon_threadsafe(_resolve, waiter)
    except RuntimeError:  # that loop is closed; its receiver is gone
        return False
    return True


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
