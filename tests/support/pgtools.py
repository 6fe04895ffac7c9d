"""Helpers for the PostgreSQL engine tests: layers, observation of the server, child processes.

Observation only: counting this process' connections, sampling ``pg_stat_activity`` and
``pg_locks`` from a thread, waiting (with a deadline) for a condition on the server side.
Nothing here synchronises the code under test with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from channels_engines import EngineChannelLayer
from channels_engines.testing import engine_for
from tests.support.polling import payload_bytes, wait_for

REPO = Path(__file__).resolve().parents[2]
_EMBEDDED: list[Any] = []  # the embedded server, once one was started


def server_dsn() -> str:
    """The test server's DSN: ``CHANNELS_ENGINES_TEST_DSN``, or when it is unset or
    ``embedded`` a private server started now (once per process), whose DSN is then
    exported so that child processes and Django's ``default`` alias use it too."""
    dsn = os.environ.get("CHANNELS_ENGINES_TEST_DSN", "").strip()
    if dsn and dsn != "embedded":
        return dsn
    from django.conf import settings as django_settings
    from django.db import connections
    from psycopg.conninfo import conninfo_to_dict

    from channels_engines.postgres.embedded import EmbeddedPostgres

    server = EmbeddedPostgres().start()
    _EMBEDDED.append(server)
    server.create_database("channels_engines_test")
    dsn = server.dsn("channels_engines_test")
    os.environ["CHANNELS_ENGINES_TEST_DSN"] = dsn
    params = conninfo_to_dict(dsn)
    entry = django_settings.DATABASES["default"]
    for key, name in (("NAME", "dbname"), ("USER", "user"), ("HOST", "host"), ("PORT", "port")):
        entry[key] = params.get(name, "")
    entry["PASSWORD"] = params.get("password", "")
    connections.close_all()
    connections.settings = connections.configure_settings(django_settings.DATABASES)
    return dsn


ADMIN_APP = "ce_tests_admin"
#: Client ports of this process' observer connections, never counted as the layer's.
OBSERVERS: set[int] = set()


def unique(prefix: str) -> str:
    """A fresh lower-case name (usable as application_name and table prefix)."""
    return f"{prefix}_{secrets.token_hex(4)}"


def config(app: str, *, prefix: str, dsn: str | None = None, **options: Any) -> dict[str, Any]:
    """A postgres layer CONFIG on tables ``prefix*`` whose connections carry ``app``."""
    result: dict[str, Any] = {
        "ENGINE": "postgres",
        "dsn": dsn or server_dsn(),
        "connection": {"application_name": app},
        "table_prefix": prefix,
    }
    result.update(options)
    return result


def make_layer(app: str, **kwargs: Any) -> EngineChannelLayer:
    return EngineChannelLayer(**config(app, **kwargs))


def engine_of(layer: EngineChannelLayer) -> Any:
    """The layer's engine for the running event loop (for counters such as reconnects)."""
    engine = engine_for(layer)
    assert engine is not None, "nothing was done on this event loop yet"
    return engine


def run(coroutine: Any, timeout: float = 120.0) -> Any:
    """Run an async scenario in a new event loop, failing instead of hanging."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


def message(n: int, channel: str, size: int = 0) -> dict[str, Any]:
    return {"type": "test.message", "n": n, "ch": channel, "data": payload_bytes(size, n)}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The server side --------------------------------------------------------------------


class Admin:
    """A superuser autocommit connection used to observe (and fault) the server."""

    def __init__(self, dsn: str | None = None, **options: Any) -> None:
        dsn = self.dsn = dsn or server_dsn()
        self.conn = psycopg.connect(dsn, autocommit=True, application_name=ADMIN_APP, **options)
        self.port = int(conninfo_to_dict(dsn).get("port") or 5432)
        self.local_port = local_port(self.conn)
        OBSERVERS.add(self.local_port)

    def close(self) -> None:
        OBSERVERS.discard(self.local_port)
        self.conn.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def scalar(self, query: str, params: Any = None) -> Any:
        row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]

    def backends(self, app: str) -> list[int]:
        """PIDs of the server connections whose application_name is ``app``."""
        return [
            pid
            for (pid,) in self.rows(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
                [app],
            )
        ]

    def count(self, app: str) -> int:
        return len(self.backends(app))

    def advisory_locks(self, app: str) -> list[tuple[Any, ...]]:
        return self.rows(
            "SELECT l.pid, l.classid, l.objid, l.objsubid, l.granted, a.state"
            " FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND a.application_name = %s",
            [app],
        )

    def terminate(self, pid: int) -> bool:
        return bool(self.scalar("SELECT pg_terminate_backend(%s)", [pid]))

    def table_count(self, table: str, schema: str | None = None) -> int:
        name = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        return int(self.scalar(sql.SQL("SELECT count(*) FROM {}").format(name).as_string(None)))

    def tables(self, like: str) -> list[tuple[str, str]]:
        return [
            (str(schema), str(name))
            for schema, name in self.rows(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_name LIKE %s ORDER BY 1, 2",
                [like],
            )
        ]

    def drop_tables(self, prefix: str, schema: str | None = None) -> None:
        for table in ("message", "group_member", "claimed", "control", "group_stream"):
            name = (
                sql.Identifier(schema, prefix + table) if schema else sql.Identifier(prefix + table)
            )
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        if schema:
            self.conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )

    def wait_for(
        self, check: Callable[[], Any], what: str, timeout: float = 20.0, every: float = 0.02
    ) -> Any:
        """Poll ``check()`` (a server-side observation) until truthy; fail after ``timeout``."""
        return wait_for(check, what, timeout, every)


@contextlib.contextmanager
def dropped_afterwards(
    prefix: str, schema: str | None = None, dsn: str | None = None
) -> Iterator[None]:
    try:
        yield
    finally:
        with Admin(dsn) as admin:
            admin.drop_tables(prefix, schema)


def client_connections(server_port: int) -> int:
    """TCP connections this process holds to ``server_port``, except the observers'."""
    exclude = set(OBSERVERS)
    count = 0
    for conn in psutil.Process().net_connections(kind="tcp"):
        if (
            conn.raddr
            and conn.raddr.port == server_port
            and conn.status == psutil.CONN_ESTABLISHED
            and conn.laddr.port not in exclude
        ):
            count += 1
    return count


