"""The PostgreSQL engine passes the whole conformance kit."""

from __future__ import annotations

from typing import Any

import pytest

from channels_engines.testing import ChannelLayerConformance
from tests.support.pgtools import server_dsn

pytestmark = pytest.mark.postgres


class TestPostgresConformance(ChannelLayerConformance):
    @property
    def config(self) -> dict[str, Any]:  # type: ignore[override]
        return {"ENGINE": "postgres", "dsn": server_dsn()}
