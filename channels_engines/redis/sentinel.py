"""Following a Redis Sentinel failover at once.

New connections ask a Sentinel where the primary is, but connections already open stay
with the old primary, which keeps accepting writes until the Sentinels demote it (about
ten seconds later): writes stored there meanwhile are lost when it resynchronises from
the new primary. So each engine with a Sentinel target also subscribes to the Sentinels'
``+switch-master`` channel, on one connection to any of them, and when its service
changes primary it drops every connection to the old one: in-flight calls are repeated
on the new primary, and the pub/sub connection moves there and reads what it missed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["SWITCH_MASTER", "connect_to_a_sentinel", "switched"]

logger = logging.getLogger("channels_engines.redis")

#: The Sentinel event that announces a new primary: "<name> <old ip> <old port> <new ip>
#: <new port>".
SWITCH_MASTER = "+switch-master"


def switched(service_name: str, data: bytes) -> bool:
    """Whether a ``+switch-master`` message is about ``service_name``."""
    parts = data.split()
    return bool(parts) and parts[0].decode(errors="replace") == service_name


def connect_to_a_sentinel(
    sentinels: Sequence[tuple[str, int]], timeout: float, credential_provider: Any = None
) -> Callable[[], Any]:
    """A ``connect()`` for the watcher's :class:`~.listener.Listener`: each call tries the
    next Sentinel in turn, so a Sentinel that is down is passed over."""
    from redis.asyncio.connection import Connection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    turn = itertools.cycle(range(len(sentinels)))

    async def connect() -> Any:
        host, port = sentinels[next(turn)]
        conn: Any = Connection(
            host=host,
            port=port,
            protocol=2,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            credential_provider=credential_provider,
        )
        await conn.connect()
        return conn

    return connect
