"""A TCP proxy for fault tests: put it between a client and PostgreSQL, then break links.

Each accepted connection (a :class:`Link`) is forwarded to the target until a test tells
it otherwise: ``blackhole()`` stops forwarding in one or both directions without closing
either socket (what a silent network or a dead NAT entry looks like to both ends: TCP stays
up, nothing arrives), ``reset()`` closes both sides abruptly, ``forward()`` heals it. A
black hole only stops reading, so bytes sent meanwhile wait in the kernel's buffers and
arrive if the link is healed, as TCP would retransmit them after a partition. New
connections can be refused (``refuse()``), and :meth:`FaultProxy.after_client_sends` turns
the link that forwards given client bytes into a black hole (or resets it) right after
forwarding them, so that "the server committed and the answer was lost" is deterministic.

The proxy runs its own event loop in a thread, so it keeps working while the test's loop
(or the test's thread) is busy or blocked. Control methods are synchronous and return once
the change is in effect. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["Direction", "FaultProxy", "Link", "Refusal", "Trigger"]

T = TypeVar("T")

#: ``up`` is client to server, ``down`` server to client.
Direction = Literal["up", "down", "both"]
#: ``close``: accept, then close at once (the client sees the server hang up during the
#: start-up). ``reset``: accept, then reset. ``hang``: accept and never answer (the client
#: waits for the server's greeting). ``closed-port``: stop listening (connection refused).
Refusal = Literal["close", "reset", "hang", "closed-port"]

_CONTROL_TIMEOUT = 10.0
# Bytes a side may have waiting to be written before reading from the other side pauses.
_HIGH_WATER = 256 * 1024


@dataclass
class Trigger:
    """Fires once, on the first link that forwards a client packet containing one of
    ``patterns``."""

    patterns: tuple[bytes, ...]
    action: Literal["blackhole", "reset"]
    direction: Direction
    fired: threading.Event = field(default_factory=threading.Event)
    #: The link it fired on.
    link: Link | None = None

    def wait(self, timeout: float) -> bool:
        return self.fired.wait(timeout)


class Link:
    """One client connection and its connection to the target."""

    def __init__(self, proxy: FaultProxy, number: int) -> None:
        self._proxy = proxy
        self.number = number
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        #: Bytes forwarded client to server, and server to client.
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed = False
        self._holes: set[str] = set()  # directions black-holed: "up", "down"
        self._full: set[str] = set()  # directions paused because the writer is full
        self._tail = b""  # the end of the last client packet, for patterns across packets
        # What the client sent before the target was connected. Reading is paused until
        # then, but some Pythons (Debian 12's 3.11.2) ignore a pause made in connection_made.
        self._early = b""

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("blackholed " + "+".join(sorted(self._holes)))
        if not self.closed and not self._holes:
            state = "forwarding"
        return f"<Link {self.number} {state} up={self.bytes_up} down={self.bytes_down}>"

    @property
    def blackholed(self) -> frozenset[str]:
        return frozenset(self._holes)

    def blackhole(self, direction: Direction = "both") -> None:
        """Stop forwarding in ``direction``; both sockets stay open."""
        self._proxy._call(self._set_holes, _directions(direction), True)

    def forward(self) -> None:
        """Forward in both directions again."""
        self._proxy._call(self._set_holes, {"up", "down"}, False)

    def reset(self) -> None:
        """Close both sides at once with a TCP reset."""
        self._proxy._call(self._reset)

    # On the proxy's loop -------------------------------------------------------------

    def _set_holes(self, directions: set[str], on: bool) -> None:
        self._holes = self._holes | directions if on else self._holes - directions
        self._apply()

    def _apply(self) -> None:
        """Read from a side only when its direction is neither black-holed nor full."""
        for direction, source in (("up", self.client), ("down", self.server)):
            if source is None or source.is_closing():
                continue
            if direction in self._holes or direction in self._full:
                source.pause_reading()
            else:
                source.resume_reading()

    def _from_client(self, data: bytes) -> None:
        if self.server is None:
            self._early += data
            return
        self.server.write(data)
        self.bytes_up += len(data)
        self._proxy.bytes_up += len(data)
        seen = self._tail + data
        for trigger in list(self._proxy._triggers):
            if any(pattern in seen for pattern in trigger.patterns):
                self._proxy._triggers.remove(trigger)
                trigger.link = self
                if trigger.action == "reset":
                    self._reset()
                else:
                    self._set_holes(_directions(trigger.direction), True)
                trigger.fired.set()
        longest = max(
            (len(pattern) for t in self._proxy._triggers for pattern in t.patterns), default=1
        )
        self._tail = seen[-(longest - 1) :] if longest > 1 else b""

    def _from_server(self, data: bytes) -> None:
        assert self.client is not None
        self.client.write(data)
        self.bytes_down += len(data)
        self._proxy.bytes_down += len(data)

    def _reset(self) -> None:
        for transport in (self.client, self.server):
            if transport is not None and not transport.is_closing():
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                transport.abort()
        self._closed()

    def _close(self) -> None:
        for transport in (self.client, self.server):
            if transport is not None and not transport.is_closing():
                transport.close()
        self._closed()

    def _closed(self) -> None:
        if not self.closed:
            self.closed = True
            self._proxy._links.discard(self)


class _Side(asyncio.Protocol):
    """One socket of a link; forwards what it reads to the other side."""

    def __init__(self, link: Link, side: Literal["client", "server"]) -> None:
        self.link = link
        self.side = side
        self.direction = "up" if side == "client" else "down"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        setattr(self.link, self.side, transport)

    def data_received(self, data: bytes) -> None:
        if self.side == "client":
            self.link._from_client(data)
        else:
            self.link._from_server(data)

    def eof_received(self) -> bool:
        self.link._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._close()

    def pause_writing(self) -> None:
        # This side cannot take more: stop reading from the other one.
        self.link._full.add("down" if self.side == "client" else "up")
        self.link._apply()

    def resume_writing(self) -> None:
        self.link._full.discard("down" if self.side == "client" else "up")
        self.link._apply()


class FaultProxy:
    """A TCP proxy on a free loopback port in front of ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        #: Connections accepted and forwarded, and connections refused.
        self.accepted = 0
        self.refused = 0
        #: Bytes forwarded client to server, and server to client, over all links.
        self.bytes_up = 0
        self.bytes_down = 0
        self._links: set[Link] = set()
        self._triggers: list[Trigger] = []
        self._refusal: Refusal | None = None
        self._hung: list[asyncio.Transport] = []
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault proxy")

    @classmethod
    def for_dsn(cls, dsn: str) -> FaultProxy:
        """A proxy in front of the server ``dsn`` names (host and port)."""
        params = conninfo_to_dict(dsn)
        return cls(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a URL or key=value string) with the proxy's host and port."""
        return make_conninfo(dsn, host=self.host, port=str(self.port))

    # Life cycle ----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call_async(self._listen())
        return self

    def close(self) -> None:
        """Stop listening and close every link."""
        if not self._thread.is_alive():
            return
        self._call_async(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CONTROL_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Control -------------------------------------------------------------------------

    @property
    def links(self) -> list[Link]:
        """Links still open, oldest first."""
        return sorted(self._call(lambda: list(self._links)), key=lambda link: link.number)

    def blackhole_all(self, direction: Direction = "both") -> list[Link]:
        """Black-hole every open link; return them."""
        links = self.links
        for link in links:
            link.blackhole(direction)
        return links

    def reset_all(self) -> int:
        """Reset every open link; return how many."""
        links = self.links
        for link in links:
            link.reset()
        return len(links)

    def refuse(self, how: Refusal = "close") -> None:
        """Refuse new connections (``how``: see :data:`Refusal`); open links go on."""
        self._call_async(self._set_refusal(how))

    def accept(self) -> None:
        """Forward new connections again."""
        self._call_async(self._set_refusal(None))

    def after_client_sends(
        self,
        *patterns: bytes,
        action: Literal["blackhole", "reset"] = "blackhole",
        direction: Direction = "both",
    ) -> Trigger:
        """Right after a link forwards client bytes containing one of ``patterns``,
        black-hole it (in ``direction``) or reset it. Fires once."""
        if not patterns or not all(patterns):
            raise ValueError("give at least one pattern, none of them empty")
        trigger = Trigger(patterns, action, direction)
        self._call(self._triggers.append, trigger)
        return trigger

    def cancel(self, trigger: Trigger) -> None:
        """Disarm ``trigger`` if it has not fired."""

        def disarm() -> None:
            if trigger in self._triggers:
                self._triggers.remove(trigger)

        self._call(disarm)

    # On the proxy's loop -------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await self._loop.create_server(
            self._accepted, self.host, self.port, reuse_address=True, backlog=128
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_refusal(self, how: Refusal | None) -> None:
        previous, self._refusal = self._refusal, how
        if how == "closed-port" and self._server is not None:
            # Closes the listening socket at once; open links go on (wait_closed() would
            # wait for them on Python 3.12 and later).
            self._server.close()
            self._server = None
        if previous == "closed-port" and how != "closed-port":
            await self._listen()
        if how != "hang":
            hung, self._hung = self._hung, []
            for transport in hung:
                transport.abort()

    def _accepted(self) -> asyncio.Protocol:
        if self._refusal is not None:
            self.refused += 1
            return _Refused(self, self._refusal)
        self.accepted += 1
        link = Link(self, self.accepted)
        self._links.add(link)
        return _Client(link)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            # Not a graceful close: a black-holed side would wait forever to flush.
            for transport in (link.client, link.server):
                if transport is not None:
                    transport.abort()
            link._closed()
        for transport in self._hung:
            transport.abort()
        if self._server is not None:
            # On Python 3.12 and later this also waits for the aborted links to go.
            await self._server.wait_closed()

    # Calling into the loop -----------------------------------------------------------

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        async def call() -> T:
            return function(*args)

        return self._call_async(call())

    def _call_async(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(_CONTROL_TIMEOUT)


class _Client(_Side):
    """The client's socket: connects to the target first, then forwards."""

    def __init__(self, link: Link) -> None:
        super().__init__(link, "client")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # until the target is connected
        asyncio.get_running_loop().create_task(self._connect(transport))

    async def _connect(self, transport: asyncio.Transport) -> None:
        link = self.link
        proxy = link._proxy
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: _Side(link, "server"), proxy.target_host, proxy.target_port
            )
        except OSError:
            link._reset()
            return
        if link.closed:
            assert link.server is not None
            link.server.close()
            return
        early, link._early = link._early, b""
        if early:
            link._from_client(early)
        link._apply()


class _Refused(asyncio.Protocol):
    def __init__(self, proxy: FaultProxy, how: Refusal) -> None:
        self.proxy = proxy
        self.how = how

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.how == "hang":
            transport.pause_reading()
            self.proxy._hung.append(transport)
            return
        if self.how == "reset":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return
        transport.close()


def _directions(direction: Direction) -> set[str]:
    if direction not in ("up", "down", "both"):
        raise ValueError(f"direction={direction!r}: expected 'up', 'down' or 'both'")
    return {"up", "down"} if direction == "both" else {direction}
