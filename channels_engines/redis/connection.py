"""Where the engine connects and as whom: the :class:`Login`.

The target comes from ``url``. The login comes from a credential provider when
``credentials`` is set, or from the URL's user and password otherwise; either way
redis-py asks for it through :class:`_AskLogin` at every new connection, so a password
or a token can rotate while the layer runs, and redis-py never holds it between
connections.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from ..credentials import CredentialCache, Credentials, resolve_provider
from ..events import Events
from ..exceptions import InvalidConfigError
from ..redaction import HiddenSettings, Secret, plain

__all__ = ["Login"]

logger = logging.getLogger("channels_engines.redis")

#: The name of the layer's connections in ``CLIENT LIST``.
CLIENT_NAME = "channels_engines"
_SCHEMES = ("redis", "rediss", "unix")


class Login:
    """Where and as whom one layer connects, for every event loop of a process."""

    def __init__(self, options: Mapping[str, Any] | HiddenSettings, where: str) -> None:
        settings = HiddenSettings(options)
        del options
        self._where = where
        target = _parse_url(settings["url"])
        if target is None:
            raise InvalidConfigError(
                f"{where}: CONFIG['url'] is not a redis://, rediss:// or unix:// URL without "
                "query parameters (the value is not shown: it may hold a password)."
            )
        self._target, user, password = target
        self._sentinels: list[tuple[str, int]] | None = None
        self.service_name: str | None = plain(settings.get("service_name"))
        if settings.get("sentinels") is not None:
            from .options import parse_address

            if self.service_name is None:
                raise InvalidConfigError(
                    f"{where}: CONFIG['sentinels'] is given without 'service_name'. Name "
                    "the primary the Sentinels monitor, e.g. 'service_name': 'mymaster'."
                )
            self._sentinels = [parse_address(plain(item)) for item in settings["sentinels"]]  # type: ignore[misc]
        elif self.service_name is not None:
            raise InvalidConfigError(
                f"{where}: CONFIG['service_name'] is given without 'sentinels'. List the "
                "Sentinels ('host:port') in 'sentinels', or leave 'service_name' out."
            )
        self._cluster: list[tuple[str, int]] | None = None
        if settings.get("cluster_nodes") is not None:
            from .options import parse_address

            if self._sentinels is not None:
                raise InvalidConfigError(
                    f"{where}: CONFIG sets both 'sentinels' and 'cluster_nodes'. A Redis "
                    "Cluster fails over by itself: give 'cluster_nodes' alone."
                )
            if "path" in self._target or self._target.get("db", 0) != 0:
                raise InvalidConfigError(
                    f"{where}: with 'cluster_nodes', CONFIG['url'] must be a redis:// or "
                    "rediss:// URL of database 0 (a Redis Cluster has only database 0); "
                    "its host and port are not used."
                )
            self._cluster = [parse_address(plain(item)) for item in settings["cluster_nodes"]]  # type: ignore[misc]
        self._tls = _tls_files(settings, where, self._target.get("ssl", False))
        #: Where the Sentinels' own login comes from, when they ask for one.
        self.sentinel_credentials: CredentialCache | None = None
        if settings.get("sentinel_credentials") is not None:
            if self._sentinels is None:
                raise InvalidConfigError(
                    f"{where}: CONFIG['sentinel_credentials'] is given without 'sentinels'. "
                    "It is the login of the Sentinels themselves; the primary's login is "
                    "'credentials' (or the one in 'url')."
                )
            provider = resolve_provider(
                settings["sentinel_credentials"], where=where, option="sentinel_credentials"
            )
            self.sentinel_credentials = CredentialCache(provider, describe=repr(provider))
        self._fixed: Credentials | None = None
        self.credentials: CredentialCache | None = None
        if settings.get("credentials") is not None:
            if password is not None:
                raise InvalidConfigError(
                    f"{where}: CONFIG sets both a password (in 'url') and 'credentials'. "
                    "Give the password in 'url' for a fixed login, or name a credential "
                    "provider in 'credentials' for one that can change, not both."
                )
            provider = resolve_provider(settings["credentials"], where=where)
            self.credentials = CredentialCache(provider, describe=repr(provider))
        elif password is not None or user is not None:
            self._fixed = Credentials(user=user, password=password)

    @property
    def sentinels(self) -> list[tuple[str, int]] | None:
        """The Sentinels to ask for the primary, or None for a server given by ``url``."""
        return self._sentinels

    @property
    def cluster_nodes(self) -> list[tuple[str, int]] | None:
        """Nodes to learn a Redis Cluster's layout from, or None for one server."""
        return self._cluster

    def describe(self) -> str:
        """Where connections go, for messages: never includes a password."""
        if self._cluster is not None:
            where = ",".join(f"{host}:{port}" for host, port in self._cluster)
            return f"the Redis Cluster of {where}"
        if self._sentinels is not None:
            where = ",".join(f"{host}:{port}" for host, port in self._sentinels)
            return f"the primary of {self.service_name!r} (Sentinels {where})"
        target = self._target
        if "path" in target:
            return f"unix://{target['path']}"
        scheme = "rediss" if target.get("ssl") else "redis"
        return f"{scheme}://{target['host']}:{target['port']}/{target['db']}"

    def servers(
        self,
        *,
        connections: int,
        wait: float,
        timeout: float | None,
        count: Counter | None = None,
    ) -> Any:
        """The :class:`~.servers.Servers` of this target, with at most ``connections``
        connections per server (see :meth:`client`)."""
        from .servers import ClusterServers, OneServer

        def client(at: tuple[str, int] | None = None) -> Any:
            return self.client(
                connections=connections, wait=wait, timeout=timeout, at=at, count=count
            )

        if self._cluster is not None:
            return ClusterServers(self._cluster, client, self.close, describe=self.describe())
        return OneServer(client(), self.close)

    def client(
        self,
        *,
        connections: int,
        wait: float,
        timeout: float | None,
        at: tuple[str, int] | None = None,
        count: Counter | None = None,
    ) -> Any:
        """A ``redis.asyncio.Redis`` with at most ``connections`` connections, which waits
        up to ``wait`` seconds for a free one, and ``timeout`` seconds for an answer
        (None: as long as it takes, for the pub/sub connection); to the node ``at`` of a
        cluster, if given. ``count(purpose, +1 or -1)`` hears of every connection opened
        and closed (see :func:`_counted`)."""
        import redis.asyncio
        from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        target = dict(self._target)
        if at is not None:
            target["host"], target["port"] = at
        common: dict[str, Any] = {
            "max_connections": connections,
            "socket_timeout": timeout,
            "socket_connect_timeout": min(wait, 10.0),
            "socket_keepalive": True,
            "client_name": CLIENT_NAME,
            # RESP2: pub/sub messages are plain replies on the listener's connection,
            # read by the engine itself (see :mod:`.listener`).
            "protocol": 2,
            # The engine decides what may be sent again: a claim whose answer was lost
            # must not be repeated blindly, nor a send without its sequence number.
            "retry": Retry(NoBackoff(), 0),
            "credential_provider": _AskLogin(self.current) if self.logs_in else None,
        }
        common.update(self._tls)
        if self._sentinels is not None:
            from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

            # redis-py types these loosely, differently from one release to the next.
            sentinel_class: Any = Sentinel
            pool_class: Any = SentinelConnectionPool
            sentinel = sentinel_class(
                self._sentinels,
                sentinel_kwargs={
                    "socket_timeout": min(wait, 10.0),
                    "socket_connect_timeout": min(wait, 10.0),
                    "protocol": 2,
                    "retry": Retry(NoBackoff(), 0),
                    "credential_provider": self.sentinel_login(),
                },
            )
            # Past max_connections this pool raises instead of waiting; the engine's
            # calls then try again until pool_timeout.
            sentinel_pool = pool_class(
                self.service_name,
                sentinel,
                ssl=target.get("ssl", False),
                db=target.get("db", 0),
                **common,
            )
            if count is not None:
                sentinel_pool.connection_class = _counted(sentinel_pool.connection_class, count)
            return redis.asyncio.Redis(connection_pool=sentinel_pool)
        if target.pop("ssl", False):
            target["connection_class"] = SSLConnection
        elif "path" in target:
            target["connection_class"] = UnixDomainSocketConnection
            del common["socket_keepalive"]  # a TCP option
        if count is not None:
            target["connection_class"] = _counted(
                target.get("connection_class", redis.asyncio.Connection), count
            )
        pool = redis.asyncio.BlockingConnectionPool(timeout=wait, **common, **target)
        return redis.asyncio.Redis(connection_pool=pool)

    def sentinel_login(self) -> Any:
        """redis-py's credential provider for connections to the Sentinels, or None when
        they ask for no login."""
        cache = self.sentinel_credentials
        return None if cache is None else _AskLogin(cache.get)

    @staticmethod
    async def close(client: Any) -> None:
        """Close a client :meth:`client` made, with its connections to the Sentinels."""
        await client.aclose(close_connection_pool=True)
        sentinels = getattr(client.connection_pool, "sentinel_manager", None)
        if sentinels is not None:
            # One client per Sentinel (redis-py 7 added Sentinel.aclose() for the same).
            for sentinel in sentinels.sentinels:
                await sentinel.aclose(close_connection_pool=True)

    @property
    def logs_in(self) -> bool:
        return self.credentials is not None or self._fixed is not None

    async def current(self) -> Credentials:
        """The credentials a new connection logs in with."""
        if self.credentials is not None:
            return await self.credentials.get()
        assert self._fixed is not None
        return self._fixed

    def refused(self) -> bool:
        """The server refused the current credentials: drop them (if they came from a
        provider) so that the next connection asks afresh. True if there is anything new
        to try."""
        if self.credentials is None:
            return False
        return self.credentials.invalidate(self.credentials.current)

    async def refresh_ahead(self) -> None:
        """Refresh ahead of expiry even when no connection is being opened."""
        cache = self.credentials
        if cache is None or not cache.needs_refresh():
            return
        try:
            await cache.get()
        except Exception as exc:  # the next call tries again; the cache logs once
            logger.debug("Credential refresh failed (%s); will retry.", exc)

    def report_to(self, events: Events) -> None:
        """Tell the layer's hooks when the credentials change or cannot be refreshed."""
        if self.credentials is not None:
            self.credentials.report_to(events)


