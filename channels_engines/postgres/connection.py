"""Where the engine connects and as whom: the :class:`Login`.

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
import contextlib
import enum
import logging
import math
import re
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..credentials import CredentialCache, Credentials, CredentialsError, resolve_provider
from ..credentials.builtin import DjangoProvider
from ..events import Events
from ..exceptions import InvalidConfigError
from ..redaction import HiddenSettings, Secret, plain
from .deadlines import BoundedConnection

__all__ = ["Failure", "Login", "NotPostgreSQL", "classify"]

logger = logging.getLogger("channels_engines.postgres")

_APPLICATION_NAME = "channels_engines"

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


class Login:
    """Where and as whom the engine connects, for every event loop of a layer in a process.

    Owns the target (from the settings), the credential cache, the probe that proves new
    credentials before they are used, what a revoked login looks like, and refreshing
    ahead of expiry. The pool and the listener open their connections through it, and
    the pool tags idle connections with :meth:`tag` so that none outlives its login.
    """

    def __init__(self, options: Mapping[str, Any] | HiddenSettings, where: str) -> None:
        # Opaque while they are read (error trackers record the local variables of a
        # raising frame, walking dicts): the options may hold passwords, plain when they
        # do not come from a validated CONFIG.
        settings = HiddenSettings(options)
        del options
        self._where = where
        explicit = settings.get("dsn") is not None or settings.get("connection") is not None
        database = plain(settings.get("database"))
        if explicit and database is not None:
            raise InvalidConfigError(
                f"{where}: CONFIG gives both 'database' and 'dsn'/'connection'. Use "
                "'database' to reuse a DATABASES alias, or 'dsn'/'connection' to connect "
                "directly, not both."
            )
        self.database: str | None = None if explicit else (database or "default")
        self._static = self._explicit(settings, "dsn", "connection") if explicit else None
        listen_explicit = (
            settings.get("listen_dsn") is not None or settings.get("listen_connection") is not None
        )
        self._listen = (
            self._explicit(settings, "listen_dsn", "listen_connection") if listen_explicit else None
        )
        self._alias: DjangoProvider | None = None
        if self.database is not None:
            self._check_alias(self.database)
            self._alias = DjangoProvider(alias=self.database)
            self._alias.check_backend = _require_postgresql
        self.credentials: CredentialCache | None = None
        if settings.get("credentials") is not None:
            self._refuse_static_login(settings)
            provider = resolve_provider(settings["credentials"], where=where)
            if isinstance(provider, DjangoProvider):
                provider.check_backend = _require_postgresql
            self.credentials = CredentialCache(provider, describe=repr(provider))
            self.credentials.set_verifier(self.probe)
        self._refresh_failing = False
        # When each event loop last reacted to a revoked login.
        self._revoked_at: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, float] = (
            weakref.WeakKeyDictionary()
        )

    def _explicit(
        self, settings: HiddenSettings, dsn_key: str, keywords_key: str
    ) -> dict[str, Any]:
        """libpq keywords from a connection string and a dict of keywords, the secret ones
        (``password``, ``sslpassword``) as :class:`Secret`."""
        params: dict[str, Any] = {}
        if settings.get(dsn_key) is not None:
            parsed = _parse_dsn(settings[dsn_key])
            if parsed is None:
                raise InvalidConfigError(
                    f"{self._where}: CONFIG[{dsn_key!r}] is not a valid libpq connection "
                    "string or postgresql:// URL (the value is not shown: it may hold a "
                    "password)."
                )
            params.update(parsed)
        if settings.get(keywords_key) is not None:
            keywords = HiddenSettings(settings[keywords_key])
            bad = [key for key in keywords if not isinstance(key, str)]
            if bad:
                raise InvalidConfigError(
                    f"{self._where}: CONFIG[{keywords_key!r}] must map libpq keyword names "
                    f"(str) to values; got the key {bad[0]!r}."
                )
            params.update({key: _keyword(key, keywords[key]) for key in keywords})
        return params

    def _refuse_static_login(self, settings: HiddenSettings) -> None:
        for key in ("dsn", "connection", "listen_dsn", "listen_connection"):
            if _has_password(settings.get(key)):
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

    async def connect(self, purpose: str = "pool", timeout: float | None = None) -> Connection:
        """Open an autocommit connection within about ``timeout`` seconds; if the login
        is refused, retry once with credentials fetched afresh (a password or token may
        just have rotated)."""
        params, used = await self.params(purpose)
        try:
            return await _connect(params, purpose, timeout)
        except psycopg.OperationalError as exc:
            if used is None or self.credentials is None or classify(exc) is not Failure.LOGIN:
                raise
            # Drop them, unless another connection has replaced them meanwhile; either
            # way the second attempt uses what the cache holds now.
            self.credentials.invalidate(used)
        params, _ = await self.params(purpose)
        return await _connect(params, purpose, timeout)

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

    def drop_revoked(self, error: BaseException) -> bool:
        """After ``error`` on a live session: if it means a revoked login, drop the
        credentials (at most once a second per event loop) and return True, for the
        caller to :meth:`renew` them and reconnect."""
        if not self.revoked(error):
            return False
        assert self.credentials is not None
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if now - self._revoked_at.get(loop, float("-inf")) < 1.0:
            return False
        self._revoked_at[loop] = now
        logger.warning(
            "The database refused a query for lack of privileges; refreshing credentials "
            "and reconnecting."
        )
        self.credentials.invalidate(self.credentials.current)
        return True

    async def renew(self) -> None:
        """Fetch credentials afresh (after :meth:`drop_revoked`)."""
        assert self.credentials is not None
        await self.credentials.get()

    async def refresh_ahead(self) -> None:
        """Refresh ahead of expiry even when no connection is being opened, so that the
        swap happens while the current login still works. Failures are logged (once until
        it works again), not raised: the next call tries again."""
        cache = self.credentials
        if cache is None or not cache.needs_refresh():
            return
        try:
            await cache.get()
        except Exception as exc:
            if not self._refresh_failing:
                logger.warning("Credential refresh failed (%s); will retry.", exc)
            self._refresh_failing = True
        else:
            if self._refresh_failing:
                logger.info("Credential refresh works again.")
            self._refresh_failing = False

    def tag(self) -> object:
        """What pooled connections log in with now (None: fixed settings or an alias)."""
        return None if self.credentials is None else self.credentials.current

    def report_to(self, events: Events) -> None:
        """Tell the layer's hooks when the credentials change or cannot be refreshed."""
        if self.credentials is not None:
            self.credentials.report_to(events)

    def subscribe(self, key: object, changed: Callable[[], None]) -> None:
        """Call ``changed`` on the caller's loop when the credentials change."""
        if self.credentials is not None:
            self.credentials.subscribe(key, changed)

    def unsubscribe(self, key: object) -> None:
        if self.credentials is not None:
            self.credentials.unsubscribe(key)

    def where_to(self, purpose: str = "pool") -> tuple[str, int, str | None]:
        """Host (a socket directory, or ``""`` for libpq's default), port and sslmode of
        ``purpose``'s connections, from the settings alone (a ``database`` alias is read
        from ``settings.DATABASES``, not from its backend)."""
        if purpose == "listen" and self._listen is not None:
            params: Mapping[str, Any] = self._listen
        elif self._static is not None:
            params = self._static
        else:
            from django.conf import settings

            entry: Mapping[str, Any] = settings.DATABASES.get(self.database or "default", {})
            options: Mapping[str, Any] = entry.get("OPTIONS") or {}
            params = {
                "host": entry.get("HOST") or options.get("host") or "",
                "port": entry.get("PORT") or options.get("port") or "",
                "sslmode": options.get("sslmode"),
            }
        host = str(plain(params.get("host")) or plain(params.get("hostaddr")) or "")
        try:
            port = int(str(plain(params.get("port")) or 5432).split(",")[0])
        except ValueError:
            port = 5432
        sslmode = plain(params.get("sslmode"))
        return host, port, None if sslmode is None else str(sslmode)

    def describe(self, purpose: str = "pool") -> str:
        """Where connections go, for log messages: never includes a password."""
        if purpose == "listen" and self._listen is not None:
            return _describe(self._listen)
        if self._static is not None:
            return _describe(self._static)
        return f"DATABASES[{self.database!r}]"


