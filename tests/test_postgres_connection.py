"""Failed connection attempts: a refused login, a refusal that passes, a missing database.

A server that checks passwords (scram-sha-256) refuses connections for many reasons after
the password was checked: a database closed to connections, a role's or a database's
CONNECTION LIMIT, ``max_connections``. Those pass, so sends retry within ``pool_timeout``
and the credentials stay; only a refused login drops them and fails at once. Each
refusal here is real, on a server of this module, and is lifted once the layer has been
seen retrying it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from channels_engines import CredentialProvider, Credentials, EngineChannelLayer
from channels_engines.postgres.connection import Failure, Login, NotPostgreSQL, classify
from channels_engines.postgres.embedded import EmbeddedPostgres
from tests.support.pgtools import database_alias, engine_of, run, unique

pytestmark = [pytest.mark.postgres, pytest.mark.own_server]

#: Slots of the module's server; no slot is reserved for superusers, so filling them all
#: gives "sorry, too many clients already".
MAX_CONNECTIONS = 12


# Classification -------------------------------------------------------------------------


def failed(message: str) -> psycopg.OperationalError:
    """A connection error as psycopg 3.3 raises it: libpq's text, no SQLSTATE."""
    return psycopg.OperationalError(
        f'connection failed: connection to server at "127.0.0.1", port 5432 failed: {message}'
    )


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('FATAL:  password authentication failed for user "app"', Failure.LOGIN),
        ('FATAL:  Ident authentication failed for user "app"', Failure.LOGIN),
        (
            'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "app", database "chat", '
            "no encryption",
            Failure.LOGIN,
        ),
        ('FATAL:  pg_hba.conf rejects connection for host "10.0.0.1"', Failure.LOGIN),
        ('FATAL:  role "app" does not exist', Failure.LOGIN),
        ('FATAL:  role "app" is not permitted to log in', Failure.LOGIN),
        ('FATAL:  permission denied for database "chat"', Failure.LOGIN),
        ('FATAL:  database "chat" does not exist', Failure.SETTINGS),
        ("FATAL:  the database system is starting up", Failure.TRANSIENT),
        ("FATAL:  the database system is shutting down", Failure.TRANSIENT),
        ("FATAL:  the database system is in recovery mode", Failure.TRANSIENT),
        ("FATAL:  the database system is not yet accepting connections", Failure.TRANSIENT),
        ('FATAL:  database "chat" is not currently accepting connections', Failure.TRANSIENT),
        ("FATAL:  sorry, too many clients already", Failure.TRANSIENT),
        (
            "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER "
            "attribute",
            Failure.TRANSIENT,
        ),
        (
            "FATAL:  remaining connection slots are reserved for non-replication superuser "
            "connections",
            Failure.TRANSIENT,
        ),
        ('FATAL:  too many connections for role "app"', Failure.TRANSIENT),
        ('FATAL:  too many connections for database "chat"', Failure.TRANSIENT),
        ("FATAL:  terminating connection due to administrator command", Failure.TRANSIENT),
        (
            "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
            "connections?",
            Failure.TRANSIENT,
        ),
        ("timeout expired", Failure.TRANSIENT),
    ],
)
def test_a_failed_connection_is_classified_by_the_servers_message(
    message: str, expected: Failure
) -> None:
    assert classify(failed(message)) is expected


def test_the_last_host_tried_decides() -> None:
    error = psycopg.OperationalError(
        'connection failed: connection to server at "10.0.0.1", port 5432 failed: FATAL:  '
        "the database system is starting up\n"
        'Multiple connection attempts failed. All failures were:\n- host: "10.0.0.2", port: '
        "5432, hostaddr: 10.0.0.2: connection failed: FATAL:  password authentication "
        'failed for user "app"'
    )
    assert classify(error) is Failure.LOGIN


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("28P01", Failure.LOGIN),
        ("28000", Failure.LOGIN),
        ("42501", Failure.LOGIN),
        ("3D000", Failure.SETTINGS),
        ("57P03", Failure.TRANSIENT),
        ("53300", Failure.TRANSIENT),
        ("55000", Failure.TRANSIENT),
        ("08006", Failure.TRANSIENT),
    ],
)
def test_a_sqlstate_when_there_is_one_decides(sqlstate: str, expected: Failure) -> None:
    # The message says otherwise: the SQLSTATE wins.
    error = psycopg.errors.lookup(sqlstate)("FATAL:  password authentication failed for user")
    assert error.sqlstate == sqlstate
    assert classify(error) is expected


