"""Fixtures of the end-to-end tests: a database for the chat example, and its servers.

The servers use the test server of ``CHANNELS_ENGINES_TEST_DSN`` (the top conftest's
``test_server``, started there when none is configured), in a database of their own
that is created here and dropped afterwards, so the other tests' tables are never touched.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from .harness import (
    ARTIFACTS,
    CHAT_DIR,
    LOGS,
    ROOT,
    RUN,
    STARTED,
    ChatServer,
    Observer,
    fresh_database,
)


@pytest.fixture(scope="session")
def chat_database(test_server: str) -> Iterator[str]:
    """A fresh database with the example's tables (``manage.py migrate``); its URL."""
    with fresh_database("chat_e2e") as url:
        _remove_old_logs()
        _migrate(url)
        yield url


def _remove_old_logs() -> None:
    """Logs of earlier runs (names carry the run's id; a concurrent run keeps its own)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - 3600
    for path in LOGS.glob("*.log"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


def _migrate(url: str) -> None:
    env = dict(
        os.environ,
        DATABASE_URL=url,
        CHAT_WORKER=f"migrate-{RUN}",
        # Not the tests' settings, which this process exported.
        DJANGO_SETTINGS_MODULE="chatsite.settings",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(CHAT_DIR / "manage.py"), "migrate", "--noinput"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"migrate failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def observer(chat_database: str) -> Observer:
    return Observer(chat_database)


@pytest.fixture
def start_server(chat_database: str) -> Iterator[Callable[..., ChatServer]]:
    """Start chat servers for one test: ``start_server("daphne", "name")``; all are
    killed when the test ends, whatever happened. With ``wait=False``, the test calls
    ``ready()`` itself (to start several servers at once)."""
    servers: list[ChatServer] = []

    def start(kind: str, name: str, *, wait: bool = True, **kwargs: Any) -> ChatServer:
        server = ChatServer(kind, f"{name}-{RUN}", chat_database, **kwargs)
        servers.append(server)
        server.spawn()
        return server.ready() if wait else server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def daphne_pair(chat_database: str) -> Iterator[tuple[ChatServer, ChatServer]]:
    """Two daphne processes on two ports, shared by a module's tests that leave them
    running (and stopped after the module, not kept idle for the rest of the suite)."""
    servers = [ChatServer("daphne", f"daphne-{x}-{RUN}", chat_database) for x in "ab"]
    try:
        for server in servers:
            server.spawn()
        for server in servers:
            server.ready()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def artifacts() -> Any:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    """On failure, add the end of the log of every server this test used to the report."""
    report = yield
    if report.failed and "e2e" in item.keywords:
        started = item.stash.get(_STARTED_AT, 0.0)
        for server in STARTED:
            if server.running or server.active_since >= started:
                report.sections.append(
                    (f"server {server.worker} ({server.log_path})", server.log_tail())
                )
    return report


_STARTED_AT = pytest.StashKey[float]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED_AT] = time.monotonic()
