"""Which server holds a key: one server (or the primary Sentinels name), or the primary
of a Redis Cluster that serves the key's slot.

Everything that talks to Redis asks :meth:`Servers.for_key` for the client of the key it
touches, on every attempt, so an operation retried after a redirection goes where the
key is now. One server has one bounded pool. A cluster has one bounded pool per primary
and the slot map, learnt with ``CLUSTER SLOTS`` from the configured nodes (or any node
met since) when first needed, corrected slot by slot when a node answers ``MOVED``, and
learnt again after a connection to a node fails (it may have failed over).

A cluster also changes the pub/sub: announcements use sharded pub/sub (``SPUBLISH``,
``SSUBSCRIBE``), which stays on the primary (and replicas) of the channel's slot, where
plain ``PUBLISH`` would be copied to every node of the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = [
    "ClusterServers",
    "OneServer",
    "Servers",
    "passes",
    "redirection",
    "slot_of",
]

logger = logging.getLogger("channels_engines.redis")

#: Hash slots of a Redis Cluster.
SLOTS = 16384
Address = tuple[str, int]


def slot_of(key: str) -> int:
    """The cluster slot of ``key`` (of its hash tag, when it has one)."""
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


def redirection(error: BaseException) -> tuple[str, int, Address] | None:
    """``("MOVED" or "ASK", slot, node)`` when ``error`` is a cluster's redirection, else
    None. (redis-py 8 raises MovedError and AskError; earlier releases a ResponseError
    with the server's text.)"""
    from redis.exceptions import AskError, MovedError, ResponseError

    if isinstance(error, (MovedError, AskError)):
        kind = "MOVED" if isinstance(error, MovedError) else "ASK"
        return kind, error.slot_id, _address(error.host, error.port)
    if not isinstance(error, ResponseError):
        return None
    words = str(error).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK") or not words[1].isdigit():
        return None
    host, _, port = words[2].rpartition(":")
    if not port.isdigit():
        return None
    return words[0], int(words[1]), _address(host, int(port))


def passes(error: BaseException) -> bool:
    """Whether ``error`` is a cluster's TRYAGAIN, CLUSTERDOWN or MASTERDOWN: it passes by
    itself (keys being moved, a failover under way)."""
    from redis.exceptions import (
        ClusterDownError,
        MasterDownError,
        ResponseError,
        TryAgainError,
    )

    if isinstance(error, (ClusterDownError, MasterDownError, TryAgainError)):
        return True
    return isinstance(error, ResponseError) and str(error).startswith(
        ("TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN")
    )


class Servers:
    """Where keys are: the interface both kinds of target share."""

    #: Announcements on sharded pub/sub (a cluster), or plain pub/sub.
    sharded = False

    async def for_key(self, key: str) -> Any:
        """The client of the server that holds ``key``."""
        raise NotImplementedError

    async def node_of(self, key: str) -> Hashable:
        """The server that holds ``key``: equal for keys on one server."""
        raise NotImplementedError

    def client_of(self, node: Hashable) -> Any:
        """The client of a server :meth:`node_of` named."""
        raise NotImplementedError

    async def every(self) -> list[Any]:
        """The client of every server that holds keys (every primary)."""
        raise NotImplementedError

    def serves(self, node: Hashable) -> bool:
        """Whether ``node`` holds keys now (as far as the slot map knows)."""
        return True

    def redirected(self, error: BaseException) -> bool:
        """Learn from ``error``; True if the call may go again at once, to where the key
        is now (``MOVED``)."""
        return False

    def may_retry(self, error: BaseException) -> bool:
        """Whether ``error`` passes by itself (a slot being moved, a cluster that is
        failing over): the call is tried again after a pause."""
        return False

    def failed(self, node: Hashable | None = None) -> None:
        """A connection failed (to ``node``, or to one of them): the layout may have
        changed."""

    async def disconnect(self) -> None:
        """Close every open connection (the primary moved); new ones open on use."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class OneServer(Servers):
    """A single server, or the primary the Sentinels name: one pool for every key."""

    def __init__(self, client: Any, close: Callable[[Any], Any]) -> None:
        self.client = client
        self._close = close

    async def for_key(self, key: str) -> Any:
        return self.client

    async def node_of(self, key: str) -> Hashable:
        return None

    def client_of(self, node: Hashable) -> Any:
        return self.client

    async def every(self) -> list[Any]:
        return [self.client]

    async def disconnect(self) -> None:
        await self.client.connection_pool.disconnect(inuse_connections=True)

    async def close(self) -> None:
        await self._close(self.client)


class ClusterServers(Servers):
    """The primaries of a Redis Cluster, one bounded pool each, and the slot map."""

    sharded = True

    def __init__(
        self,
        nodes: Sequence[Address],
        client_at: Callable[[Address], Any],
        close: Callable[[Any], Any],
        *,
        describe: str,
    ) -> None:
        self._configured = list(nodes)
        self._client_at = client_at
        self._close = close
        self._describe = describe
        self._slots: list[Address | None] = [None] * SLOTS
        self._clients: dict[Address, Any] = {}
        self._stale = True
        self._lock = asyncio.Lock()
        #: Times the slot map was learnt (for tests).
        self.refreshes = 0

    # Routing -----------------------------------------------------------------------

    async def node_of(self, key: str) -> Address:
        slot = slot_of(key)
        node = self._slots[slot]
        if node is None or self._stale:
            await self.refresh()
            node = self._slots[slot]
            if node is None:
                from redis.exceptions import ClusterDownError

                raise ClusterDownError(f"no primary serves slot {slot} of {self._describe}")
        return node

    async def for_key(self, key: str) -> Any:
        return self.client_of(await self.node_of(key))

    def client_of(self, node: Hashable) -> Any:
        assert isinstance(node, tuple)
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = self._client_at(node)
        return client

    async def every(self) -> list[Any]:
        if self._stale or None in self._slots:
            await self.refresh()
        return [self.client_of(node) for node in dict.fromkeys(self._slots) if node is not None]

    def serves(self, node: Hashable) -> bool:
        return node in self._slots

    def redirected(self, error: BaseException) -> bool:
        found = redirection(error)
        if found is None or found[0] != "MOVED":
            return False
        self._slots[found[1]] = found[2]
        return True

    def may_retry(self, error: BaseException) -> bool:
        from redis.exceptions import ReadOnlyError

        # A replica that was a primary refuses writes until it learns of its demotion.
        if passes(error) or isinstance(error, ReadOnlyError):
            self._stale = True
            return True
        return False

    def failed(self, node: Hashable | None = None) -> None:
        self._stale = True

    async def refresh(self) -> None:
        """Learn the slot map from the first node that answers: the known primaries,
        then the configured nodes."""
        started = time.monotonic()
        async with self._lock:
            if not self._stale and None not in self._slots and self.refreshes:
                return  # learnt while this caller waited for the lock
            candidates = list(dict.fromkeys([*self._clients, *self._configured]))
            last: BaseException | None = None
            for node in candidates:
                client = self.client_of(node)
                try:
                    answer = await client.execute_command("CLUSTER SLOTS")
                except Exception as exc:
                    last = exc
                    continue
                slots: list[Address | None] = [None] * SLOTS
                for first, last_slot, primary, *_replicas in answer:
                    host = primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
                    address = _address(host or node[0], int(primary[1]))
                    for slot in range(int(first), int(last_slot) + 1):
                        slots[slot] = address
                self._slots = slots
                self._stale = False
                self.refreshes += 1
                await self._close_unused()
                logger.debug(
                    "Learnt the slots of %s from %s:%s in %.3f s.",
                    self._describe,
                    *node,
                    time.monotonic() - started,
                )
                return
            assert last is not None
            raise last

    async def _close_unused(self) -> None:
        """Close the pools of nodes that serve no slot now (demoted or removed)."""
        serving = set(self._slots)
        for node in [node for node in self._clients if node not in serving]:
            client = self._clients.pop(node)
            with contextlib.suppress(Exception):
                await self._close(client)

    # Connections -------------------------------------------------------------------

    async def disconnect(self) -> None:
        for client in list(self._clients.values()):
            await client.connection_pool.disconnect(inuse_connections=True)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await self._close(client)


def _address(host: str, port: int) -> Address:
    return (host, int(port))