# The server ------------------------------------------------------------------------------


@dataclass
class Role:
    """A role that owns a database of its own, on the module's server."""

    pg: EmbeddedPostgres
    role: str
    password: str
    database: str

    def target(self) -> str:
        return f"host={self.pg.host} port={self.pg.port} dbname={self.database}"

    def admin(self, statement: str) -> None:
        """Run ``statement`` with {role} and {database} filled in, as the superuser."""
        self.pg.execute(
            sql.SQL(statement)
            .format(role=sql.Identifier(self.role), database=sql.Identifier(self.database))
            .as_string(None)
        )


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(
        auth="scram-sha-256",
        superuser_password=secrets.token_hex(12),
        settings={
            "max_connections": str(MAX_CONNECTIONS),
            "superuser_reserved_connections": "0",
        },
    )
    with pg:
        yield pg


@pytest.fixture
def login(server: EmbeddedPostgres) -> Iterator[Role]:
    found = Role(server, unique("ce_ref"), "pw-" + secrets.token_hex(16), unique("ce_ref_db"))
    server.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
        .format(sql.Identifier(found.role), sql.Literal(found.password))
        .as_string(None)
    )
    found.admin("CREATE DATABASE {database} OWNER {role}")
    try:
        yield found
    finally:
        found.admin("DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        found.admin("DROP ROLE {role}")


class Counting(CredentialProvider):
    """Always the same login; counts how often it is asked and told of a refusal."""

    def __init__(self, login: Role) -> None:
        super().__init__()
        self.credentials = Credentials(login.role, login.password)
        self.calls = 0
        self.refusals: list[Credentials] = []

    async def aget_credentials(self) -> Credentials:
        self.calls += 1
        return self.credentials

    def refused(self, credentials: Credentials) -> None:
        self.refusals.append(credentials)


class Retrying(logging.Handler):
    """Sets ``seen`` when the pool retries a connection that failed with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(logging.DEBUG)
        self.reason = reason
        self.seen = threading.Event()
        self.logger = logging.getLogger("channels_engines.postgres")

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("Connecting to ") and self.reason in text and "retrying" in text:
            self.seen.set()

    def __enter__(self) -> Retrying:
        self._level = self.logger.level
        self.logger.addHandler(self)
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)


def layer_for(login: Role, provider: Counting) -> EngineChannelLayer:
    return EngineChannelLayer(
        ENGINE="postgres",
        dsn=login.target(),
        connection={"application_name": unique("ce_ref_app")},
        credentials=provider,
        pool_timeout=30.0,
    )


def refusal_passes(
    login: Role, impose: Callable[[], None], lift: Callable[[], None], reason: str
) -> dict[str, Any]:
    """A working layer loses its pooled connections, then the server refuses new ones for
    ``reason`` until the layer has been seen retrying; the send waiting meanwhile must
    succeed, without asking the provider again or dropping the credentials."""
    provider = Counting(login)
    report: dict[str, Any] = {}

    async def scenario() -> None:
        layer = layer_for(login, provider)
        try:
            await layer.send("refusal.warm", {"n": 0})
            engine = engine_of(layer)
            cache = engine.shared.login.credentials
            before = cache.current
            await engine.pool.drain()  # the next send opens a connection
            await asyncio.to_thread(impose)
            with Retrying(reason) as retrying:
                send = asyncio.ensure_future(layer.send("refusal.wait", {"n": 1}))
                seen = asyncio.ensure_future(asyncio.to_thread(retrying.seen.wait, 20))
                await asyncio.wait({send, seen}, return_when=asyncio.FIRST_COMPLETED)
                if send.done():
                    seen.cancel()
                    retrying.seen.set()  # ends the waiting thread
                    send.result()  # a failure is the finding: raise it
                    raise AssertionError("the send succeeded while the server refused")
                assert await seen, f"no retry after {reason!r} within 20 s"
                await asyncio.to_thread(lift)
                await asyncio.wait_for(send, 30)
            report.update(
                provider_calls=provider.calls,
                refusals=len(provider.refusals),
                same_credentials=cache.current is before,
                pool_errors=engine.pool.stats["connection_errors"],
            )
        finally:
            await layer.close()

    run(scenario(), timeout=90)
    return report


def test_a_database_closed_to_connections_is_waited_for(login: Role) -> None:
    report = refusal_passes(
        login,
        lambda: login.admin("ALTER DATABASE {database} ALLOW_CONNECTIONS false"),
        lambda: login.admin("ALTER DATABASE {database} ALLOW_CONNECTIONS true"),
        "is not currently accepting connections",
    )
    assert report["provider_calls"] == 1
    assert report["refusals"] == 0
    assert report["same_credentials"]
    assert report["pool_errors"] >= 1


def test_a_roles_connection_limit_is_waited_for(login: Role) -> None:
    report = refusal_passes(
        login,
        lambda: login.admin("ALTER ROLE {role} CONNECTION LIMIT 0"),
        lambda: login.admin("ALTER ROLE {role} CONNECTION LIMIT -1"),
        "too many connections for role",
    )
    assert (report["provider_calls"], report["refusals"], report["same_credentials"]) == (
        1,
        0,
        True,
    )


def test_a_databases_connection_limit_is_waited_for(login: Role) -> None:
    report = refusal_passes(
        login,
        lambda: login.admin("ALTER DATABASE {database} CONNECTION LIMIT 0"),
        lambda: login.admin("ALTER DATABASE {database} CONNECTION LIMIT -1"),
        "too many connections for database",
    )
    assert (report["provider_calls"], report["refusals"], report["same_credentials"]) == (
        1,
        0,
        True,
    )


def test_a_full_server_is_waited_for(login: Role) -> None:
    held: list[psycopg.Connection[Any]] = []

    def fill() -> None:
        refusal = ""
        while not refusal and len(held) <= MAX_CONNECTIONS:
            try:
                held.append(psycopg.connect(login.pg.dsn(login.database), autocommit=True))
            except psycopg.OperationalError as exc:
                refusal = str(exc)
        assert "too many clients" in refusal, (len(held), refusal)

    def free_one() -> None:
        held.pop().close()

    try:
        report = refusal_passes(login, fill, free_one, "sorry, too many clients already")
    finally:
        for conn in held:
            conn.close()
    assert (report["provider_calls"], report["refusals"], report["same_credentials"]) == (
        1,
        0,
        True,
    )


def test_a_wrong_password_fails_at_once_and_drops_the_credentials(login: Role) -> None:
    provider = Counting(login)

    async def scenario() -> None:
        layer = layer_for(login, provider)
        try:
            await layer.send("refusal.warm", {"n": 0})
            engine = engine_of(layer)
            await engine.pool.drain()
            await asyncio.to_thread(login.admin, "ALTER ROLE {role} PASSWORD 'changed-here'")
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                await layer.send("refusal.wrong", {"n": 1})
            # One connection attempt by the pool, in which the login was tried with the
            # cached password and once more with one fetched afresh; no retry after that.
            assert engine.pool.stats["connection_errors"] == 1
            assert provider.calls == 2
            assert provider.refusals == [provider.credentials]
        finally:
            await layer.close()

    run(scenario(), timeout=60)


def test_a_missing_database_fails_at_once_and_keeps_the_credentials(login: Role) -> None:
    provider = Counting(login)

    async def scenario() -> None:
        layer = layer_for(login, provider)
        try:
            await layer.send("refusal.warm", {"n": 0})
            engine = engine_of(layer)
            cache = engine.shared.login.credentials
            before = cache.current
            await engine.pool.drain()
            await asyncio.to_thread(login.admin, "DROP DATABASE {database} WITH (FORCE)")
            with pytest.raises(psycopg.OperationalError, match="does not exist"):
                await layer.send("refusal.missing", {"n": 1})
            assert engine.pool.stats["connection_errors"] == 1
            assert provider.calls == 1
            assert provider.refusals == []
            assert cache.current is before
        finally:
            await layer.close()

    run(scenario(), timeout=60)


def test_a_django_credential_provider_must_name_a_postgresql_alias() -> None:
    with database_alias(
        "ce_cred_sqlite", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    ):
        login = Login(
            {
                "dsn": "host=127.0.0.1 dbname=x",
                "credentials": {"provider": "django", "alias": "ce_cred_sqlite"},
            },
            "test",
        )
        assert login.credentials is not None
        with pytest.raises(NotPostgreSQL) as raised:
            asyncio.run(login.credentials.get())
    assert str(raised.value) == (
        "DATABASES['ce_cred_sqlite'] uses the backend 'django.db.backends.sqlite3', which is "
        "not PostgreSQL"
    )
