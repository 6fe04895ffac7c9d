"""Physical floor for Redis: PUBLISH / SUBSCRIBE through redis.asyncio.

Pub/sub is Redis' exact counterpart of LISTEN/NOTIFY: the server pushes each message to
the subscribed connection with no storage and no per-message request from the receiver
(a list + BLPOP needs a blocking request per message and stores data). It is the fastest
way Redis delivers a message, so it is the floor for both Redis layers. Publishing goes
through redis-py's ordinary connection pool, as any redis.asyncio user would.

RESP2 (`protocol=2`): redis-py 8.1's RESP3 parser builds a debug-log string of every
pushed pub/sub message, even with logging off (about 15 ms per 1 MiB message); the
fastest reasonable use of the library avoids it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from benchmarks.raw_router import Message, RawFloor, group_topic, pack, split_channel, unpack


class RawRedisLayer(RawFloor):
    """The thinnest adapter giving Redis pub/sub the channel-layer calls."""

    def __init__(self, url: str, *, per_call_connections: bool = False) -> None:
        super().__init__(per_call_connections=per_call_connections)
        self._url = url
        self._client: Redis | None = None

    async def send(self, channel: str, message: Message) -> None:
        """One PUBLISH to the receiving process' topic."""
        topic, local = split_channel(channel)
        await self._publish(topic, pack({"c": local, "m": message}))

    async def group_send(self, group: str, message: Message) -> None:
        """One PUBLISH on the group topic; each subscribed process fans out locally."""
        await self._publish(group_topic(group), pack(message))

    def _get_client(self) -> Redis:
        if self._client is None:
            self._client = Redis.from_url(self._url, protocol=2)
        return self._client

    async def _publish(self, topic: str, data: bytes) -> None:
        if self._per_call:
            # A new event loop per async_to_sync call, and nothing kept between loops.
            client = Redis.from_url(self._url, protocol=2)
            try:
                await client.publish(topic, data)
            finally:
                await client.aclose()
            return
        await self._get_client().publish(topic, data)

    async def _listen(self) -> Coroutine[Any, Any, None]:
        pubsub = self._get_client().pubsub()
        await pubsub.subscribe(self._router.topic, *self._router.group_topics)
        return self._read(pubsub)

    async def _read(self, pubsub: PubSub) -> None:
        own = self._router.topic.encode()
        async for item in pubsub.listen():
            if item["type"] != "message":
                continue
            if item["channel"] == own:
                envelope = unpack(item["data"])
                self._router.deliver(envelope["c"], envelope["m"])
            else:
                self._router.deliver_group(item["channel"].decode(), unpack(item["data"]))
