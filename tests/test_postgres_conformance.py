"""The PostgreSQL engine passes the whole conformance kit.

The kit uses fixed channel names; tables of this run's own keep it apart from other runs
against the same database.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from channels_engines.testing import ChannelLayerConformance
from tests.support.pgtools import dropped_afterwards, server_dsn, unique

pytestmark = pytest.mark.postgres

PREFIX = unique("ce_conf") + "_"


@pytest.fixture(scope="module", autouse=True)
def _own_tables(test_server: str) -> Iterator[None]:
    with dropped_afterwards(PREFIX):
        yield


class TestPostgresConformance(ChannelLayerConformance):
    @property
    def config(self) -> dict[str, Any]:  # type: ignore[override]
        return {"ENGINE": "postgres", "dsn": server_dsn(), "table_prefix": PREFIX}

    def unreachable_config(self) -> dict[str, Any]:
        """A port that was just free: nothing listens there."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return {"dsn": f"postgresql://postgres@127.0.0.1:{port}/test", "pool_timeout": 1.0}
