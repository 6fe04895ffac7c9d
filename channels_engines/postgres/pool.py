"""A small bounded connection pool with no background tasks.

Connections are opened by the task that needs one, checked only when they have been idle
for a while, and closed by whoever finds them unusable. Nothing runs in the background, so
nothing is left behind when ``asyncio.run`` or ``async_to_sync`` ends its event loop: the
workers of psycopg_pool's async pool catch cancellation while connecting and can keep such
a loop from ever finishing its shutdown.

An :class:`IdleHandoff` carries idle connections from the pool of an event loop that is
closing to the pool of the next loop, so that ``async_to_sync`` calls, each on a new
loop, do not each open a server connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import select
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

from .deadlines import answers_within

__all__ = ["ConnectFailed", "ConnectionPool", "IdleHandoff", "PoolClosed", "PoolTimeout"]

logger = logging.getLogger("channels_engines.postgres")

Connection = AsyncConnection[tuple[Any, ...]]
#: Opens a connection, given the seconds the caller has left.
Connect = Callable[[float], Awaitable[Connection]]


class PoolTimeout(psycopg.OperationalError):
    """No connection could be had within the pool timeout."""


class PoolClosed(psycopg.OperationalError):
    """The pool was closed."""


class ConnectFailed(psycopg.OperationalError):
    """No connection could be opened to ``target`` within ``seconds``, and the failures
    said nothing against the settings or the login: the server is down, unreachable or
    refusing connections for now. Raised from the last failure, with its message, so that
    the engine's own code still sees a psycopg error; the engine turns it into
    :class:`~channels_engines.ServerUnavailableError` for its callers."""

    def __init__(self, cause: BaseException, *, target: str, seconds: float, setting: str):
        super().__init__(str(cause))
        self.target = target
        self.seconds = seconds
        #: The setting that bounds the wait, for messages.
        self.setting = setting


@dataclass
class _Entry:
    conn: Connection
    generation: int
    expires_at: float
    returned_at: float = field(default_factory=time.monotonic)


class IdleHandoff:
    """Idle connections left by a closing event loop's pool for the next loop's pool.

    At most ``limit`` are kept, for any number of threads. A connection is taken only with
    the same ``tag`` it was left with (the credentials it logged in with); others are
    closed. Whatever is still here when the hand-off is garbage-collected or the process
    exits is closed, except in a forked child, whose inherited sockets belong to the
    parent.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._entries: list[tuple[_Entry, object]] = []
        weakref.finalize(self, _close_entries, self._entries, os.getpid())

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entries: list[_Entry], tag: object) -> list[_Entry]:
        """Keep what fits; return the rest, for the caller to close."""
        with self._lock:
            room = max(0, self._limit - len(self._entries))
            self._entries.extend((entry, tag) for entry in entries[:room])
        return entries[room:]

    def take(self, tag: object) -> _Entry | None:
        """The connection left last with ``tag``; those left with another tag are closed."""
        with self._lock:
            stale = [entry for entry, left_with in self._entries if left_with is not tag]
            self._entries[:] = [item for item in self._entries if item[1] is tag]
            entry = self._entries.pop()[0] if self._entries else None
        _close_entries([(old, None) for old in stale], os.getpid())
        return entry

    def clear(self) -> None:
        """Close every connection kept here."""
        with self._lock:
            entries, self._entries[:] = list(self._entries), []
        _close_entries(entries, os.getpid())


def _close_entries(entries: list[tuple[_Entry, object]], owner_pid: int) -> None:
    if os.getpid() != owner_pid:
        return  # a forked child: the sockets are the parent's sessions
    for entry, _ in entries:
        _close_now(entry.conn)


def _close_now(conn: Connection) -> None:
    """Close without awaiting: nothing runs on an idle connection, so nothing is cut."""
    if not conn.closed:
        conn.pgconn.finish()


def _loop_free(conn: Connection) -> bool:
    """Whether ``conn`` can move to another event loop: its lock never had to wait, so
    it is bound to no loop (asyncio primitives bind to a loop on first contention)."""
    return getattr(conn.lock, "_loop", None) is None