class NotPostgreSQL(CredentialsError):
    """The DATABASES alias does not use a PostgreSQL backend."""

    def __init__(self, alias: str, backend: str) -> None:
        super().__init__(
            f"DATABASES[{alias!r}] uses the backend {backend!r}, which is not PostgreSQL"
        )
        self.alias = alias
        self.backend = backend


def _require_postgresql(alias: str, wrapper: Any) -> None:
    """The check this engine gives ``django`` credential providers: a PostgreSQL alias."""
    if wrapper.vendor != "postgresql":
        raise NotPostgreSQL(alias, str(wrapper.settings_dict.get("ENGINE")))


# TCP keepalives, unless the settings choose their own: a peer that vanished without a
# goodbye (a host or a network path gone) is noticed within about 25 s even while idle.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


# Seconds a connection attempt may take when neither the settings nor the caller say.
_CONNECT_TIMEOUT = 10


async def _connect(
    params: dict[str, Any], purpose: str, timeout: float | None = None
) -> Connection:
    options = {**_KEEPALIVES, **params}
    # A frozen server or a silent network accepts nothing and refuses nothing: bound the
    # attempt by the settings and by the time the caller has left (libpq counts whole
    # seconds, at least 2).
    limit = int(options.get("connect_timeout") or _CONNECT_TIMEOUT)
    if timeout is not None:
        limit = min(limit, max(2, math.ceil(timeout)))
    options["connect_timeout"] = limit
    if purpose == "listen":
        options.pop("prepare_threshold", None)
    try:
        # Secrets are revealed inside the call: never a local variable of this frame.
        return await BoundedConnection.connect(autocommit=True, **_revealed(options))
    except Exception as exc:
        error = exc
    # Without psycopg's frames: they hold the connection string, password included, in
    # local variables that error trackers record.
    raise _without_frames(error)


