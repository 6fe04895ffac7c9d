"""The Redis engine passes the whole conformance kit, against a server of its own.

The kit uses fixed channel names; a key prefix of this run's own keeps it apart from
other runs against the same server.
"""

from __future__ import annotations

from typing import Any

import pytest

from channels_engines.testing import ChannelLayerConformance
from tests.support.pgtools import unique
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis

PREFIX = unique("ce_conf")
SERVER: list[RedisServer] = []


@pytest.fixture(autouse=True)
def _server(shared_redis_server: RedisServer) -> None:
    SERVER[:] = [shared_redis_server]


class TestRedisConformance(ChannelLayerConformance):
    @property
    def config(self) -> dict[str, Any]:  # type: ignore[override]
        return {"ENGINE": "redis", "url": SERVER[0].url, "prefix": PREFIX}

    def unreachable_config(self) -> dict[str, Any]:
        return {**self.config, "url": "redis://127.0.0.1:1/0", "pool_timeout": 1.0}
