"""Fixtures that start real Redis servers (:mod:`tests.support.redis_servers`).

- ``redis_server`` (function): a fresh server, about 30 ms to start; kill, pause or
  restart it at will.
- ``shared_redis_server`` (session): one server for tests that only use keys of their own
  and leave it running.
- ``redis_sentinel`` (function, from a module-scoped group): a settled Sentinel group
  (primary, replica, three Sentinels; about 2 s to start).
- ``redis_cluster`` (function, from a module-scoped cluster): a settled Cluster of three
  primaries with one replica each (about 2 s to start).

A Sentinel group or a Cluster is kept for the whole module while each test leaves it
settled (any layout: a test may fail over or move slots). A test that leaves it otherwise
(a server killed or paused, a failover still being wound up) makes the next test get a new
one: starting one is quicker than waiting out Sentinel's demotion of an old primary.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

import pytest

if TYPE_CHECKING:
    # Imported where used: collecting the other tests needs no redis-py.
    from tests.support.redis_servers import RedisCluster, RedisServer, SentinelGroup


def _binaries() -> None:
    """Skip, saying so, where Redis is not installed; fail where CI named the binaries
    (``$CHANNELS_ENGINES_REDIS_SERVER``), since there a missing server is a failure."""
    from tests.support.redis_servers import (
        SERVER_ENV,
        RedisBinaryMissing,
        redis_cli_binary,
        redis_server_binary,
    )

    try:
        redis_server_binary()
        redis_cli_binary()
    except RedisBinaryMissing as exc:
        if os.environ.get(SERVER_ENV, "").strip():
            pytest.fail(str(exc))
        pytest.skip(str(exc))


class _Topology(Protocol):
    def problem(self) -> str | None: ...
    def stop(self) -> None: ...


T = TypeVar("T", bound=_Topology)


class _Kept(list[T]):
    """Holds the module's topology and replaces it when a test left it unsettled."""

    def settled(self, start: Callable[[], T]) -> T:
        if self and self[0].problem() is not None:
            self.pop().stop()
        if not self:
            self.append(start())
        return self[0]

    def stop(self) -> None:
        while self:
            self.pop().stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` of this test's own, stopped afterwards."""
    _binaries()
    from tests.support.redis_servers import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def shared_redis_server() -> Iterator[RedisServer]:
    """One ``redis-server`` for the session: use keys of your own, do not stop it."""
    _binaries()
    from tests.support.redis_servers import RedisServer

    with RedisServer(name="shared") as server:
        yield server


@pytest.fixture(scope="module")
def _kept_sentinel_group() -> Iterator[_Kept[SentinelGroup]]:
    kept: _Kept[SentinelGroup] = _Kept()
    try:
        yield kept
    finally:
        kept.stop()


@pytest.fixture
def redis_sentinel(_kept_sentinel_group: _Kept[SentinelGroup]) -> SentinelGroup:
    """A settled Sentinel group: the module's, or a new one if a test left it unsettled."""
    _binaries()
    from tests.support.redis_servers import SentinelGroup

    return _kept_sentinel_group.settled(lambda: SentinelGroup().start())


@pytest.fixture(scope="module")
def _kept_cluster() -> Iterator[_Kept[RedisCluster]]:
    kept: _Kept[RedisCluster] = _Kept()
    try:
        yield kept
    finally:
        kept.stop()


@pytest.fixture
def redis_cluster(_kept_cluster: _Kept[RedisCluster]) -> RedisCluster:
    """A settled Cluster (3 primaries, 3 replicas): the module's, or a new one if a test
    left it unsettled."""
    _binaries()
    from tests.support.redis_servers import RedisCluster

    return _kept_cluster.settled(lambda: RedisCluster().start())
