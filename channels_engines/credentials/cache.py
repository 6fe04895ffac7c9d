"""Caching, refreshing and rotating a provider's credentials for one layer in a process.

Refresh windows follow botocore's refreshable credentials: from the *advisory* point a
refresh is attempted but a failure keeps the current credentials; from the *mandatory*
point a failure is raised. For credentials that expire, the advisory point is a third of
their lifetime (at most 5 minutes) before expiry and the mandatory point a sixth (at most 1
minute) before it; a 15-minute token is refreshed after 10 minutes.

New credentials that differ from the current ones are verified (the engine opens a probe
connection with them) before they are used; only then do listeners hear of the change,
so engines can drain their pools and replace their LISTEN connection. Concurrent requests
in one event loop share one fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .base import CredentialProvider, Credentials, CredentialsError

if TYPE_CHECKING:
    from ..events import Events

__all__ = ["CredentialCache"]

logger = logging.getLogger("channels_engines.credentials")

Verify = Callable[[Credentials], Awaitable[None]]
Listener = Callable[[], None]

_ADVISORY_MAX = 300.0
_MANDATORY_MAX = 60.0
# Failed refreshes in the advisory window are retried at most this often (seconds).
_RETRY_EVERY = 1.0


class CredentialCache:
    """The current credentials of a provider, refreshed before they expire."""

    def __init__(self, provider: CredentialProvider, *, describe: str) -> None:
        self.provider = provider
        self._describe = describe
        self._verify: Verify | None = None
        self._state_lock = threading.Lock()
        self._current: Credentials | None = None
        self._advisory_at = 0.0  # monotonic times; 0 means "refresh now"
        self._mandatory_at = 0.0
        self._retry_at = 0.0
        self._warned = False
        self._refused = False  # the server refused the current credentials
        self._error: Exception | None = None  # why the latest mandatory refresh failed
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._listeners: dict[object, tuple[asyncio.AbstractEventLoop, Listener]] = {}
        #: Times the provider was asked, and times the credentials changed.
        self.fetches = 0
        self.rotations = 0
        #: Told (in the refreshing thread) when the credentials changed, and when asking
        #: the provider failed, with the reason; they never see credentials.
        self.on_changed: Callable[[], None] | None = None
        self.on_failed: Callable[[str], None] | None = None

    @property
    def describe(self) -> str:
        """How logs name the provider."""
        return self._describe

    def report_to(self, events: Events) -> None:
        """Tell a layer's hooks when the credentials change or cannot be refreshed."""
        from ..hooks import CredentialsChanged, CredentialsRefreshFailed

        provider = self.describe
        self.on_changed = lambda: events.emit(CredentialsChanged, provider=provider)
        self.on_failed = lambda reason: events.emit(
            CredentialsRefreshFailed, provider=provider, reason=reason
        )

    def set_verifier(self, verify: Verify) -> None:
        """How to prove new credentials work before switching to them."""
        self._verify = verify

    def subscribe(self, key: object, callback: Listener) -> None:
        """Call ``callback`` on the caller's loop whenever the credentials change."""
        with self._state_lock:
            self._listeners[key] = (asyncio.get_running_loop(), callback)

    def unsubscribe(self, key: object) -> None:
        with self._state_lock:
            self._listeners.pop(key, None)

    @property
    def current(self) -> Credentials | None:
        return self._current

    async def get(self) -> Credentials:
        """Credentials to open a connection with, refreshing when due."""
        now = time.monotonic()
        current = self._current
        if current is not None and now < self._advisory_at:
            return current
        if current is not None and now < self._mandatory_at:
            # Advisory window: one caller refreshes, the others go on with what works.
            if now < self._retry_at or self._lock().locked():
                return current
            async with self._lock():
                if time.monotonic() < self._advisory_at:
                    return self._current or current
                try:
                    await self._refresh()
                except Exception as exc:
                    self._retry_at = time.monotonic() + _RETRY_EVERY
                    self._warn(f"could not refresh credentials ({exc}); using the current ones")
                return self._current or current
        seen = self.fetches
        async with self._lock():
            current = self._current
            error = self._error
            if error is not None and (self.fetches != seen or time.monotonic() < self._retry_at):
                # The fetch this caller waited for failed, or one failed a moment ago:
                # share its outcome rather than asking a failing provider again at once.
                raise error
            if current is not None and (
                self.fetches != seen or time.monotonic() < self._mandatory_at
            ):
                return current
            try:
                return await self._refresh()
            except Exception as exc:
                self._error = exc
                self._retry_at = time.monotonic() + _RETRY_EVERY
                raise

    def invalidate(self, used: Credentials | None) -> bool:
        """The server refused ``used``; drop them if still current. True if dropped.

        The provider hears of it (:meth:`CredentialProvider.refused`), so that it does not
        hand out the same credentials again (a Vault lease it would otherwise renew).
        """
        with self._state_lock:
            if used is None or self._current is None or not self._current.same_as(used):
                return False
            self._advisory_at = self._mandatory_at = 0.0
            self._retry_at = 0.0
            self._error = None
            self._refused = True
        try:
            self.provider.refused(used)
        except Exception as exc:
            logger.warning("Credential provider %s: refused() failed: %s", self._describe, exc)
        return True

    def needs_refresh(self) -> bool:
        return time.monotonic() >= self._advisory_at

    # Internals ---------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._state_lock:
            lock = self._loop_locks.get(loop)
            if lock is None:
                lock = self._loop_locks[loop] = asyncio.Lock()
            return lock

    async def _refresh(self) -> Credentials:
        try:
            return await self._fetch()
        except Exception as exc:
            if self.on_failed is not None:
                with contextlib.suppress(Exception):
                    self.on_failed(str(exc))
            raise

    async def _fetch(self) -> Credentials:
        self.fetches += 1
        try:
            fresh = await self.provider.aget_credentials()
        except CredentialsError:
            raise
        except Exception as exc:
            raise CredentialsError(
                f"credential provider {self._describe} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(fresh, Credentials):
            raise CredentialsError(
                f"credential provider {self._describe} returned {type(fresh).__name__}, "
                "not Credentials"
            )
        previous = self._current
        changed = previous is not None and not fresh.same_as(previous)
        if changed and not self._refused and self._verify is not None:
            # Never switch to credentials the server would refuse: a half-written secret
            # file or a not-yet-active password must not take the layer down.
            await self._verify(fresh)
        with self._state_lock:
            self._current = fresh
            self._refused = False
            self._error = None
            self._schedule(fresh)
            self._warned = False
            listeners = list(self._listeners.values()) if changed else []
        if changed:
            self.rotations += 1
            if self.on_changed is not None:
                with contextlib.suppress(Exception):
                    self.on_changed()
            logger.info(
                "Credentials from %s changed (user %r); new connections use them.",
                self._describe,
                fresh.user,
            )
        for loop, callback in listeners:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(callback)
        return fresh

    def _schedule(self, credentials: Credentials) -> None:
        now = time.monotonic()
        left = credentials.seconds_left()
        if left is None:
            ttl = self.provider.cache_ttl
            if ttl is None:
                self._advisory_at = self._mandatory_at = float("inf")
            else:
                # Nothing expires: past the TTL a failed refresh keeps what works.
                self._advisory_at, self._mandatory_at = now + ttl, float("inf")
            return
        left = max(left, 0.0)
        self._advisory_at = now + left - min(_ADVISORY_MAX, left / 3)
        self._mandatory_at = now + left - min(_MANDATORY_MAX, left / 6)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("Credentials from %s: %s", self._describe, message)
        else:
            logger.debug("Credentials from %s: %s", self._describe, message)