class _AskLogin:
    """redis-py's credential provider protocol, answered from ``current()`` (the
    :class:`Login`'s, or a cache of the Sentinels' credentials)."""

    def __init__(self, current: Callable[[], Awaitable[Credentials]]) -> None:
        self._current = current

    def get_credentials(self) -> tuple[str, ...]:
        raise RuntimeError("the redis engine connects only with redis.asyncio")

    async def get_credentials_async(self) -> tuple[str, ...]:
        credentials = await self._current()
        if credentials.password is None:
            raise InvalidConfigError("the credential provider gave no password or token")
        # Revealed inside the expression that hands it over: never a local variable.
        if credentials.user:
            return (credentials.user, credentials.password.reveal())
        return (credentials.password.reveal(),)


#: Told of each connection opened (+1) or closed (-1), and what it is for.
Counter = Callable[[str, int], None]


def _counted(connection_class: type[Any], count: Counter) -> type[Any]:
    """``connection_class``, telling ``count`` when a connection opens and closes. Its
    ``purpose`` is ``"commands"`` unless set before it connects (``"pubsub"``)."""

    class Counted(connection_class):  # type: ignore[misc]
        purpose = "commands"
        _counted = False

        async def _connect(self) -> None:
            await super()._connect()
            if not self._counted:
                self._counted = True
                count(self.purpose, 1)

        async def disconnect(self, *args: Any, **kwargs: Any) -> None:
            try:
                await super().disconnect(*args, **kwargs)
            finally:
                if self._counted:
                    self._counted = False
                    count(self.purpose, -1)

    Counted.__name__ = Counted.__qualname__ = connection_class.__name__
    return Counted


