"""Where the engine connects and as whom.

The target (host, port, database, TLS settings) comes from ``dsn``/``connection`` or from
a Django ``DATABASES`` alias; with no connection settings at all the engine reuses
``DATABASES["default"]``. The login comes from a credential provider when
``credentials`` is set (see :mod:`channels_engines.credentials`), asked through a cache
for every new connection, so passwords and tokens can rotate while the layer runs. An
alias is asked of its own database backend every time, so a custom backend that computes
credentials per connection keeps working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..credentials import CredentialCache, Credentials, Secret, resolve_provider
from ..credentials.builtin import DjangoProvider, NotPostgreSQL
from ..exceptions import InvalidConfigError

__all__ = ["ConnectionSettings"]

_APPLICATION_NAME = "channels_engines"

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


class ConnectionSettings:
    """Builds connection parameters and opens connections for the pool and the listener."""

    def __init__(self, options: Mapping[str, Any], where: str) -> None:
        self._where = where
        explicit = options.get("dsn") is not None or options.get("connection") is not None
        database = options.get("database")
        if explicit and database is not None:
            raise InvalidConfigError(
                f"{where}: CONFIG gives both 'database' and 'dsn'/'connection'. Use "
                "'database' to reuse a DATABASES alias, or 'dsn'/'connection' to connect "
                "directly, not both."
            )
        self.database: str | None = None if explicit else (database or "default")
        self._static = self._explicit(options, "dsn", "connection") if explicit else None
        listen_explicit = (
            options.get("listen_dsn") is not None or options.get("listen_connection") is not None
        )
        self._listen = (
            self._explicit(options, "listen_dsn", "listen_connection") if listen_explicit else None
        )
        self._alias: DjangoProvider | None = None
        if self.database is not None:
            self._check_alias(self.database)
            self._alias = DjangoProvider(alias=self.database)
        self.credentials: CredentialCache | None = None
        if options.get("credentials") is not None:
            self._refuse_static_login(options)
            provider = resolve_provider(options["credentials"], where=where)
            self.credentials = CredentialCache(provider, describe=repr(provider))
            self.credentials.set_verifier(self.probe)

    def _explicit(
        self, options: Mapping[str, Any], dsn_key: str, keywords_key: str
    ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        dsn = options.get(dsn_key)
        if dsn is not None:
            try:
                params.update(conninfo_to_dict(dsn))
            except Exception:
                # Not chained: the parser's message may quote the string, password included.
                raise InvalidConfigError(
                    f"{self._where}: CONFIG[{dsn_key!r}] is not a valid libpq connection "
                    "string or postgresql:// URL (the value is not shown: it may hold a "
                    "password)."
                ) from None
        keywords = options.get(keywords_key)
        if keywords is not None:
            bad = [key for key in keywords if not isinstance(key, str)]
            if bad:
                raise InvalidConfigError(
                    f"{self._where}: CONFIG[{keywords_key!r}] must map libpq keyword names "
                    f"(str) to values; got the key {bad[0]!r}."
                )
            params.update(keywords)
        if isinstance(params.get("password"), str):
            params["password"] = Secret(params["password"])
        return params

    def _refuse_static_login(self, options: Mapping[str, Any]) -> None:
        for key in ("dsn", "connection", "listen_dsn", "listen_connection"):
            if _has_password(options.get(key)):
                raise InvalidConfigError(
                    f"{self._where}: CONFIG sets both a password (in {key!r}) and "
                    "'credentials'. Give the password in 'dsn'/'connection' for a fixed "
                    "login, or name a credential provider in 'credentials' for one that can "
                    "change, not both."
                )

    def _check_alias(self, alias: str) -> None:
        """The alias must exist; whether it is PostgreSQL is known only from its backend,
        which is asked when the first connection is made."""
        from django.conf import settings

        databases = getattr(settings, "DATABASES", {}) if settings.configured else {}
        if alias not in databases:
            names = ", ".join(repr(name) for name in databases) or "none"
            raise InvalidConfigError(
                f"{self._where}: CONFIG['database'] names {alias!r}, which is not in "
                f"settings.DATABASES (aliases: {names}). Name a PostgreSQL alias, or give "
                "'dsn' or 'connection'."
            )

    # Parameters and connections ----------------------------------------------------

    async def params(self, purpose: str = "pool") -> tuple[dict[str, Any], Credentials | None]:
        """Keyword arguments for ``psycopg.AsyncConnection.connect``, and the credentials
        (from the provider) they contain."""
        params = await self._target(purpose)
        credentials = None
        if self.credentials is not None:
            credentials = await self.credentials.get()
            params.update(credentials.connection_params())
        return params, credentials

    async def _target(self, purpose: str) -> dict[str, Any]:
        if purpose == "listen" and self._listen is not None:
            params = dict(self._listen)
        elif self._static is not None:
            params = dict(self._static)
        else:
            assert self._alias is not None
            try:
                alias = await asyncio.to_thread(self._alias.get_credentials)
            except NotPostgreSQL as exc:
                raise InvalidConfigError(
                    f"{self._where}: CONFIG['database'] names DATABASES[{exc.alias!r}], whose "
                    f"backend {exc.backend!r} is not PostgreSQL. Name a PostgreSQL alias, or "
                    "give 'dsn' or 'connection'."
                ) from None
            params = alias.connection_params()
        params.setdefault("fallback_application_name", _APPLICATION_NAME)
        return params

    async def connect(self, purpose: str = "pool") -> Connection:
        """Open an autocommit connection; if the login is refused, retry once with
        credentials fetched afresh (a password or token may just have rotated)."""
        params, used = await self.params(purpose)
        try:
            return await _connect(params, purpose)
        except psycopg.OperationalError as exc:
            if used is None or self.credentials is None or not login_refused(exc):
                raise
            # Drop them, unless another connection has replaced them meanwhile; either
            # way the second attempt uses what the cache holds now.
            self.credentials.invalidate(used)
        params, _ = await self.params(purpose)
        return await _connect(params, purpose)

    async def probe(self, credentials: Credentials) -> None:
        """Prove ``credentials`` can log in and query, before switching to them."""
        params = await self._target("pool")
        params.update(credentials.connection_params())
        conn = await _connect(params, "probe")
        try:
            await conn.execute("SELECT 1")
        finally:
            await conn.close()

    def revoked(self, error: BaseException) -> bool:
        """Whether ``error`` on a live session means its login lost its rights.

        A dropped or revoked role (Vault's lease revocation) keeps its open sessions, which
        then fail with 42501 or 42704 on every query; fresh credentials are needed.
        """
        sqlstate = getattr(error, "sqlstate", None)
        return self.credentials is not None and sqlstate in ("42501", "42704")

    def describe(self, purpose: str = "pool") -> str:
        """Where connections go, for log messages: never includes a password."""
        if purpose == "listen" and self._listen is not None:
            return _describe(self._listen)
        if self._static is not None:
            return _describe(self._static)
        return f"DATABASES[{self.database!r}]"


# TCP keepalives, unless the settings choose their own: a peer that vanished without a
# goodbye (a host or a network path gone) is noticed within about 25 s even while idle.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


async def _connect(params: dict[str, Any], purpose: str) -> Connection:
    params = {**_KEEPALIVES, **params}
    params.setdefault("connect_timeout", 10)
    if purpose == "listen":
        params.pop("prepare_threshold", None)
    try:
        return await psycopg.AsyncConnection.connect(autocommit=True, **params)
    except psycopg.OperationalError as exc:
        error = exc
    # Without psycopg's frames: they hold the connection string, password included, in
    # local variables that tracebacks showing locals (error trackers) would record.
    raise error.with_traceback(None)


def _has_password(value: Any) -> bool:
    """Whether a ``dsn`` (already parsed once by ``_explicit``) or a ``connection`` dict
    sets a password; in a function of its own, so that no frame that raises holds the
    parsed string."""
    params = conninfo_to_dict(value) if isinstance(value, str) else (value or {})
    return bool(params.get("password"))


def login_refused(error: psycopg.OperationalError) -> bool:
    """Whether a failed connection attempt got as far as the server checking the login.

    An unreachable or restarting server says nothing about the credentials; dropping them
    would make every retry during an outage ask the provider again (with Vault, a new
    database user per attempt). libpq reports no SQLSTATE for a refused login, but tells
    whether the server asked for a password.
    """
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate:
        return bool(sqlstate.startswith("28"))
    pgconn = getattr(error, "pgconn", None)
    if pgconn is None:
        return True
    try:
        return bool(pgconn.used_password or pgconn.needs_password)
    except Exception:
        return True


def _describe(params: Mapping[str, Any]) -> str:
    host = params.get("host") or params.get("hostaddr") or "local socket"
    port = params.get("port") or 5432
    dbname = params.get("dbname") or params.get("user") or "?"
    return f"{host}:{port}/{dbname}"
