"""The PostgreSQL engine: a table of messages, LISTEN/NOTIFY to wake the right process.

The engine adapts the channel layer contract to its parts, one per event loop: a small
bounded pool, a :class:`~.sending.Writer` that batches what this loop stores, a
:class:`~.delivery.Delivery` that takes messages (from notifications, catch-ups and
claims) into the :class:`~.inbox.Inbox` the process shares, one LISTEN connection
(:class:`~.listener.Listener`) once something is received, and the periodic
:class:`~.maintenance.Maintenance`. Each message is a row; its NOTIFY names only the
receiving process (or, for a normal channel, its receivers; for a group, the group's
stream), and the sender's id and sequence number keep it to one delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from channels.exceptions import ChannelFull

from .._version import __version__
from ..contract import BaseChannelEngine, EngineConfig, SettingWarning
from ..exceptions import ChannelLayerClosed, ServerUnavailableError
from ..hooks import ConnectionsChanged, ListenerLost, ListenerRecovered
from ..loops import closing
from ..mailbox import Mailbox
from ..requirements import Requirement
from ..validation import non_local_name
from .options import OPTIONS

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .connection import Login
    from .delivery import Delivery
    from .inbox import Inbox
    from .inspection import PostgresInspection
    from .listener import Listener
    from .maintenance import Maintenance
    from .pool import ConnectionPool, IdleHandoff
    from .schema import Statements, TablesAtFirstUse
    from .sending import Senders, Writer

__all__ = ["PostgresEngine"]

logger = logging.getLogger("channels_engines.postgres")

# Dropped-message warnings are repeated at most this often (seconds).
_WARN_EVERY = 60.0
# The notification that tells a process another one changed its memberships.
_MEMBERS = "#members"


class PostgresEngine(BaseChannelEngine):
    """Channels over PostgreSQL LISTEN/NOTIFY, with messages kept in a table."""

    name = "postgres"
    version = __version__
    description = "PostgreSQL LISTEN/NOTIFY with messages in a table (psycopg 3)."
    extensions = ("groups", "flush")
    requires = (Requirement("psycopg", "psycopg", "postgres"),)
    options = OPTIONS

    shared: _Shared

    @classmethod
    def setting_warnings(cls, config: EngineConfig, shared: Any) -> list[SettingWarning]:
        from .setting_checks import setting_warnings

        return setting_warnings(config, shared.login)

    @classmethod
    async def close_shared(cls, shared: Any) -> None:
        # Idle connections that ended event loops left for the next one: an explicit
        # close, even from a loop that never used the layer, releases them too.
        shared.handoff.clear()

    @classmethod
    def create_shared(cls, config: EngineConfig) -> _Shared:
        from .connection import Login
        from .inbox import Inbox
        from .pool import IdleHandoff
        from .schema import Statements, Tables, TablesAtFirstUse
        from .sending import Senders

        options = config.options
        tables = Tables(options["schema"], options["table_prefix"], options["unlogged"])
        statements = Statements(tables)
        return _Shared(
            login=Login(options, config.where),
            statements=statements,
            tables=TablesAtFirstUse(
                statements,
                create=options["create_tables"],
                where=config.where,
                timeout=options["pool_timeout"],
            ),
            namespace=tables.namespace,
            handoff=IdleHandoff(options["pool_max_size"]),
            inbox=Inbox(),
            senders=Senders(),
        )

    def __init__(self, config: EngineConfig, shared: Any, *, client_id: str) -> None:
        super().__init__(config, shared, client_id=client_id)
        from .delivery import Delivery
        from .schema import listen_identifier
        from .sending import Writer

        self._listen_identifier = listen_identifier
        options = self._options = config.options
        self._pool: ConnectionPool | None = None
        self._pool_lock = asyncio.Lock()
        self._listener: Listener | None = None
        self._maintenance: Maintenance | None = None
        self._watched: dict[str, str] = {}  # LISTEN identifier -> queue
        self._identifiers: dict[str, str] = {}  # queue -> LISTEN identifier (cache)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._control = listen_identifier(shared.namespace, f"#control:{client_id}:{id(self):x}")
        self._flush_identifier = listen_identifier(shared.namespace, "#flush")
        self._closed = False
        self._writer: Writer = Writer(
            connection=self._connection,
            statements=shared.statements,
            sender=shared.senders.lease(),
            own=f".{client_id}!",
            expiry=lambda: self.config.expiry,
            query_timeout=options["query_timeout"],
            deadline=options["pool_timeout"],
        )
        self._delivery: Delivery = Delivery(
            inbox=shared.inbox,
            statements=shared.statements,
            connection=self._connection,
            owns=self.owns,
            capacity_for=lambda channel: self.config.capacity_for(channel),
            events=lambda: self.events,
            expiry=lambda: self.config.expiry,
            max_message_size=config.max_message_size,
            query_timeout=options["query_timeout"],
            pool_timeout=options["pool_timeout"],
        )
        self._message_keys: tuple[bytes, ...] = ()
        # The server's start time as the listener last saw it, and whether it changed.
        self._server_started: Any = None
        self._server_restarted = False

    @property
    def message_keys(self) -> tuple[bytes, ...]:
        """Keys of the layer's notes: with them, messages for process-specific channels
        travel inside their notification (see :mod:`.notes`)."""
        return self._message_keys

    @message_keys.setter
    def message_keys(self, keys: Sequence[bytes]) -> None:
        from .notes import Notary

        self._message_keys = tuple(keys)
        notary = Notary(self._message_keys) if self._message_keys else None
        self._writer.notary = notary
        self._delivery.notary = notary

    # Channel layer operations ------------------------------------------------------

    async def send(self, channel: str, message: bytes) -> None:
        queue = non_local_name(channel)
        with self._reaching():
            accepted = await self._writer.send(
                queue, channel, self._identifier(queue), self.config.capacity_for(channel), message
            )
        if not accepted:
            raise ChannelFull(channel)

    async def receive(self, channel: str) -> bytes:
        mailbox = self.shared.inbox.mailbox
        queue = non_local_name(channel)
        message = mailbox.take_nowait(channel)
        if message is None:
            with self._reaching():
                await self._watch(queue)
            if queue == channel:
                # A normal channel is shared with other processes: claim only as many
                # rows as there are receivers waiting here, once this one is counted.
                self._spawn_soon(queue)
            message = await mailbox.get(channel)
        if self._delivery.room_again(queue):
            # The mailbox had been full: fetch what was left in the table.
            self._catch_up_soon()
        return message

    async def group_add(self, group: str, channel: str) -> None:
        queue = non_local_name(channel)
        expiry = self.config.group_expiry
        with self._reaching():
            joined = await self._writer.group_add(
                group,
                channel,
                queue,
                self._identifier(queue),
                self.config.capacity_for(channel),
                expiry,
            )
        if self.owns(channel):
            # This process delivers its members' group messages from the group's stream.
            until = None if expiry is None else time.monotonic() + expiry
            self.shared.inbox.join(group, channel, joined, until, self._stream_identifier(group))

    async def group_discard(self, group: str, channel: str) -> None:
        with self._reaching():
            await self._writer.group_discard(group, channel)
        if self.owns(channel):
            self.shared.inbox.leave(group, [channel])

    async def group_send(self, group: str, message: bytes) -> int:
        stream = self._stream_identifier(group)
        with self._reaching():
            queues, accepted = await self._writer.group_send(group, stream, message)
        if accepted < queues:
            self.events.count("group_send.dropped", queues - accepted)
            self._warn_dropped(
                "group_send to %r: %d of %d receiving queues were at capacity and missed "
                "the message.",
                group,
                queues - accepted,
                queues,
            )
        return queues

    async def flush(self) -> None:
        with self._reaching():
            await self._flush()

    async def _flush(self) -> None:
        from .deadlines import fetch, transaction

        statements = self.shared.statements
        timeout = self._options["query_timeout"]
        async with self._connection() as conn, transaction(conn, timeout, "flush()"):
            for statement in statements.flush:
                await fetch(conn, statement, None, timeout=timeout, what="flush()")
            rows = await fetch(
                conn, statements.advance_epoch, None, timeout=timeout, what="flush()"
            )
            # Every listening process of this layer reads the new epoch and drops what it
            # had claimed before it; the notification itself carries nothing.
            # Not when the notification queue is nearly full (see schema.NOTIFY_UNTIL):
            # processes then learn the epoch at their next claim.
            await fetch(
                conn,
                statements.notify_flush,
                [self._flush_identifier],
                timeout=timeout,
                what="flush()",
            )
        self._delivery.flushed(int(rows[0][0]))

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
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
            await self._delivery.reap_before_closing()
        if self._maintenance is not None:
            await self._maintenance.stop()
            self._maintenance = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self.shared.inbox.watchers.pop(id(self), None)
        self.shared.login.unsubscribe(self)
        pool, self._pool = self._pool, None
        if pool is not None:
            # When the loop itself is ending (async_to_sync, asyncio.run), its idle
            # connections are left to the next loop; an explicit close releases them all.
            await pool.close(hand_off=closing(asyncio.get_running_loop()))

    # Inspection --------------------------------------------------------------------

    @property
    def pool(self) -> ConnectionPool | None:
        """This loop's connection pool, once something used it."""
        return self._pool

    @property
    def listener(self) -> Listener | None:
        """This loop's LISTEN connection, once something was received."""
        return self._listener

    @property
    def maintenance(self) -> Maintenance | None:
        """This loop's periodic work, once something used the pool."""
        return self._maintenance

    @property
    def writer(self) -> Writer:
        """What stores this loop's messages and memberships."""
        return self._writer

    # Receiving ---------------------------------------------------------------------

    async def _watch(self, queue: str) -> None:
        """Make sure this loop's listener wakes for ``queue``; start it on first use."""
        listener = self._listener
        if listener is None or listener.failed:
            listener = self._start_listener()
        identifier = self._identifier(queue)
        if identifier not in self._watched:
            self._watched[identifier] = queue
            if self.owns(queue):
                inbox = self.shared.inbox
                with inbox.lock:
                    inbox.own_queues.add(queue)
            listener.watch([identifier])
        try:
            await listener.ready()
        except BaseException:
            if listener.failed and self._listener is listener:
                self._listener = None
                self._watched.clear()
            raise

    def _start_listener(self) -> Listener:
        """Create and start the listener; synchronous so concurrent receives share one."""
        from .listener import Listener

        options = self._options
        self._listener = Listener(
            connect=self._connect_listener,
            control=self._control,
            poke=self._notify,
            on_wake=self._on_wake,
            on_listening=self._on_listening,
            on_connect=self._listener_connected,
            chores_in=self._delivery.reap_in,
            chores=self._delivery.reap,
            on_lost=lambda reason: self.events.emit(ListenerLost, reason=reason),
            on_back=self._listener_back,
            heartbeat=options["heartbeat_interval"],
            heartbeat_timeout=options["heartbeat_timeout"],
            query_timeout=options["query_timeout"],
            check_timeout=max(5.0, options["heartbeat_timeout"]),
            describe=self.shared.login.describe("listen"),
            on_connection=lambda delta: self._count_connections("listen", delta),
        )
        inbox = self.shared.inbox
        loop = asyncio.get_running_loop()

        def watch_streams(identifiers: list[str]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._watch_streams, identifiers)

        inbox.watchers[id(self)] = watch_streams
        self._listener.watch([self._flush_identifier, *self._watched])
        with inbox.lock:
            followed = list(inbox.streams.values())
        self._watch_streams(followed)
        self._listener.start()
        return self._listener

    def _watch_streams(self, identifiers: list[str]) -> None:
        """LISTEN on the streams of groups this process follows (any loop may add one)."""
        listener = self._listener
        if listener is None or self._closed:
            return
        inbox = self.shared.inbox
        with inbox.lock:
            queues = {ident: queue for queue, ident in inbox.streams.items()}
        new = [ident for ident in identifiers if ident in queues and ident not in self._watched]
        for ident in new:
            self._watched[ident] = queues[ident]
        listener.watch(new)

    async def _listener_connected(self, conn: AsyncConnection[tuple[Any, ...]]) -> None:
        """Whatever changed while no notification could reach this connection: the flush
        epoch, this process's memberships, and its groups' streams; and whether the
        server restarted."""
        from .deadlines import fetch

        rows = await fetch(
            conn,
            "SELECT pg_postmaster_start_time()",
            None,
            timeout=self._options["query_timeout"],
            what="reading the server's start time",
        )
        started = rows[0][0]
        self._server_restarted = self._server_started not in (None, started)
        self._server_started = started
        await self._delivery.read_epoch(conn)
        await self._sync_members(conn)

    async def _listener_back(self, conn: AsyncConnection[tuple[Any, ...]], away: float) -> None:
        """The listener reconnected after ``away`` seconds. Rows are the source of truth:
        nothing sent meanwhile is missed, unless the server restarted and the tables are
        unlogged (a crash empties them)."""
        self.events.emit(
            ListenerRecovered,
            away=away,
            may_have_missed=self._server_restarted and self._options["unlogged"],
        )

    async def _sync_members(self, conn: AsyncConnection[tuple[Any, ...]]) -> None:
        read = await self._delivery.sync_members(conn, f".{self.client_id}!", self._identifier)
        # Groups followed now are read from where their members joined.
        if read and not self._closed and self.shared.inbox.start_catch_up():
            await self._delivery.catch_up(conn)

    async def _connect_listener(self) -> AsyncConnection[tuple[Any, ...]]:
        import psycopg

        from .connection import Failure, classify
        from .deadlines import within
        from .pool import ConnectFailed

        timeout = max(self._options["query_timeout"], self._options["heartbeat_timeout"])
        try:
            conn = await self.shared.login.connect("listen", timeout)
        except psycopg.OperationalError as exc:
            if classify(exc) is not Failure.TRANSIENT:
                raise
            longer = "query_timeout" if timeout == self._options["query_timeout"] else None
            setting = longer or "heartbeat_timeout"
            raise ConnectFailed(
                exc, target=self.shared.login.describe("listen"), seconds=timeout, setting=setting
            ) from exc
        try:
            await within(
                conn,
                conn.execute(self.shared.statements.listener_session),
                self._options["query_timeout"],
                "the listener's session setup",
            )
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _notify(self, identifier: str, payload: str) -> None:
        from .deadlines import fetch

        async with self._connection() as conn:
            await fetch(
                conn,
                "SELECT pg_notify(%s, %s)",
                [identifier, payload],
                timeout=self._options["query_timeout"],
                what="a notification",
            )

    async def _on_wake(
        self, conn: AsyncConnection[tuple[Any, ...]], notifications: Sequence[tuple[str, str]]
    ) -> None:
        """Deliver the messages these notifications carry; claim (or catch up), on the
        listener's connection, what they only announce. ``notifications`` are
        (identifier, payload) in the order the server sent them."""
        delivery = self._delivery
        inbox = self.shared.inbox
        notes: list[tuple[str, str, str]] = []  # own queues and group streams, in order
        wake: set[str] = set()  # shared queues to claim
        sync = False  # another process changed this process's memberships
        catch_up = False
        read = False  # the epoch was read, and no note came since
        for identifier, payload in notifications:
            if identifier == self._flush_identifier:
                if read:
                    continue
                # Notes before it were read under the old epoch (those of this
                # process's own flush are of messages it removed); the new epoch is read
                # before any note after it is delivered, so a flush drops only what
                # came before it. Anyone may notify: what a flush changed is read from
                # the table.
                catch_up = delivery.take(notes) or catch_up
                notes = []
                await delivery.read_epoch(conn)
                read = True
                continue
            queue = self._watched.get(identifier)
            if queue is None:
                continue
            read = False
            if payload == _MEMBERS and self.owns(queue):
                sync = True
            elif queue.startswith("#") or self.owns(queue):
                notes.append((queue, identifier, payload))
            else:
                wake.add(queue)  # a normal channel: its receivers claim
        catch_up = delivery.take(notes) or catch_up
        for queue in wake:
            if not self._closed and inbox.start_claim(queue):
                await delivery.claim(queue, conn)
        if sync or inbox.members_stale:
            await self._sync_members(conn)
        if catch_up and not self._closed and inbox.start_catch_up():
            await delivery.catch_up(conn)

    def _on_listening(self, identifiers: Iterable[str]) -> None:
        """Claim (or catch up with) what arrived before (or while) these identifiers were
        LISTENed."""
        own = False
        for identifier in identifiers:
            queue = self._watched.get(identifier)
            if queue is None:
                continue
            if queue.startswith("#") or self.owns(queue):
                own = True
            else:
                self._spawn_soon(queue)
        if own:
            self._catch_up_soon()

    def _spawn_soon(self, queue: str) -> None:
        """Claim shared ``queue`` in the background (or make the running claim repeat)."""
        inbox = self.shared.inbox
        if not self._closed and inbox.start_claim(queue):
            self._spawn_marked(self._delivery.claim(queue), lambda: inbox.abandon_claim(queue))

    def _catch_up_soon(self) -> None:
        """Catch up in the background (or make the running catch-up repeat).

        The process is marked as catching up at once, not when the task first runs:
        from here on, notes wait for the catch-up, so none can overtake (and make a
        duplicate of) a row the catch-up will take."""
        inbox = self.shared.inbox
        if not self._closed and inbox.start_catch_up():
            self._spawn_marked(self._delivery.catch_up(), inbox.end_catch_up)

    def _spawn_marked(self, work: Coroutine[Any, Any, Any], unmark: Callable[[], None]) -> None:
        """Run ``work``, which ends the mark it was started under; if the task is cancelled
        before ``work`` ever runs (its loop closing), ``unmark()`` ends it instead, so it
        does not stay on for every other loop of the process."""
        started = False

        async def run() -> None:
            nonlocal started
            started = True
            await work

        def never_ran(_task: asyncio.Task[Any]) -> None:
            if not started:
                work.close()
                unmark()

        self._spawn(run()).add_done_callback(never_ran)

    def _unwatch_idle(self) -> None:
        """Stop listening for normal channels no receiver of this loop waits on."""
        listener = self._listener
        if listener is None:
            return
        mailbox = self.shared.inbox.mailbox
        loop = asyncio.get_running_loop()
        inbox = self.shared.inbox
        with inbox.lock:
            followed = set(inbox.cursors)
        idle = [
            identifier
            for identifier, queue in self._watched.items()
            if (queue.startswith("#") and queue not in followed)
            or (
                "!" not in queue
                and not queue.startswith("#")
                and mailbox.waiting_on(queue, loop) == 0
                and mailbox.buffered(queue) == 0
            )
        ]
        for identifier in idle:
            del self._watched[identifier]
        listener.unwatch(idle)

    # Maintenance -------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Safety claims (in case a notification was lost), expiry, credentials."""
        inbox = self.shared.inbox
        if self._listener is not None and not self._listener.failed:
            self._unwatch_idle()
            self._on_listening(list(self._watched))
            if inbox.members_stale:
                self._spawn(self._sync_members_pooled())
        inbox.mailbox.expire()
        # A sender's retry arrives within its deadline and expires within ``expiry``.
        inbox.forget_senders(time.monotonic() - 2 * (self.config.expiry + self._deadline()))
        await self.shared.login.refresh_ahead()

    async def _sync_members_pooled(self) -> None:
        async with self._connection() as conn:
            await self._sync_members(conn)

    def _left_by_expiry(self) -> set[str]:
        """Channels whose messages expired unread: they leave their groups (the table's
        memberships go in the cleanup that asked)."""
        channels = self.shared.inbox.mailbox.drain_expired()
        if channels:
            self.shared.inbox.leave(None, channels)
        return channels

    def _deadline(self) -> float:
        return float(self._options["pool_timeout"])

    def inspection(self) -> PostgresInspection:
        from .inspection import PostgresInspection

        return PostgresInspection(self)

    # Connections -------------------------------------------------------------------

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Callers get :class:`ServerUnavailableError`, not a psycopg error, when no
        connection could be made in time, or none could write; the engine's parts keep
        psycopg's errors."""
        try:
            yield
        except Exception as exc:
            from .deadlines import ServerReadOnly
            from .pool import ConnectFailed

            if isinstance(exc, ServerReadOnly):
                raise ServerUnavailableError(
                    f"{self.config.where}: the PostgreSQL server at "
                    f"{self.shared.login.describe('pool')} accepts no writes, and did not "
                    f"within {exc.seconds:g} s (CONFIG['pool_timeout']): it is a standby, or "
                    f"default_transaction_read_only is on ({_first_line(exc)}). With several "
                    "hosts in the connection settings, add target_session_attrs=read-write "
                    "so that connections go to the primary."
                ) from exc
            if not isinstance(exc, ConnectFailed):
                raise
            raise ServerUnavailableError(
                f"{self.config.where}: cannot reach the PostgreSQL server at {exc.target} "
                f"within {exc.seconds:g} s (CONFIG[{exc.setting!r}]): {_first_line(exc)}"
            ) from (exc.__cause__ or exc)

    @contextlib.asynccontextmanager
    async def _connection(
        self, timeout: float | None = None
    ) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
        pool = self._pool or await self._get_pool()
        async with pool.connection(timeout) as conn:
            try:
                yield conn
            except Exception as exc:
                if self.shared.login.drop_revoked(exc):
                    # The login lost its rights on a live session: new credentials, and
                    # the connections made with the old ones replaced.
                    self._spawn(self._renew_login())
                raise

    async def _renew_login(self) -> None:
        await self.shared.login.renew()
        self._credentials_changed()

    def _credentials_changed(self) -> None:
        """New credentials: drain the pool, move the listener (make-before-break)."""
        if self._closed:
            return
        if self._pool is not None:
            self._spawn(self._pool.drain())
        if self._listener is not None:
            self._listener.replace_connection()

    async def _get_pool(self) -> ConnectionPool:
        if self._closed:
            raise RuntimeError("this channel layer engine was closed")
        async with self._pool_lock:
            if self._pool is None:
                from .maintenance import Maintenance
                from .pool import ConnectionPool

                options = self._options
                pool = ConnectionPool(
                    self._connect_pooled,
                    min_size=options["pool_min_size"],
                    max_size=options["pool_max_size"],
                    timeout=options["pool_timeout"],
                    check_after=options["heartbeat_interval"],
                    describe=self.shared.login.describe("pool"),
                    handoff=self.shared.handoff,
                    tag=self.shared.login.tag,
                    on_size=lambda delta: self._count_connections("pool", delta),
                )
                try:
                    if not self.shared.tables.ready:
                        async with pool.connection() as conn:
                            await self.shared.tables.ensure(conn)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
                self.shared.login.subscribe(self, self._credentials_changed)
                self.shared.login.report_to(self.events)
                self._maintenance = Maintenance(
                    interval=options["sweep_interval"],
                    cleanup_interval=options["cleanup_interval"],
                    housekeeping=self._housekeeping,
                    connection=self._connection,
                    statements=self.shared.statements,
                    expired_channels=self._left_by_expiry,
                    query_timeout=options["query_timeout"],
                    pool_timeout=options["pool_timeout"],
                )
                self._maintenance.start()
            return self._pool

    def _count_connections(self, purpose: str, delta: int) -> None:
        """Keep the process-wide count of the layer's connections, and report it."""
        held = self.shared.connections
        with self.shared.connections_lock:
            held[purpose] = count = held.get(purpose, 0) + delta
        self.events.emit(ConnectionsChanged, purpose=purpose, held=count)

    async def _connect_pooled(self, timeout: float) -> AsyncConnection[tuple[Any, ...]]:
        return await self.shared.login.connect("pool", timeout)

    # Helpers -----------------------------------------------------------------------

    def _stream_identifier(self, group: str) -> str:
        """The LISTEN identifier of ``group``'s stream (see :func:`.schema.stream_queue`)."""
        return self._identifier(f"#{group}")

    def _identifier(self, queue: str) -> str:
        identifier = self._identifiers.get(queue)
        if identifier is None:
            if len(self._identifiers) > 10_000:
                self._identifiers.clear()
            identifier = self._identifiers[queue] = self._listen_identifier(
                self.shared.namespace, queue
            )
        return identifier

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        if exc is None:
            return
        # A lost connection is the listener's to report (once, with its recovery); the
        # work is done again when it reconnects and by the next sweep.
        from psycopg import OperationalError

        level = logging.DEBUG if isinstance(exc, OperationalError) else logging.WARNING
        logger.log(level, "Background work of the postgres engine failed: %s", exc, exc_info=exc)

    def _warn_dropped(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        # Shared by the process's loops: async_to_sync makes a new engine per call.
        if now - self.shared.last_drop_warning >= _WARN_EVERY:
            self.shared.last_drop_warning = now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)


@dataclass
class _Shared:
    """What every event loop's engine of one layer shares in a process."""

    login: Login
    statements: Statements
    #: Created or checked by the first connection of any loop.
    tables: TablesAtFirstUse
    namespace: str
    #: Idle pool connections passed from a closing event loop to the next one.
    handoff: IdleHandoff
    inbox: Inbox
    senders: Senders
    #: When a dropped group message was last logged as a warning (monotonic seconds).
    last_drop_warning: float = 0.0
    #: Server connections of every event loop's engine, by purpose ("pool", "listen").
    connections: dict[str, int] = field(default_factory=dict)
    connections_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def mailbox(self) -> Mailbox:
        """Messages claimed by this process and not yet received."""
        return self.inbox.mailbox


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