class ConnectionPool:
    """At most ``max_size`` autocommit connections, opened on demand.

    ``check_after``: an idle connection older than this is checked with ``SELECT 1``
    before use (the server may have ended it, e.g. through idle_session_timeout).
    ``max_idle``: idle connections beyond ``min_size`` are closed after this long.
    ``max_lifetime``: connections are replaced after about this long (±10 %).
    ``handoff``: where :meth:`close` with ``hand_off=True`` leaves idle connections, and
    where the pool looks before opening one; ``tag()`` names the login they belong to.
    ``on_size(delta)`` is told every change of :attr:`size` (for the connections metric).
    """

    def __init__(
        self,
        connect: Connect,
        *,
        min_size: int,
        max_size: int,
        timeout: float,
        check_after: float,
        max_idle: float = 600.0,
        max_lifetime: float = 3600.0,
        describe: str = "",
        handoff: IdleHandoff | None = None,
        tag: Callable[[], object] = lambda: None,
        on_size: Callable[[int], None] | None = None,
    ) -> None:
        self._connect = connect
        self._on_size = on_size
        self._held = 0
        self._handoff = handoff
        self._tag = tag
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._check_after = check_after
        self._max_idle = max_idle
        self._max_lifetime = max_lifetime
        self._describe = describe
        self._idle: list[_Entry] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._generation = 0
        self._closed = False
        #: Counters for tests and future metrics.
        self.stats = {"connections_opened": 0, "connection_errors": 0, "timeouts": 0}

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return self._held

    @property
    def _size(self) -> int:
        return self._held

    @_size.setter
    def _size(self, value: int) -> None:
        delta, self._held = value - self._held, value
        if delta and self._on_size is not None:
            self._on_size(delta)

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Connection]:
        """A connection, waited for at most ``timeout`` seconds (default: the pool's)."""
        entry = await self._acquire(self._timeout if timeout is None else timeout)
        try:
            yield entry.conn
        finally:
            await self._release(entry)

    async def drain(self) -> None:
        """Replace every connection: idle ones now, those in use when returned."""
        self._generation += 1
        if self._handoff is not None:
            self._handoff.clear()
        idle, self._idle = self._idle, []
        for entry in idle:
            await self._discard(entry)

    async def close(self, *, hand_off: bool = False) -> None:
        """Close idle connections now and those in use when returned; refuse new work.

        With ``hand_off``, idle connections go to the hand-off instead, as many as it
        keeps, for the pool of the next event loop.
        """
        self._closed = True
        if hand_off and self._handoff is not None:
            now = time.monotonic()
            usable = [
                entry
                for entry in self._idle
                if entry.generation == self._generation
                and now < entry.expires_at
                and not entry.conn.closed
                and _loop_free(entry.conn)
            ]
            self._idle = [entry for entry in self._idle if entry not in usable]
            kept = len(usable) - len(rest := self._handoff.put(usable, self._tag()))
            self._size -= kept
            self._idle += rest
        else:
            self._generation += 1
            if self._handoff is not None:
                self._handoff.clear()
        idle, self._idle = self._idle, []
        for entry in idle:
            await self._discard(entry)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def expire_idle(self) -> None:
        """Close connections idle longer than ``max_idle``, keeping ``min_size``."""
        now = time.monotonic()
        keep: list[_Entry] = []
        stale: list[_Entry] = []
        for entry in reversed(self._idle):  # most recently used first
            if len(keep) < self._min_size or now - entry.returned_at < self._max_idle:
                keep.append(entry)
            else:
                stale.append(entry)
        self._idle = list(reversed(keep))
        for entry in stale:
            await self._discard(entry)

    # Internals ---------------------------------------------------------------------

    async def _acquire(self, timeout: float) -> _Entry:
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise PoolClosed("the channel layer's connection pool is closed")
            entry = await self._take_idle() or await self._adopt()
            if entry is not None:
                return entry
            if self._size < self._max_size:
                self._size += 1
                try:
                    conn = await self._open(deadline)
                except BaseException:
                    self._size -= 1
                    self._wake_one()
                    raise
                lifetime = self._max_lifetime * random.uniform(0.9, 1.1)  # noqa: S311
                return _Entry(conn, self._generation, time.monotonic() + lifetime)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stats["timeouts"] += 1
                raise PoolTimeout(
                    f"no connection to {self._describe} became free within "
                    f"{timeout:g} s ({self._size} in use, {len(self._waiters)} waiting); "
                    "raise CONFIG['pool_max_size'] or CONFIG['pool_timeout']."
                )
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                pass
            except BaseException:
                # A wake-up this caller cannot use goes to the next one.
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def _take_idle(self) -> _Entry | None:
        now = time.monotonic()
        while self._idle:
            entry = self._idle.pop()
            if (
                entry.generation != self._generation
                or now >= entry.expires_at
                or entry.conn.closed
                or _has_input(entry.conn)
            ):
                await self._discard(entry)
                continue
            if now - entry.returned_at > self._check_after:
                try:
                    healthy = await answers_within(entry.conn, self._timeout)
                except BaseException as exc:
                    # The entry is out of the idle list: whatever ended the check (a
                    # failure, or the caller being cancelled), it is closed, not lost.
                    await self._discard(entry)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                if not healthy:
                    await self._discard(entry)
                    continue
            return entry
        return None

    async def _adopt(self) -> _Entry | None:
        """A connection from the hand-off, checked like an idle one of this pool."""
        while self._handoff is not None and self._size < self._max_size:
            entry = self._handoff.take(self._tag())
            if entry is None:
                return None
            self._size += 1
            entry.generation = self._generation
            self._idle.append(entry)
            taken = await self._take_idle()
            if taken is not None:
                return taken
        return None

    async def _open(self, deadline: float) -> Connection:
        """Connect, retrying with back-off until ``deadline`` (the server may be restarting)."""
        delay = 0.05
        while True:
            try:
                conn = await self._connect(max(deadline - time.monotonic(), 0.0))
            except Exception as exc:
                self.stats["connection_errors"] += 1
                remaining = deadline - time.monotonic()
                if not _retryable(exc):
                    raise
                if remaining <= delay:
                    raise ConnectFailed(
                        exc, target=self._describe, seconds=self._timeout, setting="pool_timeout"
                    ) from exc
                logger.debug("Connecting to %s failed (%s); retrying.", self._describe, exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311
                delay = min(delay * 2, 1.0)
                continue
            self.stats["connections_opened"] += 1
            return conn

    async def _release(self, entry: _Entry) -> None:
        conn = entry.conn
        reusable = (
            not self._closed
            and not conn.closed
            and entry.generation == self._generation
            and conn.info.transaction_status == TransactionStatus.IDLE
        )
        if reusable:
            entry.returned_at = time.monotonic()
            self._idle.append(entry)
        else:
            # A caller cancelled mid-statement, a broken connection, or a drain: the
            # connection's state is unknown or unwanted, so it goes.
            await self._discard(entry)
        self._wake_one()

    async def _discard(self, entry: _Entry) -> None:
        self._size -= 1
        try:
            with contextlib.suppress(Exception):
                await entry.conn.close()
        finally:
            if not entry.conn.closed:  # close() was cancelled: end the session anyway
                entry.conn.pgconn.finish()

    def _wake_one(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return


def _has_input(conn: Connection) -> bool:
    """Whether the server sent something to an idle connection.

    Nothing is expected between statements, so input means the session ended (a restart,
    pg_terminate_backend, idle_session_timeout: an error message and end of file) or
    something unusual happened; either way the connection is replaced. One non-blocking
    poll, no round trip.
    """
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _retryable(exc: Exception) -> bool:
    """Connection failures worth retrying: the server is unreachable, restarting or out of
    connection slots, not refusing the login (retrying a wrong password only adds failed
    logins) nor missing the database."""
    from .connection import Failure, classify

    return isinstance(exc, psycopg.OperationalError) and classify(exc) is Failure.TRANSIENT