def _revealed(params: dict[str, Any]) -> dict[str, Any]:
    return {key: plain(value) for key, value in params.items()}


def _without_frames(error: BaseException) -> BaseException:
    """``error``, and the exceptions it was raised from or during, without tracebacks."""
    seen: list[BaseException] = []
    item: BaseException | None = error
    while item is not None and all(item is not known for known in seen):
        seen.append(item)
        item.with_traceback(None)
        item = item.__cause__ or item.__context__
    return error


#: libpq keywords whose values are secrets.
_SECRET_KEYWORDS = frozenset({"password", "sslpassword"})


def _keyword(key: str, value: Any) -> Any:
    """A libpq keyword's value: a :class:`Secret` for a secret one, plain otherwise."""
    value = plain(value)
    if key in _SECRET_KEYWORDS and value is not None:
        return Secret(value if isinstance(value, str) else str(value))
    return value


def _parse_dsn(dsn: Any) -> dict[str, Any] | None:
    """The keywords of a connection string (a :class:`Secret` or a str), the secret ones
    concealed, or None when it does not parse. Never raises: the parser's error and its
    frames would hold the string, password included."""
    try:
        return {key: _keyword(key, value) for key, value in conninfo_to_dict(plain(dsn)).items()}
    except Exception:
        return None


def _has_password(value: Any) -> bool:
    """Whether a ``dsn`` (already parsed once by ``_explicit``) or a ``connection`` dict
    sets a password."""
    if isinstance(value, (str, Secret)):
        return bool((_parse_dsn(value) or {}).get("password"))
    return bool(value is not None and HiddenSettings(value).get("password"))