_TLS_FILES = {
    "tls_ca_file": "ssl_ca_certs",
    "tls_cert_file": "ssl_certfile",
    "tls_key_file": "ssl_keyfile",
}


def _tls_files(settings: HiddenSettings, where: str, tls: bool) -> dict[str, str]:
    """redis-py's keywords for the ``tls_*`` settings, each checked: a readable file, and
    a rediss:// URL to use it with."""
    import os

    found: dict[str, str] = {}
    for name, keyword in _TLS_FILES.items():
        path = plain(settings.get(name))
        if path is None:
            continue
        if not tls:
            raise InvalidConfigError(
                f"{where}: CONFIG[{name!r}] is set, but 'url' is not a rediss:// URL: "
                "connect with rediss:// to use TLS, or leave the tls_* settings out."
            )
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise InvalidConfigError(
                f"{where}: CONFIG[{name!r}] must name a readable PEM file; {path!r} is not "
                "one (or this process may not read it)."
            )
        found[keyword] = path
    if ("ssl_certfile" in found) != ("ssl_keyfile" in found):
        raise InvalidConfigError(
            f"{where}: CONFIG['tls_cert_file'] and CONFIG['tls_key_file'] go together: a "
            "client certificate needs its private key."
        )
    return found


def _parse_url(url: Any) -> tuple[dict[str, Any], str | None, Secret | None] | None:
    """The connection keywords of ``url`` without its login, the user, and the password as
    a :class:`Secret`; None when it does not parse. Never raises: the parser's frames
    would hold the URL, password included."""
    try:
        parts = urlsplit(plain(url))
        if parts.scheme not in _SCHEMES or parts.query or parts.fragment:
            return None
        target: dict[str, Any] = {}
        if parts.scheme == "unix":
            if not parts.path:
                return None
            target["path"] = unquote(parts.path)
        else:
            target["host"] = unquote(parts.hostname or "127.0.0.1")
            target["port"] = parts.port or 6379
            path = parts.path.strip("/")
            target["db"] = int(path) if path else 0
            if parts.scheme == "rediss":
                target["ssl"] = True
        user = unquote(parts.username) if parts.username else None
        password = Secret(unquote(parts.password)) if parts.password else None
        return target, user, password
    except Exception:
        return None
