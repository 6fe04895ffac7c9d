"""Credentials and the provider contract.

A provider is asked for credentials whenever an engine opens a connection (through a
cache, see :mod:`channels_engines.credentials.cache`), so a password, a cloud token or a
Vault lease can change while the layer runs. Secrets never show in ``repr``/``str``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, NoReturn

from ..options import Option
from ..redaction import Secret, conceal
from ..requirements import Requirement

__all__ = ["CredentialProvider", "Credentials", "CredentialsError", "Secret"]


class CredentialsError(Exception):
    """A credential provider could not supply credentials."""


@dataclass(frozen=True, repr=False, init=False)
class Credentials:
    """What a provider returns: immutable, and never shows its secret.

    ``password`` holds a password or a token, given as a ``str`` (or a :class:`Secret`) and
    kept as a :class:`Secret`: ``credentials.password.reveal()`` returns it. ``expires_at``
    (timezone-aware) tells the cache when to refresh. ``extra`` holds further connection
    parameters (for example ``sslmode`` or a host the token was minted for); its string
    values are kept as secrets too.
    """

    user: str | None
    password: Secret | None
    expires_at: datetime | None
    extra: Mapping[str, Any]

    def __init__(
        self,
        user: str | None = None,
        password: str | Secret | None = None,
        expires_at: datetime | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        # Secrets are wrapped before anything can raise: error trackers record the local
        # variables of a raising frame. Extra is copied read-only: the caller's dict may
        # change, and these must not.
        extra = _ReadOnlyDict({key: _hidden(value) for key, value in (extra or {}).items()})
        if password is not None and not isinstance(password, Secret):
            if not isinstance(password, str):
                kind = type(password).__name__
                del password
                raise TypeError(f"Credentials.password must be a str or a Secret, not {kind}")
            password = Secret(password)
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("Credentials.expires_at must be timezone-aware (use UTC)")
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "expires_at", expires_at)
        object.__setattr__(self, "extra", extra)

    def __repr__(self) -> str:
        # Also while __post_init__ refuses a value, or before it ran: a traceback shows it.
        password = None if getattr(self, "password", None) is None else "********"
        expires_at = getattr(self, "expires_at", None)
        expires = expires_at.isoformat() if isinstance(expires_at, datetime) else None
        extra = getattr(self, "extra", None)
        keys = sorted(str(key) for key in extra) if isinstance(extra, Mapping) else []
        return (
            f"Credentials(user={getattr(self, 'user', None)!r}, password={password!r}, "
            f"expires_at={expires!r}, extra_keys={keys!r})"
        )

    __str__ = __repr__

    def seconds_left(self, now: datetime | None = None) -> float | None:
        """Seconds until expiry, or None when the credentials do not expire."""
        if self.expires_at is None:
            return None
        now = now or datetime.now(timezone.utc)
        return (self.expires_at - now).total_seconds()

    def same_as(self, other: Credentials | None) -> bool:
        """Whether connecting with ``other`` would be the same login."""
        return (
            other is not None
            and self.user == other.user
            and self.password == other.password
            and dict(self.extra) == dict(other.extra)
        )

    def connection_params(self) -> dict[str, Any]:
        """Keyword arguments for the driver: extra first, then user and password; secret
        values stay :class:`Secret` (reveal them in the call that hands them over)."""
        params = dict(self.extra)
        if self.user is not None:
            params["user"] = self.user
        if self.password is not None:
            params["password"] = self.password
        return params


class _ReadOnlyDict(dict[str, Any]):
    """A dict that refuses changes, so Credentials stay immutable; unlike a mapping
    proxy it still copies like a dict."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("Credentials.extra cannot be changed; make new Credentials")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[type[_ReadOnlyDict], tuple[dict[str, Any]]]:
        return (type(self), (dict(self),))


def _hidden(value: Any) -> Any:
    return Secret(value) if isinstance(value, str) else value


class CredentialProvider:
    """Subclass this to supply credentials from anywhere.

    Implement :meth:`aget_credentials` (async) or :meth:`get_credentials` (sync), or
    both; each defaults to the other. Declare the provider's CONFIG keys in
    :attr:`options` so they are validated like every other setting, and optional
    packages in :attr:`requires`. Credentials without ``expires_at`` are reused for
    :attr:`cache_ttl` seconds (None: until an authentication failure; 0: ask every time).
    """

    #: Name shown in messages.
    name: ClassVar[str] = ""
    #: One sentence on what the provider is for.
    description: ClassVar[str] = ""
    #: Keys accepted in ``{"provider": name, ...}``.
    options: ClassVar[Mapping[str, Option]] = {}
    #: Optional packages the provider imports.
    requires: ClassVar[tuple[Requirement, ...]] = ()
    #: Seconds to reuse credentials that carry no expiry.
    cache_ttl: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if (
            cls.aget_credentials is CredentialProvider.aget_credentials
            and cls.get_credentials is CredentialProvider.get_credentials
        ):
            raise TypeError(
                f"{cls.__qualname__} must implement get_credentials() or aget_credentials()"
            )

    def __init__(self, **options: Any) -> None:
        #: The validated options. Those declared ``secret=True`` hold :class:`Secret`
        #: values (``self.settings["token"].reveal()``), however the provider was made.
        self.settings = {
            key: conceal(value) if key in self.options and self.options[key].secret else value
            for key, value in options.items()
        }

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name or 'credential provider'}>"

    async def aget_credentials(self) -> Credentials:
        """Return current credentials (runs :meth:`get_credentials` in a thread)."""
        return await asyncio.to_thread(self.get_credentials)

    def get_credentials(self) -> Credentials:
        """Return current credentials, for sync callers."""
        from asgiref.sync import async_to_sync

        return async_to_sync(self.aget_credentials)()

    def refused(self, credentials: Credentials) -> None:
        """The server refused ``credentials`` (a failed login, or a revoked role on a live
        session): do not return them again. Override it when the provider keeps state,
        for example a lease it would otherwise renew; the default does nothing."""
