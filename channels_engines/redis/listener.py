"""The pub/sub connection: one per engine that receives, kept alive, reconnected, never
silently dead.

Announcements only say "look" (or carry a message that is also stored): what a process
receives is in the streams. So after every (re)connect the listener first subscribes and
waits for the server to confirm each subscription, and only then asks the engine to read
what arrived while it was away; an announcement lost in between cannot lose a message.

Between messages, silence longer than ``heartbeat`` is answered with a PING; no answer
within ``heartbeat_timeout`` (a paused server, a silent network) replaces the connection.

In a cluster the engine has a listener per node it hears from, on sharded channels. A
node that stops serving a channel's slot (moved, failed over) unsubscribes it, or
answers ``MOVED`` to the subscription: the listener gives the channel back to the
engine (``on_moved``), which subscribes it where the slot is now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .servers import redirection, slot_of

__all__ = ["Listener"]

# What _read() returns for a MOVED answer it handled.
_MOVED = object()

logger = logging.getLogger("channels_engines.redis")

# Reconnection back-off: first retry after 50 ms, doubling up to 2 s, with jitter.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
# While reconnection keeps failing, repeat the warning this often (seconds).
_STILL_FAILING_EVERY = 60.0


class Listener:
    """Owns the pub/sub connection of one engine (one per event loop)."""

    def __init__(
        self,
        *,
        connect: Callable[[], Awaitable[Any]],
        on_message: Callable[[str, bytes], None],
        on_subscribed: Callable[[Iterable[str]], None],
        on_lost: Callable[[str], None],
        on_back: Callable[[float], None],
        heartbeat: float,
        heartbeat_timeout: float,
        describe: str,
        sharded: Callable[[str], bool] = lambda channel: False,
        on_moved: Callable[[list[str]], None] = lambda channels: None,
    ) -> None:
        self._connect = connect
        self._sharded = sharded
        self._on_moved = on_moved
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._on_back = on_back
        self._heartbeat = heartbeat
        self._heartbeat_timeout = heartbeat_timeout
        self._describe = describe
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()
        self._conn: Any = None
        self._up = False
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Number of times the connection was lost and re-established (for tests).
        self.reconnects = 0

    # Control -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="channels_engines redis listener"
            )

    @property
    def failed(self) -> bool:
        """The first connection failed: the listener stopped and reported it."""
        return self._ready.done() and self._ready.exception() is not None

    @property
    def is_ready(self) -> bool:
        """The first connection has subscribed (:meth:`ready` would return at once)."""
        return self._ready.done() and self._ready.exception() is None

    async def ready(self) -> None:
        """Wait until the first connection has subscribed (or raise why it could not)."""
        await asyncio.shield(self._ready)

    @property
    def connected(self) -> bool:
        """Whether the connection is up and has subscribed (not reconnecting)."""
        return self._conn is not None and self._up

    @property
    def subscribed(self) -> frozenset[str]:
        return frozenset(self._confirmed)

    def watch(self, channels: Iterable[str]) -> None:
        """Subscribe to ``channels`` too (now, if connected)."""
        new = set(channels) - self._wanted
        if not new:
            return
        self._wanted |= new
        conn = self._conn
        if conn is not None:
            task = asyncio.get_running_loop().create_task(self._send(True, new))
            task.add_done_callback(_log_failure)

    def unwatch(self, channels: Iterable[str]) -> None:
        gone = set(channels) & self._wanted
        if not gone:
            return
        self._wanted -= gone
        self._confirmed -= gone
        if self._conn is not None:
            task = asyncio.get_running_loop().create_task(self._send(False, gone))
            task.add_done_callback(_log_failure)

    def wants(self, channel: str) -> bool:
        return channel in self._wanted

    def wants_any(self, exclude: str) -> bool:
        """Whether it subscribes to anything but ``exclude``."""
        return bool(self._wanted - {exclude})

    @property
    def wanted(self) -> frozenset[str]:
        """The channels this listener subscribes to."""
        return frozenset(self._wanted)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_connection()
        if not self._ready.done():
            from ..exceptions import ChannelLayerClosed

            self._ready.set_exception(ChannelLayerClosed("the channel layer was closed"))
            self._ready.exception()  # retrieved: nobody may be waiting

    def replace_connection(self) -> None:
        """Drop the connection (new credentials, say); the loop makes a new one."""
        conn = self._conn
        if conn is not None:
            task = asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))
            task.add_done_callback(_log_failure)

    # The connection loop ------------------------------------------------------------

    async def _send(self, subscribe: bool, channels: Iterable[str]) -> None:
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection: the loop reconnects
                await self._write(conn, subscribe, channels)

    async def _write(self, conn: Any, subscribe: bool, channels: Iterable[str]) -> None:
        """(Un)subscribe: plain channels in one command; sharded ones one by one (a
        command's channels must share a slot)."""
        plain = sorted(c for c in channels if not self._sharded(c))
        sharded = sorted(c for c in channels if self._sharded(c))
        commands: list[tuple[str, ...]] = []
        if plain:
            commands.append(("SUBSCRIBE" if subscribe else "UNSUBSCRIBE", *plain))
        commands += [("SSUBSCRIBE" if subscribe else "SUNSUBSCRIBE", c) for c in sharded]
        if commands:
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _run(self) -> None:
        failing_since: float | None = None
        last_warning = 0.0
        attempt = 0
        while True:
            try:
                self._conn = await self._connect()
                self._confirmed = set()
                await self._subscribe()
                self._up = True
                if not self._ready.done():
                    self._ready.set_result(None)
                if failing_since is not None:
                    self.reconnects += 1
                    away = time.monotonic() - failing_since
                    logger.info(
                        "Pub/sub connection to %s re-established after %.1f s (%d attempts).",
                        self._describe,
                        away,
                        attempt,
                    )
                    self._on_back(away)
                failing_since, attempt = None, 0
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._up = False
                await self._close_connection()
                if not self._ready.done():
                    # Nothing has worked yet: most likely the settings; the receive()
                    # that started the listener gets the error.
                    self._ready.set_exception(exc)
                    return
                now = time.monotonic()
                if failing_since is None:
                    failing_since, last_warning = now, now
                    logger.warning(
                        "Pub/sub connection to %s lost (%s); reconnecting. Waiting "
                        "receive() calls keep waiting.",
                        self._describe,
                        _reason(exc),
                    )
                    self._on_lost(_reason(exc))
                elif now - last_warning >= _STILL_FAILING_EVERY:
                    last_warning = now
                    logger.warning(
                        "Pub/sub connection to %s still failing after %.0f s (%s).",
                        self._describe,
                        now - failing_since,
                        _reason(exc),
                    )
                attempt += 1
                pause = min(_BACKOFF_FIRST * 2 ** (attempt - 1), _BACKOFF_MAX)
                await asyncio.sleep(pause * random.uniform(0.8, 1.2))  # noqa: S311

    async def _subscribe(self) -> None:
        """Subscribe to every wanted channel and wait for the confirmations; then the
        engine reads what may have arrived before."""
        conn = self._conn
        await self._write(conn, True, self._wanted)
        deadline = time.monotonic() + self._heartbeat_timeout + self._heartbeat
        while not self._wanted <= self._confirmed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the server did not confirm the subscriptions")
            reply = await self._read(conn, left)
            if reply is not None and reply is not _MOVED:
                self._handle(reply)

    async def _read(self, conn: Any, timeout: float) -> Any:
        """The next reply (None: none within ``timeout``); a ``MOVED`` answer to a
        subscription gives its channels back (and reads as :data:`_MOVED`)."""
        from redis.exceptions import ResponseError

        try:
            return await conn.read_response(timeout=timeout, disconnect_on_error=False)
        except ResponseError as exc:
            found = redirection(exc)
            if found is None:
                raise
            slot = found[1]
            self._give_back([c for c in self._wanted if self._sharded(c) and slot_of(c) == slot])
            return _MOVED

    def _give_back(self, channels: list[str]) -> None:
        if channels:
            self._wanted.difference_update(channels)
            self._confirmed.difference_update(channels)
            self._on_moved(channels)

    async def _serve(self) -> None:
        conn = self._conn
        waiting_for_pong = False
        while True:
            timeout = self._heartbeat_timeout if waiting_for_pong else self._heartbeat
            reply = await self._read(conn, timeout)
            if reply is _MOVED:
                continue
            if reply is None:
                if waiting_for_pong:
                    raise TimeoutError(
                        f"no answer to PING within {self._heartbeat_timeout:g} s "
                        "(CONFIG['heartbeat_timeout'])"
                    )
                await conn.send_command("PING")
                waiting_for_pong = True
                continue
            waiting_for_pong = False
            self._handle(reply)

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind in (b"message", b"smessage") and len(reply) == 3:
            self._on_message(reply[1].decode(), reply[2])
        elif kind in (b"subscribe", b"ssubscribe") and len(reply) == 3:
            channel = reply[1].decode()
            if channel in self._wanted:
                self._confirmed.add(channel)
                self._on_subscribed([channel])
        elif kind == b"sunsubscribe" and len(reply) == 3:
            channel = reply[1].decode()
            if channel in self._wanted:
                # Not asked for: the node no longer serves the channel's slot.
                self._give_back([channel])

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("Pub/sub command failed: %s", _reason(task.exception()))  # type: ignore[arg-type]
