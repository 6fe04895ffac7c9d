"""The PostgreSQL engine passes the whole conformance kit.

The kit uses fixed channel names; tables of this run's own keep it apart from other runs
against the same database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from channels_engines.testing import ChannelLayerConformance
from tests.pgtools import dropped_afterwards, unique

pytestmark = pytest.mark.postgres

PREFIX = unique("ce_conf") + "_"


@pytest.fixture(scope="module", autouse=True)
def _own_tables() -> Iterator[None]:
    with dropped_afterwards(PREFIX):
        yield


class TestPostgresConformance(ChannelLayerConformance):
    config = {
        "ENGINE": "postgres",
        "dsn": os.environ["CHANNELS_ENGINES_TEST_DSN"],
        "table_prefix": PREFIX,
    }