class Failure(enum.Enum):
    """What a failed connection attempt says about the login and about trying again."""

    #: The server refused the login (wrong password, unknown role, no right to connect):
    #: the credentials are at fault; trying again with them only adds failed logins.
    LOGIN = "login"
    #: The server is unreachable, starting or stopping, out of connection slots, or not
    #: accepting connections to this database for now: try again, keep the credentials.
    TRANSIENT = "transient"
    #: The settings name something that does not exist (a database): trying again cannot
    #: help, and the credentials are not at fault.
    SETTINGS = "settings"


def classify(error: BaseException) -> Failure:
    """Why a connection attempt failed, from its SQLSTATE or, when libpq reports none, the
    server's message.

    Nothing here asks whether a password was sent: under password authentication every
    refusal comes after the password was accepted or not, and most of them (a database
    closed to connections, a full server, a per-role or per-database connection limit)
    say nothing about it. libpq reports no SQLSTATE for a failed connection attempt (psycopg
    3.3 gives ``sqlstate`` None and no diagnostics), so the server's message is matched;
    these are its English texts (``lc_messages``). A message not recognised counts as
    transient: retried within ``pool_timeout``, without dropping the credentials.
    """
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate:
        return _by_sqlstate(sqlstate)
    pgconn = getattr(error, "pgconn", None)
    with contextlib.suppress(Exception):
        if pgconn is not None and pgconn.needs_password:
            return Failure.LOGIN  # the server asked for a password and none was given
    found = _SERVER_MESSAGE.findall(str(error))
    if not found:
        return Failure.TRANSIENT  # no answer from a server: network, TLS, timeout
    message = found[-1]  # with several hosts, the last one tried
    for pattern, failure in _MESSAGES:
        if pattern.search(message):
            return failure
    return Failure.TRANSIENT


def _by_sqlstate(sqlstate: str) -> Failure:
    if sqlstate.startswith("28") or sqlstate == "42501":
        return Failure.LOGIN  # invalid authorization; no CONNECT privilege on the database
    if sqlstate == "3D000":
        return Failure.SETTINGS  # the database does not exist
    return Failure.TRANSIENT  # 57P03, 53300, 55000, 08xxx and anything unforeseen


#: The message of a server's error in libpq's text ("... failed: FATAL:  message").
_SERVER_MESSAGE = re.compile(r"\b(?:FATAL|ERROR|PANIC):  (.+)")

#: The server's messages for failed connection attempts, with the SQLSTATE they carry.
_MESSAGES: tuple[tuple[re.Pattern[str], Failure], ...] = tuple(
    (re.compile(pattern), failure)
    for pattern, failure in (
        # 28P01 / 28000: "password authentication failed for user", and the same for
        # md5, scram, peer, ident, ldap, radius, cert ...
        (r"authentication failed for user", Failure.LOGIN),
        (r"^no pg_hba\.conf entry for ", Failure.LOGIN),  # 28000
        (r"^pg_hba\.conf rejects ", Failure.LOGIN),  # 28000
        (r'^role ".*" does not exist', Failure.LOGIN),  # 28000
        (r'^role ".*" is not permitted to log in', Failure.LOGIN),  # 28000
        (r"^permission denied for database ", Failure.LOGIN),  # 42501
        (r'^database ".*" does not exist', Failure.SETTINGS),  # 3D000
        # 57P03: starting up, shutting down, in recovery, not (yet) accepting connections
        (r"^the database system is ", Failure.TRANSIENT),
        (r'^database ".*" is not currently accepting connections', Failure.TRANSIENT),  # 55000
        # 53300: max_connections, reserved slots, CONNECTION LIMIT of a role or database
        (r"^sorry, too many clients already", Failure.TRANSIENT),
        (r"^remaining connection slots are reserved", Failure.TRANSIENT),
        (r"^too many connections for (?:role|database) ", Failure.TRANSIENT),
    )
)


def _describe(params: Mapping[str, Any]) -> str:
    host = params.get("host") or params.get("hostaddr") or "local socket"
    port = params.get("port") or 5432
    dbname = params.get("dbname") or params.get("user") or "?"
    return f"{host}:{port}/{dbname}"
