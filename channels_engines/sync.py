"""Channel layer calls from synchronous code, on one event loop per process.

``async_to_sync(layer.group_send)(...)`` makes a new event loop (and a thread) for every
call, so whatever the layer keeps per loop (a pool, prepared statements) is built again
each time. ``layer.sync.group_send(...)`` runs the call on one background loop instead,
started in a daemon thread on first use, in every process that uses it (after a fork
the child starts its own), and closed when the interpreter exits, after releasing the
connections of every layer that used it. Its connections stay within the layer's
``pool_max_size``, however many threads call.

Use it from views under WSGI, Celery tasks, management commands and signal handlers;
in async code, ``await`` the layer's methods as usual.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .layer import EngineChannelLayer

__all__ = ["SyncCalls", "shutdown"]

T = TypeVar("T")

#: Seconds a sync call waits for its result at most; the layer's own deadlines
#: (``pool_timeout``, ``query_timeout``) normally end a failing call well before.
CALL_TIMEOUT = 120.0


class SyncCalls:
    """The layer's methods for synchronous code: ``layer.sync.group_send(group, msg)``."""

    def __init__(self, layer: EngineChannelLayer) -> None:
        self._layer = layer

    def send(self, channel: str, message: dict[str, Any]) -> None:
        """``send()`` from sync code; raises ChannelFull or MessageTooLarge like it."""
        _background.call(self._layer.send, channel, message)

    def group_send(self, group: str, message: dict[str, Any]) -> None:
        """``group_send()`` from sync code."""
        _background.call(self._layer.group_send, group, message)

    def group_add(self, group: str, channel: str) -> None:
        """``group_add()`` from sync code."""
        _background.call(self._layer.group_add, group, channel)

    def group_discard(self, group: str, channel: str) -> None:
        """``group_discard()`` from sync code."""
        _background.call(self._layer.group_discard, group, channel)

    def flush(self) -> None:
        """``flush()`` from sync code."""
        _background.call(self._layer.flush)

    def __repr__(self) -> str:
        # Also for an instance whose __init__ never ran (tracebacks show it as ``self``).
        return f"<SyncCalls of {getattr(self, '_layer', None)!r}>"


class _BackgroundLoop:
    """One event loop in a daemon thread per process, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "layer.sync was called from async code, where it would block the event "
                "loop: await the layer's own method instead (await layer.group_send(...))."
            )
        loop = self._running()

        async def run() -> T:
            return await function(*args)

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"layer.sync: {getattr(function, '__name__', 'the call')}() did not finish "
                f"within {CALL_TIMEOUT:g} s"
            ) from None

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            thread = self._thread
            if (
                self._loop is None
                or self._pid != os.getpid()
                or thread is None
                or not thread.is_alive()
            ):
                # First use in this process (a forked child inherits no thread).
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(
                    target=_serve, args=(loop, started), name="channels_engines sync", daemon=True
                )
                thread.start()
                started.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def close(self) -> None:
        """Stop the loop and release what the layers hold on it (at interpreter exit)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._pid != os.getpid():
                return
            self._loop = self._thread = None
        if thread.is_alive():
            # Each layer's engine on this loop closes its connections (a loop that merely
            # ends hands its idle ones on to the next loop, which will never come).
            released = asyncio.run_coroutine_threadsafe(_close_layers(), loop)
            with contextlib.suppress(Exception):
                released.result(CALL_TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CALL_TIMEOUT)
        if not thread.is_alive() and not loop.is_closed():
            loop.close()


async def _close_layers() -> None:
    from .layer import every_layer

    for layer in every_layer():
        with contextlib.suppress(Exception):
            await layer.close()


def _serve(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    loop.run_forever()


def shutdown() -> None:
    """Close every layer's connections on the background loop and stop it, now rather
    than at exit (a worker's shutdown hook, a test's teardown). The next sync call
    starts it again."""
    _background.close()


_background = _BackgroundLoop()
atexit.register(_background.close)
