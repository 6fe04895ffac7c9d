"""The Redis engine: a stream per queue, pub/sub to tell the right process.

The engine adapts the channel layer contract to its parts, one set per event loop: a
small bounded pool of command connections, a :class:`~.sending.Writer` that pipelines
what this loop stores, a :class:`~.delivery.Delivery` that takes messages (from
announcements, reads and claims) into the :class:`~.delivery.Inbox` the process shares,
one pub/sub connection (:class:`~.listener.Listener`) once something is received, and
the periodic :class:`~.maintenance.Maintenance`. Each message is a stream entry (see
:mod:`.keys`); its announcement names the receiving process's queue, or wakes the
receivers of a normal channel, and the sender's id and sequence number keep it to one
entry however often a send is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from channels.exceptions import ChannelFull

from .._version import __version__
from ..contract import BaseChannelEngine, EngineConfig
from ..exceptions import ChannelLayerClosed
from ..hooks import ConnectionsChanged, ListenerLost, ListenerRecovered
from ..requirements import Requirement
from ..senders import Senders
from ..validation import non_local_name
from .options import OPTIONS

__all__ = ["RedisEngine"]

logger = logging.getLogger("channels_engines.redis")

# Dropped-message warnings are repeated at most this often (seconds).
_WARN_EVERY = 60.0
# Keys deleted per UNLINK by flush().
_FLUSH_BATCH = 500


class RedisEngine(BaseChannelEngine):
    """Channels over Redis streams, with pub/sub to wake the receiving process."""

    name = "redis"
    version = __version__
    description = "Redis streams with pub/sub wake-ups (redis-py asyncio)."
    extensions = ("groups", "flush")
    requires = (Requirement("redis", "redis", "redis"),)
    options = OPTIONS

    shared: _Shared

    @classmethod
    def create_shared(cls, config: EngineConfig) -> _Shared:
        from .connection import Login
        from .delivery import Inbox
        from .keys import Keys

        options = config.options
        return _Shared(
            login=Login(options, config.where),
            keys=Keys(options["prefix"]),
            inbox=Inbox(),
            senders=Senders(),
        )

    def __init__(self, config: EngineConfig, shared: Any, *, client_id: str) -> None:
        super().__init__(config, shared, client_id=client_id)
        from .delivery import Delivery
        from .sending import Writer

        options = self._options = config.options
        self._servers_obj: Any = None
        # Pub/sub connections by server (one, or one per cluster node heard from); the
        # first also hears of flushes.
        self._listeners: dict[Any, Any] = {}
        self._failover_watch: Any = None
        self._maintenance: Any = None
        self._watched: dict[str, str] = {}  # pub/sub channel -> queue
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._last_drop_warning = 0.0
        login = shared.login
        self._writer = Writer(
            servers=self._servers,
            keys=shared.keys,
            sender=shared.senders.lease(),
            expiry=lambda: self.config.expiry,
            deadline=options["pool_timeout"],
            where=config.where,
            refused=login.refused,
            own_connection=options["pool_max_size"] >= 2,
        )
        self._delivery = Delivery(
            inbox=shared.inbox,
            keys=shared.keys,
            servers=self._servers,
            consumer=client_id,
            capacity_for=lambda queue: self.config.capacity_for(queue),
            events=lambda: self.events,
            deadline=options["pool_timeout"],
            where=config.where,
            refused=login.refused,
        )
        self._message_keys: tuple[bytes, ...] = ()
        #: Failovers this engine moved its connections for (for tests).
        self.failovers_followed = 0
        # Each server's run id as its listener last saw it, and whether it changed.
        self._run_ids: dict[Any, str | None] = {}
        self._server_restarted = False

    @property
    def message_keys(self) -> tuple[bytes, ...]:
        """Keys of the layer's notes: with them, messages for process-specific channels
        ride in their announcement (see :mod:`.notes`)."""
        return self._message_keys

    @message_keys.setter
    def message_keys(self, keys: Iterable[bytes]) -> None:
        from .notes import Notary

        self._message_keys = tuple(keys)
        notary = Notary(self._message_keys) if self._message_keys else None
        self._writer.notary = notary
        self._delivery.notary = notary

    # Channel layer operations ------------------------------------------------------

    async def send(self, channel: str, message: bytes) -> None:
        from .sending import Store

        queue = non_local_name(channel)
        local = channel[len(queue) :]
        item = Store(queue, local, self.config.capacity_for(channel), message)
        (outcome,) = await self._writer.store([item])
        if outcome == "full":
            raise ChannelFull(channel)
        if outcome == "no memory":
            from .calls import server_full

            raise server_full(what=f"send() to {channel!r}", where=self.config.where)

    async def receive(self, channel: str) -> bytes:
        mailbox = self.shared.inbox.mailbox
        queue = non_local_name(channel)
        message = mailbox.take_nowait(channel)
        if message is None:
            await self._watch(queue)
            if queue == channel:
                # A normal channel is shared with other processes: claim only as many
                # messages as there are receivers waiting here, once this one is counted.
                self._claim_soon(queue)
            message = await mailbox.get(channel)
        if self._delivery.room_again(queue):
            # The mailbox had been full: take what was left in the stream.
            self._read_soon(queue)
        return message  # type: ignore[no-any-return]

    async def group_add(self, group: str, channel: str) -> None:
        from .calls import call, run_script
        from .keys import JOIN

        expiry = self.config.group_expiry
        key = self.shared.keys.group(group)
        servers = await self._servers()
        await self._call(
            lambda: run_script(servers, JOIN, [key], [channel, "" if expiry is None else expiry]),
            "group_add()",
            call,
        )

    async def group_discard(self, group: str, channel: str) -> None:
        from .calls import call

        key = self.shared.keys.group(group)
        servers = await self._servers()

        async def discard() -> None:
            await (await servers.for_key(key)).zrem(key, channel)

        await self._call(discard, "group_discard()", call)

    async def group_send(self, group: str, message: bytes) -> int:
        from .calls import call, run_script
        from .keys import MEMBERS
        from .sending import Store

        key = self.shared.keys.group(group)
        servers = await self._servers()
        members = await self._call(
            lambda: run_script(servers, MEMBERS, [key], []), "group_send()", call
        )
        # One entry per receiving queue: a process's channels share one.
        queues: dict[str, list[str]] = {}
        for raw in members:
            channel = raw.decode()
            queue = non_local_name(channel)
            queues.setdefault(queue, []).append(channel[len(queue) :])
        items = [
            Store(queue, ",".join(locals_), self.config.capacity_for(queue), message)
            for queue, locals_ in queues.items()
        ]
        if not items:
            return 0
        outcomes = await self._writer.store(items)
        full = outcomes.count("full")
        no_memory = outcomes.count("no memory")
        if full or no_memory:
            self.events.count("group_send.dropped", full + no_memory)
            self._warn_dropped(group, full, no_memory, len(items))
        return len(items)

    async def flush(self) -> None:
        from .calls import call

        keys = self.shared.keys
        servers = await self._servers()

        async def flush() -> None:
            clients = await servers.every()
            for client in clients:
                batch: list[Any] = []
                async for key in client.scan_iter(match=keys.pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= _FLUSH_BATCH:
                        await _unlink(client, batch)
                        batch = []
                if batch:
                    await _unlink(client, batch)
            # Plain pub/sub: in a cluster too, every node passes it on.
            await clients[0].publish(keys.flush, self.shared.flush_mark)

        await self._call(flush, "flush()", call)
        self.shared.inbox.clear()
        # What was sent since is read from each stream's start.
        self._on_subscribed(list(self._watched))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Receivers waiting here would wait for a listener that no longer exists.
        self.shared.inbox.mailbox.interrupt(
            asyncio.get_running_loop(),
            ChannelLayerClosed("the channel layer was closed while receive() waited"),
        )
        await self._writer.close()
        self.shared.senders.give_back(self._writer.sender)
        listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            await listener.stop()
        if self._failover_watch is not None:
            await self._failover_watch.stop()
            self._failover_watch = None
        if self._servers_obj is not None:
            with contextlib.suppress(Exception):
                await self._delivery.forget()
        if self._maintenance is not None:
            await self._maintenance.stop()
            self._maintenance = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        servers, self._servers_obj = self._servers_obj, None
        if servers is not None:
            await servers.close()

    # Inspection --------------------------------------------------------------------

    def inspection(self) -> Any:
        from .inspection import RedisInspection

        return RedisInspection(self)

    @property
    def listener(self) -> Any:
        """This loop's (first) pub/sub connection, once something was received."""
        return next(iter(self._listeners.values()), None)

    @property
    def listeners(self) -> dict[Any, Any]:
        """This loop's pub/sub connections by server (by node, in a cluster)."""
        return dict(self._listeners)

    @property
    def servers(self) -> Any:
        """This loop's :class:`~.servers.Servers`, once connected."""
        return self._servers_obj

    @property
    def writer(self) -> Any:
        """What stores this loop's messages."""
        return self._writer

    @property
    def delivery(self) -> Any:
        """What takes this loop's messages into the mailbox."""
        return self._delivery

    # Receiving ---------------------------------------------------------------------

    async def _watch(self, queue: str) -> None:
        """Make sure this loop hears of ``queue``: its channel is subscribed on the
        listener of its server (started on first use) before the caller waits."""
        keys = self.shared.keys
        channel = keys.note(queue) if queue.endswith("!") else keys.wake(queue)
        self._watched[channel] = queue
        listener = self._holder(channel)
        if listener is not None and listener.is_ready:
            return  # the usual case: subscribed already
        if listener is None or listener.failed:
            listener = await self._place(channel)
        try:
            await listener.ready()
        except BaseException:
            if listener.failed:
                self._forget_listener(listener)
            raise

    def _holder(self, channel: str) -> Any:
        """The listener subscribed to ``channel``, if any."""
        for listener in self._listeners.values():
            if listener.wants(channel):
                return listener
        return None

    async def _place(self, channel: str) -> Any:
        """Subscribe ``channel`` on the listener of the server that serves it."""
        from .calls import call

        servers = await self._servers()
        node = None
        if servers.sharded:
            node = await self._call(lambda: servers.node_of(channel), "receive()", call)
        listener = self._listeners.get(node)
        if listener is None or listener.failed:
            if listener is not None:
                self._forget_listener(listener)
            listener = self._start_listener(node)
        listener.watch([channel])
        return listener

    def _forget_listener(self, listener: Any) -> None:
        """Drop a listener whose first connection failed; its channels are placed
        again by the next receive() or the sweep."""
        for node, known in list(self._listeners.items()):
            if known is listener:
                del self._listeners[node]
                self._spawn(listener.stop())

    def _start_listener(self, node: Any) -> Any:
        from .listener import Listener

        options = self._options
        login = self.shared.login
        servers = self._servers_obj
        first = not self._listeners
        describe = login.describe()
        if node is not None:
            describe += f" (node {node[0]}:{node[1]})"
        listener = Listener(
            connect=lambda: self._connect_listener(node),
            on_message=self._on_message,
            on_subscribed=self._on_subscribed,
            on_lost=lambda reason: self._listener_lost(node, reason),
            on_back=lambda away: self.events.emit(
                ListenerRecovered, away=away, may_have_missed=self._server_restarted
            ),
            heartbeat=options["heartbeat_interval"],
            heartbeat_timeout=options["heartbeat_timeout"],
            describe=describe,
            sharded=(lambda channel: channel != self.shared.keys.flush)
            if servers is not None and servers.sharded
            else (lambda channel: False),
            on_moved=self._moved,
        )
        self._listeners[node] = listener
        if first:
            listener.watch([self.shared.keys.flush])
        listener.start()
        return listener

    def _listener_lost(self, node: Any, reason: str) -> None:
        self.events.emit(ListenerLost, reason=reason)
        servers = self._servers_obj
        if servers is not None and servers.sharded:
            # The node may have failed over: its channels may belong elsewhere now.
            servers.failed(node)
            self._spawn(self._move_from(node))

    async def _move_from(self, node: Any) -> None:
        """Place again the channels of ``node``'s listener that another node serves now."""
        listener = self._listeners.get(node)
        servers = self._servers_obj
        if listener is None or servers is None:
            return
        for channel in listener.wanted:
            if channel != self.shared.keys.flush and await servers.node_of(channel) != node:
                listener.unwatch([channel])
                await self._place(channel)

    async def _leave_nodes_that_are_down(self) -> None:
        """Move the channels of cluster listeners that cannot reach their node to where
        their slots are now (a crashed primary's replica took over), and the hearing of
        flushes to a listener that is connected."""
        servers = self._servers_obj
        if servers is None or not servers.sharded:
            return
        down = [node for node, listener in self._listeners.items() if not listener.connected]
        if not down:
            return
        servers.failed()
        for node in down:
            await self._move_from(node)
        flush = self.shared.keys.flush
        holder = self._holder(flush)
        if holder is not None and not holder.connected:
            other = next((li for li in self._listeners.values() if li.connected), None)
            if other is not None:
                holder.unwatch([flush])
                other.watch([flush])

    def _moved(self, channels: list[str]) -> None:
        """A node gave ``channels`` back (their slot moved): subscribe them where their
        slot is now; the subscription's confirmation reads what was missed."""
        servers = self._servers_obj
        if servers is None or self._closed:
            return
        servers.failed()

        async def move() -> None:
            for channel in channels:
                if channel in self._watched and self._holder(channel) is None:
                    await self._place(channel)

        self._spawn(move())

    async def _connect_listener(self, node: Any) -> Any:
        """A connection of its own (not from the pool), logged in like the others."""
        from .calls import call

        servers = await self._servers()

        async def connect() -> Any:
            conn = servers.client_of(node).connection_pool.make_connection()
            conn.purpose = "pubsub"  # counted as such (see connection._counted)
            try:
                await conn.connect()
                # A server that restarted (a new run id) may have lost what it held.
                await conn.send_command("INFO", "server")
                run_id = _run_id(await conn.read_response())
                self._server_restarted = self._run_ids.get(node) not in (None, run_id)
                self._run_ids[node] = run_id
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                raise
            return conn

        return await self._call(connect, "receive()", call)

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel == self.shared.keys.flush:
            if data == self.shared.flush_mark:
                return  # this process' own flush, done: what arrived since is kept
            # Another process flushed: what this one took before is gone, and what was
            # sent since is read again from each stream's start.
            self.shared.inbox.clear()
            self._on_subscribed(list(self._watched))
            return
        queue = self._watched.get(channel)
        if queue is None:
            return
        if queue.endswith("!"):
            if self._delivery.announced(queue, data):
                self._read_soon(queue)
        else:
            self._claim_soon(queue)

    def _on_subscribed(self, channels: Iterable[str]) -> None:
        """Read (or claim) what arrived before these subscriptions were confirmed."""
        for channel in channels:
            queue = self._watched.get(channel)
            if queue is None:
                continue
            if queue.endswith("!"):
                self._read_soon(queue)
            else:
                self._claim_soon(queue)

    def _read_soon(self, queue: str) -> None:
        """Read ``queue``'s stream in the background (or make the running read repeat).

        The queue is marked as being read at once, not when the task first runs: from
        here on its announcements wait for the read, so none can overtake an entry the
        read will take."""
        inbox = self.shared.inbox
        if not self._closed and inbox.start(inbox.reading, inbox.read_again, queue):
            self._spawn_marked(self._delivery.read(queue), inbox.reading, queue)

    def _claim_soon(self, queue: str) -> None:
        inbox = self.shared.inbox
        if not self._closed and inbox.start(inbox.claiming, inbox.claim_again, queue):
            self._spawn_marked(self._delivery.claim(queue), inbox.claiming, queue)

    def _spawn_marked(self, work: Coroutine[Any, Any, Any], marks: set[str], queue: str) -> None:
        """Run ``work``, which ends the mark it was started under; if the task is
        cancelled before ``work`` ever runs (its loop closing), the mark ends here."""
        started = False

        async def run() -> None:
            nonlocal started
            started = True
            await work

        def never_ran(_task: asyncio.Task[Any]) -> None:
            if not started:
                work.close()
                with self.shared.inbox.lock:
                    marks.discard(queue)

        self._spawn(run()).add_done_callback(never_ran)

    # Maintenance -------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Safety reads and claims (in case an announcement was lost), expiry, deletion
        of what was taken, credentials."""
        inbox = self.shared.inbox
        if self._listeners:
            await self._leave_nodes_that_are_down()
            waiting = inbox.mailbox.waiting()
            for channel, queue in list(self._watched.items()):
                holder = self._holder(channel)
                if queue.endswith("!") or waiting.get(queue):
                    if holder is None:
                        # Given back by a node whose slot moved, and not placed yet.
                        await self._place(channel)
                    if queue.endswith("!"):
                        self._read_soon(queue)
                    else:
                        self._claim_soon(queue)
                else:
                    # Nobody here receives on it now: stop hearing of its messages.
                    del self._watched[channel]
                    if holder is not None:
                        holder.unwatch([channel])
            flush = self.shared.keys.flush
            for node, listener in list(self._listeners.items()):
                # A cluster node's listener with nothing left to hear (the one that
                # hears of flushes stays).
                if not listener.wants_any(exclude=flush) and not listener.wants(flush):
                    del self._listeners[node]
                    await listener.stop()
        inbox.mailbox.expire()
        # A sender's retry arrives within its deadline, and expires within ``expiry``.
        inbox.forget_senders(
            time.monotonic() - 2 * (self.config.expiry + self._options["pool_timeout"])
        )
        await self._delivery.forget()
        await self.shared.login.refresh_ahead()

    # Connections -------------------------------------------------------------------

    async def _servers(self) -> Any:
        """This loop's :class:`~.servers.Servers`, made on first use (with the
        maintenance it needs)."""
        if self._servers_obj is None:
            if self._closed:
                raise RuntimeError("this channel layer engine was closed")
            from .maintenance import Maintenance

            options = self._options
            size = options["pool_max_size"]
            self._servers_obj = self.shared.login.servers(
                count=self._count_connections,
                # With two or more, one is the writer's own (see sending.Writer).
                connections=size - 1 if size >= 2 else size,
                wait=options["pool_timeout"],
                timeout=options["query_timeout"],
            )
            self.shared.login.report_to(self.events)
            if self.shared.login.sentinels is not None:
                self._watch_failovers()
            self._maintenance = Maintenance(
                interval=options["sweep_interval"], housekeeping=self._housekeeping
            )
            self._maintenance.start()
        return self._servers_obj

    def _watch_failovers(self) -> None:
        """Hear the Sentinels announce a new primary (see :mod:`.sentinel`)."""
        from .listener import Listener
        from .sentinel import SWITCH_MASTER, connect_to_a_sentinel, switched

        login = self.shared.login
        options = self._options

        def on_message(channel: str, data: bytes) -> None:
            if channel == SWITCH_MASTER and switched(login.service_name, data):
                self._follow_failover_soon()

        self._failover_watch = Listener(
            connect=connect_to_a_sentinel(
                login.sentinels, options["query_timeout"], login.sentinel_login()
            ),
            on_message=on_message,
            on_subscribed=lambda channels: None,
            on_lost=lambda reason: None,
            # Back after being away: a switch may have been missed.
            on_back=lambda away: self._follow_failover_soon(),
            heartbeat=options["heartbeat_interval"],
            heartbeat_timeout=options["heartbeat_timeout"],
            describe=f"the Sentinels of {login.service_name!r}",
        )
        self._failover_watch.watch([SWITCH_MASTER])
        self._failover_watch.start()

    def _follow_failover_soon(self) -> None:
        if not self._closed:
            self._spawn(self._follow_failover())

    async def _follow_failover(self) -> None:
        """The primary changed (or may have, while the watch was away): drop every
        connection to the old one. Calls in flight are repeated on the new primary; the
        pub/sub connection moves and reads what it missed."""
        logger.warning("%s: a new primary; moving the connections.", self.config.where)
        self.failovers_followed += 1
        servers = self._servers_obj
        if servers is not None:
            await servers.disconnect()
        await self._writer.drop_connection()
        for listener in self._listeners.values():
            listener.replace_connection()

    def _count_connections(self, purpose: str, delta: int) -> None:
        """Keep the process-wide count of the layer's connections, and report it."""
        shared = self.shared
        with shared.inbox.lock:
            shared.connections[purpose] = held = shared.connections.get(purpose, 0) + delta
        self.events.emit(ConnectionsChanged, purpose=purpose, held=held)

    async def _call(self, work: Any, what: str, call: Any) -> Any:
        return await call(
            work,
            deadline=self._options["pool_timeout"],
            what=what,
            where=self.config.where,
            refused=self.shared.login.refused,
            servers=self._servers_obj,
        )

    # Helpers -----------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._closed:
            logger.warning("Background work of the redis engine failed: %s", task.exception())

    def _warn_dropped(self, group: str, full: int, no_memory: int, queues: int) -> None:
        now = time.monotonic()
        message = "group_send to %r: %d of %d receiving queues missed the message (%s)."
        reasons = []
        if full:
            reasons.append(f"{full} at capacity")
        if no_memory:
            reasons.append(
                f"{no_memory} refused by a Redis server with no memory left: maxmemory "
                "reached, and its maxmemory-policy refuses writes"
            )
        args = (group, full + no_memory, queues, "; ".join(reasons))
        if now - self._last_drop_warning >= _WARN_EVERY:
            self._last_drop_warning = now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)


async def _unlink(client: Any, keys: list[Any]) -> None:
    """Delete ``keys`` (one command each: in a cluster, keys of one call share a slot)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    await pipe.execute()


def _run_id(info: Any) -> str | None:
    """The ``run_id`` line of ``INFO server``."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line.partition(":")[2].strip()
    return None


@dataclass
class _Shared:
    """What every event loop's engine of one layer shares in a process."""

    login: Any
    keys: Any
    inbox: Any
    senders: Senders
    #: Connections the layer holds in this process, by purpose ("commands", "pubsub").
    connections: dict[str, int] = field(default_factory=dict)
    #: What this process' flushes announce, so that it knows its own notices: one can
    #: arrive after messages sent since (in a cluster it crosses the cluster bus).
    flush_mark: bytes = field(default_factory=lambda: secrets.token_hex(8).encode())

    @property
    def mailbox(self) -> Any:
        """Messages taken by this process and not yet received."""
        return self.inbox.mailbox
