"""The LISTEN connection: one per engine, kept alive, reconnected, never silently dead.

Notifications are only wake-ups: what a process receives is whatever it claims from the
message table afterwards. So after every (re)connect the listener first LISTENs (in
autocommit, so the registration is committed) and only then asks the engine to claim what
arrived while it was away; a notification lost in between cannot lose a message.

Wake-ups are handled on the listener's own connection: it leaves its wait after each
packet of notifications (so none is dropped), claims the rows they announce, and waits
again. New identifiers are LISTENed between waits; to shorten a wait for that, the engine
sends a notification on this listener's private control identifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

import psycopg

from .deadlines import answers_within, within

__all__ = ["Listener", "ListenerUnavailable"]

logger = logging.getLogger("channels_engines.postgres")

# Reconnection back-off: first retry after 50 ms, doubling up to 2 s, with ±20 % jitter.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
# While reconnection keeps failing, repeat the warning this often (seconds).
_STILL_FAILING_EVERY = 60.0


class ListenerUnavailable(psycopg.OperationalError):
    """The listener connection cannot receive notifications as configured."""


Connection = psycopg.AsyncConnection[tuple[object, ...]]
Connect = Callable[[], Awaitable[Connection]]


class Listener:
    """Owns the LISTEN connection of one engine (one per event loop)."""

    def __init__(
        self,
        *,
        connect: Connect,
        control: str,
        poke: Callable[[str, str], Awaitable[None]],
        on_wake: Callable[[Connection, list[tuple[str, str]]], Awaitable[None]],
        on_listening: Callable[[Iterable[str]], None],
        on_connect: Callable[[Connection], Awaitable[None]],
        chores_in: Callable[[], float | None],
        chores: Callable[[Connection], Awaitable[None]],
        on_lost: Callable[[str], None],
        on_back: Callable[[Connection, float], Awaitable[None]],
        heartbeat: float,
        heartbeat_timeout: float,
        query_timeout: float,
        check_timeout: float,
        describe: str,
        on_connection: Callable[[int], None] | None = None,
    ) -> None:
        self._on_connection = on_connection
        self._held: Connection | None = None
        self._connect = connect
        self._control = control
        self._poke = poke
        self._on_wake = on_wake
        self._on_listening = on_listening
        self._on_connect = on_connect
        self._chores_in = chores_in
        self._chores = chores
        self._on_lost = on_lost
        self._on_back = on_back
        self._heartbeat = heartbeat
        self._heartbeat_timeout = heartbeat_timeout
        self._query_timeout = query_timeout
        self._check_timeout = check_timeout
        self._describe = describe
        self._wanted: set[str] = {control}
        self._listened: set[str] = set()
        self._unwanted: set[str] = set()
        self._connected = False
        self._poking = False
        self._swap = False
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._conn: Connection | None = None
        #: Number of times the connection was lost and re-established (for tests and stats).
        self.reconnects = 0
        #: Backend PID of the current connection, or None.
        self.backend_pid: int | None = None

    @property
    def _conn(self) -> Connection | None:
        return self._held

    @_conn.setter
    def _conn(self, conn: Connection | None) -> None:
        # Told to on_connection (+1, -1) for the connections metric.
        before, self._held = self._held is not None, conn
        if self._on_connection is not None and before != (conn is not None):
            self._on_connection(1 if conn is not None else -1)

    # Control -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="channels_engines listener"
        )
        self._task.add_done_callback(self._finished)

    async def ready(self) -> None:
        """Wait until the first connection LISTENs and has heard itself; raise if it cannot."""
        await asyncio.shield(self._ready)

    @property
    def listening(self) -> frozenset[str]:
        """The identifiers the current connection LISTENs on."""
        return frozenset(self._listened)

    @property
    def failed(self) -> bool:
        return self._ready.done() and self._ready.exception() is not None

    def watch(self, identifiers: Iterable[str]) -> None:
        """LISTEN on ``identifiers`` too, now if connected, else on the next connection."""
        new = set(identifiers) - self._wanted
        if not new:
            return
        self._wanted |= new
        if self._connected and not self._poking:
            self._poking = True
            task = asyncio.get_running_loop().create_task(self._send_poke())
            task.add_done_callback(_log_failure)

    def unwatch(self, identifiers: Iterable[str]) -> None:
        """Stop listening on ``identifiers`` (at the next wake-up or heartbeat)."""
        gone = set(identifiers) & self._wanted - {self._control}
        self._wanted -= gone
        self._unwanted |= gone & self._listened
        if self._unwanted and self._connected and not self._poking:
            self._poking = True
            task = asyncio.get_running_loop().create_task(self._send_poke())
            task.add_done_callback(_log_failure)

    def replace_connection(self) -> None:
        """Move to a new connection (new credentials), listening on it before the old
        one closes so no notification falls between them."""
        self._swap = True
        if self._connected and not self._poking:
            self._poking = True
            task = asyncio.get_running_loop().create_task(self._send_poke())
            task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_connection()
        if not self._ready.done():
            self._ready.set_exception(ListenerUnavailable("the channel layer was closed"))
            self._ready.exception()  # retrieved: nobody may be waiting

    # The connection loop ------------------------------------------------------------

    async def _send_poke(self) -> None:
        try:
            await self._poke(self._control, "listen")
        finally:
            self._poking = False

    async def _run(self) -> None:
        failing_since: float | None = None
        last_warning = 0.0
        attempt = 0
        while True:
            try:
                self._conn = await self._connect()
                await self._listen(self._wanted)
                # What arrived while nothing listened is claimed from here on: the
                # claims start before any notification is read, so that a message
                # carried by a notification never overtakes an older row.
                self._on_listening(self._listened)
                if not self._ready.done():
                    await self._check_delivery()
                    self._ready.set_result(None)
                away = None
                if failing_since is not None:
                    self.reconnects += 1
                    away = time.monotonic() - failing_since
                    logger.info(
                        "Listener connection to %s re-established after %.1f s (%d attempts).",
                        self._describe,
                        away,
                        attempt,
                    )
                failing_since, attempt = None, 0
                # What changed while no notification could reach this connection.
                await self._on_connect(self._conn)
                if away is not None:
                    await self._on_back(self._conn, away)
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._connected = False
                await self._close_connection()
                if not self._ready.done():
                    # Nothing has worked yet: the cause is most likely configuration, so
                    # the receive() that started the listener gets the error.
                    self._ready.set_exception(exc)
                    return
                now = time.monotonic()
                if failing_since is None:
                    failing_since, last_warning = now, now
                    logger.warning(
                        "Listener connection to %s lost (%s); reconnecting. Waiting "
                        "receive() calls keep waiting.",
                        self._describe,
                        _reason(exc),
                    )
                    self._on_lost(_reason(exc))
                elif now - last_warning >= _STILL_FAILING_EVERY:
                    last_warning = now
                    logger.warning(
                        "Listener connection to %s still failing after %.0f s (%s).",
                        self._describe,
                        now - failing_since,
                        _reason(exc),
                    )
                else:
                    logger.debug("Listener reconnection attempt failed: %s", _reason(exc))
                delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt)
                attempt += 1
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311

    async def _listen(self, identifiers: Iterable[str]) -> None:
        conn = self._conn
        assert conn is not None
        new = sorted(set(identifiers))
        if new:
            # Identifiers are fixed-format hashes ('ce_' + hex): safe as bare words.
            statement = "; ".join(f"LISTEN {name}" for name in new)
            await within(conn, conn.execute(statement), self._query_timeout, "LISTEN")
        self._listened |= set(new)
        self._connected = True
        self.backend_pid = conn.info.backend_pid

    async def _check_delivery(self) -> None:
        """Prove notifications reach this connection, or explain why they cannot.

        Behind a pooler in transaction mode (PgBouncer), LISTEN runs on a server
        connection this client does not keep: the notification never arrives.
        """
        conn = self._conn
        assert conn is not None
        # A random payload: a notification forged by another session cannot pass for it.
        expected = f"check:{secrets.token_hex(8)}"
        await self._poke(self._control, expected)
        deadline = time.monotonic() + self._check_timeout
        woken: list[tuple[str, str]] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ListenerUnavailable(
                        f"The listener connection to {self._describe} did not receive its own "
                        f"notification within {self._check_timeout:g} s. LISTEN needs a direct or "
                        "session-mode connection to PostgreSQL: a pooler in transaction mode "
                        "(PgBouncer pool_mode=transaction) drops notifications, and standbys "
                        "cannot LISTEN. Point CONFIG['listen_dsn'] (or 'listen_connection') at "
                        "the primary server directly."
                    )
                heard = False
                # The whole packet is read, even past the check: leaving the stream
                # early would drop the notifications that came with it.
                async for note in conn.notifies(timeout=remaining, stop_after=1):
                    if note.channel == self._control and note.payload == expected:
                        heard = True
                    elif note.channel != self._control:
                        woken.append((note.channel, note.payload))
                if heard:
                    return
        finally:
            if woken:
                await self._on_wake(conn, woken)

    async def _serve(self) -> None:
        """Wait for notifications until the connection fails; heartbeat when idle."""
        while True:
            if self._swap:
                await self._replace()
            conn = self._conn
            assert conn is not None
            pending = self._wanted - self._listened
            if pending:
                await self._listen(pending)
                self._on_listening(pending)
            if self._unwanted:
                await self._unlisten(conn)
            chores_in = self._chores_in()
            if chores_in is not None and chores_in <= 0:
                await self._chores(conn)
                continue
            wait = self._heartbeat if chores_in is None else min(chores_in, self._heartbeat)
            woken: list[tuple[str, str]] = []
            heard = False
            # stop_after=1 ends the wait after one packet of notifications, all of it
            # delivered: nothing is dropped by leaving the stream. They are handed on in
            # the order the server sent them (the order their transactions committed).
            async for note in conn.notifies(timeout=wait, stop_after=1):
                heard = True
                if note.channel != self._control:
                    woken.append((note.channel, note.payload))
            if heard:
                if woken:
                    await self._on_wake(conn, woken)
                continue
            if chores_in is not None:
                continue  # the chores are due now (the loop runs them)
            # Idle: prove the server still answers (keepalives do not detect a hung
            # backend or a proxy that stopped forwarding). It also keeps an
            # idle_session_timeout from ending the session.
            await self._heartbeat_once(conn)

    async def _unlisten(self, conn: Connection) -> None:
        gone = sorted(self._unwanted & self._listened - self._wanted)
        self._unwanted.clear()
        if gone:
            statement = "; ".join(f"UNLISTEN {name}" for name in gone)
            await within(conn, conn.execute(statement), self._query_timeout, "UNLISTEN")
            self._listened -= set(gone)

    async def _heartbeat_once(self, conn: Connection) -> None:
        if not await answers_within(conn, self._heartbeat_timeout):
            raise TimeoutError(
                f"the server did not answer the listener's heartbeat within "
                f"{self._heartbeat_timeout:g} s"
            )

    async def _replace(self) -> None:
        """Make-before-break: the new connection LISTENs before the old one closes."""
        self._swap = False
        try:
            new = await self._connect()
        except Exception as exc:
            logger.warning(
                "Could not open a new listener connection to %s (%s); keeping the current one.",
                self._describe,
                _reason(exc),
            )
            return
        old, self._conn = self._conn, new
        listened, self._listened = set(self._listened), set()
        try:
            await self._listen(listened | self._wanted)
        except BaseException:
            self._conn, self._listened = old, listened
            with contextlib.suppress(Exception):
                await new.close()
            raise
        self._on_listening(self._listened)
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._listened.clear()
        self.backend_pid = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._ready.done():
            logger.error("Listener task of %s stopped unexpectedly", self._describe, exc_info=exc)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("Could not wake the listener: %s", _reason(task.exception()))  # type: ignore[arg-type]
