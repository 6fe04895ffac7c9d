"""The PostgreSQL engine passes the whole conformance kit."""

from __future__ import annotations

import os

import pytest

from channels_engines.testing import ChannelLayerConformance

pytestmark = pytest.mark.postgres


class TestPostgresConformance(ChannelLayerConformance):
    config = {"ENGINE": "postgres", "dsn": os.environ["CHANNELS_ENGINES_TEST_DSN"]}
