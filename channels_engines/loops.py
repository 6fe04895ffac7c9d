"""Run cleanup on an event loop just before it closes.

``async_to_sync`` and ``asyncio.run`` create a loop per call and close it afterwards;
anything bound to that loop (connections, tasks) must be released while the loop can
still run, or it leaks. There is no public hook for that, so the loop's ``close`` method
is wrapped on first use, as channels_redis does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable

__all__ = ["call_before_close", "cancel_before_close", "closing"]

logger = logging.getLogger("channels_engines")

Cleanup = Callable[[], Awaitable[None]]

_lock = threading.Lock()
_cleanups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[object, Cleanup]] = (
    weakref.WeakKeyDictionary()
)
_closing: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def call_before_close(loop: asyncio.AbstractEventLoop, key: object, cleanup: Cleanup) -> bool:
    """Run ``cleanup()`` to completion on ``loop`` right before ``loop.close()``.

    ``key`` identifies the registration so it can be withdrawn with
    :func:`cancel_before_close`. Returns False when the loop's ``close`` cannot be wrapped
    (uvloop's loops are not patchable); the caller then releases its resources itself.
    """
    with _lock:
        registered = _cleanups.get(loop)
        if registered is None:
            if not _wrap_close(loop):
                return False
            registered = _cleanups[loop] = {}
        registered[key] = cleanup
        return True


def cancel_before_close(loop: asyncio.AbstractEventLoop, key: object) -> None:
    """Withdraw a cleanup registered with ``key`` (it already ran, or is not needed)."""
    with _lock:
        registered = _cleanups.get(loop)
        if registered is not None:
            registered.pop(key, None)


def closing(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is running the cleanups that precede its ``close()``: what they
    release will not be needed on this loop again."""
    return loop in _closing


def _wrap_close(loop: asyncio.AbstractEventLoop) -> bool:
    original = loop.close

    def close() -> None:
        with _lock:
            cleanups = list(_cleanups.pop(loop, {}).values())
        if cleanups and not loop.is_closed() and not loop.is_running():
            _closing.add(loop)
            try:
                for cleanup in cleanups:
                    try:
                        loop.run_until_complete(cleanup())
                    except Exception:
                        logger.exception("Cleanup before closing an event loop failed")
            finally:
                _closing.discard(loop)
        original()

    try:
        loop.close = close  # type: ignore[method-assign]
    except (AttributeError, TypeError):
        return False
    return True