def local_port(conn: psycopg.Connection[Any]) -> int:
    """The client-side port of ``conn`` as the server sees it."""
    row = conn.execute("SELECT inet_client_port()").fetchone()
    assert row is not None
    return int(row[0])


class Sampler:
    """Samples, from a thread, this process' connections to the server and advisory locks.

    ``max_connections`` is the largest number of connections this process held at any
    sample (counted on the client side, so a closing backend is never counted twice);
    ``server_max`` is the largest count of backends with ``app`` as application_name;
    ``session_locks`` lists advisory locks seen on a backend that was not in a transaction,
    seen again by a second look (a transaction-level lock cannot outlive its transaction).
    """

    def __init__(self, app: str | None, dsn: str | None = None, every: float = 0.005) -> None:
        self.app = app
        self.admin = Admin(dsn)
        self.every = every
        self.samples = 0
        self.max_connections = 0
        self.server_max = 0
        #: Every backend PID seen with ``app`` as application_name.
        self.backends: set[int] = set()
        self.advisory_seen = 0
        self.session_locks: list[tuple[Any, ...]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg sampler", daemon=True)

    def sample(self) -> None:
        held = client_connections(self.admin.port)
        self.max_connections = max(self.max_connections, held)
        if self.app is not None:
            backends = self.admin.backends(self.app)
            self.backends.update(backends)
            self.server_max = max(self.server_max, len(backends))
            locks = self.admin.advisory_locks(self.app)
            self.advisory_seen += len(locks)
            for pid, classid, objid, objsubid, _granted, state in locks:
                if state != "idle":
                    continue
                again = [
                    lock
                    for lock in self.admin.advisory_locks(self.app)
                    if lock[:4] == (pid, classid, objid, objsubid) and lock[5] == "idle"
                ]
                if again:
                    self.session_locks.append(again[0])
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except BaseException as exc:  # reported by stop()
                self.errors.append(exc)
                return
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.admin.close()
        if self.errors:
            raise self.errors[0]


class LogCapture(logging.Handler):
    """Collects records of one logger (and its children) at ``level`` and above."""

    def __init__(self, name: str, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger(name)
        self._old_level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> LogCapture:
        self._logger.addHandler(self)
        self._logger.setLevel(min(self.level, self._logger.getEffectiveLevel()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._old_level)

    def at(self, level: int) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno == level]

    def at_least(self, level: int) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno >= level]


@contextlib.contextmanager
def database_alias(alias: str, entry: dict[str, Any]) -> Iterator[None]:
    """Add ``DATABASES[alias]`` for the duration (to settings and to Django's handler)."""
    from django.conf import settings as django_settings
    from django.db import connections

    django_settings.DATABASES[alias] = entry
    configured = connections.configure_settings(
        {"default": dict(django_settings.DATABASES["default"]), alias: dict(entry)}
    )
    connections.settings[alias] = configured[alias]
    try:
        yield
    finally:
        del django_settings.DATABASES[alias]
        connections.settings.pop(alias, None)


def default_database() -> dict[str, Any]:
    from django.conf import settings as django_settings

    return dict(django_settings.DATABASES["default"])


# Child processes --------------------------------------------------------------------


class Child:
    """``python -m <module> <JSON job>`` (by default :mod:`tests.support.pg_process`);
    talks in JSON lines on stdout/stdin."""

    def __init__(
        self,
        job: dict[str, Any],
        env: dict[str, str] | None = None,
        *,
        module: str = "tests.support.pg_process",
    ) -> None:
        self.job = job
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, json.dumps(job)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def read(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next JSON line the child printed."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"child printed nothing within {timeout:g} s; stderr:\n{''.join(self.stderr)}"
            ) from None
        if line is None:
            self.proc.wait(timeout=10)
            self._err_reader.join(timeout=10)
            raise AssertionError(
                f"child exited ({self.proc.returncode}); stderr:\n{''.join(self.stderr)}"
            )
        return json.loads(line)  # type: ignore[no-any-return]

    def expect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        data = self.read(timeout)
        assert data.get("event") == event, (data, "".join(self.stderr))
        return data

    async def aexpect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        return await asyncio.to_thread(self.expect, event, timeout)

    def tell(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        self._err_reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if stream is not None and not stream.closed:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def listening_backend(admin: Admin, app: str, known: list[int]) -> int | None:
    """The backend of ``app`` that is not in ``known`` and has run LISTEN, if there is one.

    ``app`` is the listener's own application_name; the first statement a new listener
    connection runs is its LISTEN, so a finished first statement means it listens.
    """
    rows = admin.rows(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> ALL(%s)"
        " AND query <> '' AND NOT (state = 'active' AND query LIKE 'LISTEN %%')",
        [app, known],
    )
    return int(rows[0][0]) if len(rows) == 1 else None
