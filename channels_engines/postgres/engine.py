"""The PostgreSQL engine: a table of messages, LISTEN/NOTIFY to wake the right process.

Per event loop an engine holds a small bounded pool (default at most 2 connections) and,
once something is received, one LISTEN connection. Concurrent sends of a loop share one
transaction. Each message is a row; its NOTIFY names only the receiving process (or, for
a normal channel, its receivers), which claims rows atomically, so a message is never
delivered twice. Rows claimed but not yet received wait in a buffer shared by every loop
of the process, so a cancelled ``receive()`` loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from channels.exceptions import ChannelFull

from .._version import __version__
from ..engine import BaseChannelEngine, EngineConfig, Requirement
from ..exceptions import ChannelLayerClosed
from ..loops import closing
from ..mailbox import Mailbox
from ..validation import non_local_name
from .options import OPTIONS

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .connection import ConnectionSettings
    from .listener import Listener
    from .pool import ConnectionPool, IdleHandoff
    from .schema import Statements

__all__ = ["PostgresEngine"]

logger = logging.getLogger("channels_engines.postgres")

# Rows claimed per query for a process-specific queue; the claim repeats while full.
_CLAIM_BATCH = 256
# Sends gathered into one transaction at most.
_SEND_BATCH = 500
# Expired rows deleted per statement by the cleanup.
_CLEANUP_BATCH = 5000
# Dropped-message warnings are repeated at most this often (seconds).
_WARN_EVERY = 60.0


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
    def create_shared(cls, config: EngineConfig) -> _Shared:
        from .connection import ConnectionSettings
        from .schema import Statements, Tables

        options = config.options
        tables = Tables(options["schema"], options["table_prefix"], options["unlogged"])
        from .pool import IdleHandoff

        return _Shared(
            connection=ConnectionSettings(options, config.where),
            statements=Statements(tables),
            namespace=tables.namespace,
            handoff=IdleHandoff(options["pool_max_size"]),
        )

    def __init__(self, config: EngineConfig, shared: Any, *, client_id: str) -> None:
        super().__init__(config, shared, client_id=client_id)
        from .schema import listen_identifier

        self._listen_identifier = listen_identifier
        self._options = config.options
        self._pool: ConnectionPool | None = None
        self._pool_lock = asyncio.Lock()
        self._listener: Listener | None = None
        self._watched: dict[str, str] = {}  # LISTEN identifier -> queue
        self._identifiers: dict[str, str] = {}  # queue -> LISTEN identifier (cache)
        self._pending: list[_Send] = []
        self._flusher: asyncio.Task[None] | None = None
        self._sending = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._control = listen_identifier(shared.namespace, f"#control:{client_id}:{id(self):x}")
        self._flush_identifier = listen_identifier(shared.namespace, "#flush")
        self._closed = False
        self._last_drop_warning = 0.0
        self._last_revocation = 0.0
        self._refresh_failing = False

    # Channel layer operations ------------------------------------------------------

    async def send(self, channel: str, message: bytes) -> None:
        queue = non_local_name(channel)
        item = _Send(
            queue, channel, message, self.config.capacity_for(channel), self._identifier(queue)
        )
        if self._sending:
            # Another send of this loop is in flight: join the next shared transaction.
            item.future = asyncio.get_running_loop().create_future()
            self._pending.append(item)
            accepted = await item.future
        else:
            # Nothing in flight: send right here, without a task hand-off.
            self._sending = True
            try:
                accepted = bool(await self._send_batch([item]))
            finally:
                self._sending = False
                self._start_flusher()
        if not accepted:
            raise ChannelFull(channel)

    async def receive(self, channel: str) -> bytes:
        mailbox = self.shared.mailbox
        message = mailbox.take_nowait(channel)
        if message is not None:
            return message
        queue = non_local_name(channel)
        await self._watch(queue)
        if queue == channel:
            # A normal channel is shared with other processes: claim only as many rows as
            # there are receivers waiting here, once this one is counted.
            self._spawn_soon(queue)
        return await mailbox.get(channel)

    async def group_add(self, group: str, channel: str) -> None:
        queue = non_local_name(channel)
        async with self._connection() as conn:
            await conn.execute(
                self.shared.statements.group_add,
                {
                    "group": group,
                    "channel": channel,
                    "queue": queue,
                    "listen": self._identifier(queue),
                    "capacity": self.config.capacity_for(channel),
                    "expiry": self.config.group_expiry,
                },
            )

    async def group_discard(self, group: str, channel: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                self.shared.statements.group_discard, {"group": group, "channel": channel}
            )

    async def group_send(self, group: str, message: bytes) -> None:
        async with self._connection() as conn:
            cursor = await conn.execute(
                self.shared.statements.group_send,
                {"group": group, "payload": message, "expiry": self.config.expiry},
            )
            row = await cursor.fetchone()
        assert row is not None
        queues, _, inserted = row
        if inserted < queues:
            self._warn_dropped(
                "group_send to %r: %d of %d receiving queues were at capacity and missed "
                "the message.",
                group,
                queues - inserted,
                queues,
            )

    async def flush(self) -> None:
        statements = self.shared.statements
        async with self._connection() as conn, conn.transaction():
            for statement in statements.flush:
                await conn.execute(statement)
            # Every listening process of this layer empties its buffers too.
            await conn.execute("SELECT pg_notify(%s, '')", [self._flush_identifier])
        self.shared.mailbox.clear()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Receivers waiting here would wait for a listener that no longer exists.
        self.shared.mailbox.interrupt(
            asyncio.get_running_loop(),
            ChannelLayerClosed("the channel layer was closed while receive() waited"),
        )
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await flusher
        for item in self._pending:
            item.fail(RuntimeError("the channel layer was closed"))
        self._pending.clear()
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        cache = self.shared.connection.credentials
        if cache is not None:
            cache.unsubscribe(self)
        pool, self._pool = self._pool, None
        if pool is not None:
            # When the loop itself is ending (async_to_sync, asyncio.run), its idle
            # connections are left to the next loop; an explicit close releases them all.
            await pool.close(hand_off=closing(asyncio.get_running_loop()))

    # Sending -----------------------------------------------------------------------

    def _start_flusher(self) -> None:
        if self._pending and not self._sending and not self._closed:
            self._sending = True
            self._flusher = self._spawn(self._flush_sends())

    async def _flush_sends(self) -> None:
        """Send everything queued meanwhile, batch after batch, each in one transaction."""
        try:
            while self._pending:
                batch = [item for item in self._pending[:_SEND_BATCH] if not item.done()]
                del self._pending[:_SEND_BATCH]
                if not batch:
                    continue
                try:
                    accepted = await self._send_batch(batch)
                except Exception as exc:
                    for item in batch:
                        item.fail(exc)
                    continue
                for index, item in enumerate(batch, start=1):
                    item.resolve(index in accepted)
        finally:
            self._sending = False
            self._flusher = None
            self._start_flusher()

    async def _send_batch(self, batch: list[_Send]) -> set[int]:
        statements = self.shared.statements
        async with self._connection() as conn:
            if len(batch) == 1:
                item = batch[0]
                cursor = await conn.execute(
                    statements.send_one,
                    {
                        "queue": item.queue,
                        "channel": item.channel,
                        "payload": item.message,
                        "capacity": item.capacity,
                        "listen": item.listen,
                        "expiry": self.config.expiry,
                    },
                )
                return {1} if await cursor.fetchone() is not None else set()
            cursor = await conn.execute(
                statements.send_many,
                {
                    "queues": [item.queue for item in batch],
                    "channels": [item.channel for item in batch],
                    "payloads": [item.message for item in batch],
                    "capacities": [item.capacity for item in batch],
                    "listens": [item.listen for item in batch],
                    "expiry": self.config.expiry,
                },
            )
            row = await cursor.fetchone()
        assert row is not None
        return set(row[0])

    # Receiving ---------------------------------------------------------------------

    async def _watch(self, queue: str) -> None:
        """Make sure this loop's listener wakes for ``queue``; start it on first use."""
        listener = self._listener
        if listener is None or listener.failed:
            listener = self._start_listener()
        identifier = self._identifier(queue)
        if identifier not in self._watched:
            self._watched[identifier] = queue
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

        settings = self.shared.connection
        self._listener = Listener(
            connect=self._connect_listener,
            control=self._control,
            poke=self._notify,
            on_wake=self._on_wake,
            on_listening=self._on_listening,
            heartbeat=self._options["heartbeat_interval"],
            heartbeat_timeout=self._options["heartbeat_timeout"],
            check_timeout=max(5.0, self._options["heartbeat_timeout"]),
            describe=settings.describe("listen"),
        )
        self._listener.watch([self._flush_identifier, *self._watched])
        self._listener.start()
        if self._sweeper is None:
            self._sweeper = self._spawn(self._sweep())
        return self._listener

    async def _connect_listener(self) -> AsyncConnection[tuple[Any, ...]]:
        conn = await self.shared.connection.connect("listen")
        try:
            await conn.execute(self.shared.statements.listener_session)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _notify(self, identifier: str, payload: str) -> None:
        async with self._connection() as conn:
            await conn.execute("SELECT pg_notify(%s, %s)", [identifier, payload])

    async def _on_wake(self, conn: AsyncConnection[tuple[Any, ...]], identifiers: set[str]) -> None:
        """Claim, on the listener's connection, the queues these notifications name."""
        if self._flush_identifier in identifiers:
            self.shared.mailbox.clear()
        for identifier in identifiers:
            queue = self._watched.get(identifier)
            if queue is not None and not self._closed and self.shared.start_claim(queue):
                await self._claim(queue, conn)

    def _on_listening(self, identifiers: Iterable[str]) -> None:
        """Claim what arrived before (or while) these identifiers were LISTENed."""
        for identifier in identifiers:
            queue = self._watched.get(identifier)
            if queue is not None:
                self._spawn_soon(queue)

    def _spawn_soon(self, queue: str) -> None:
        if self._closed or not self.shared.start_claim(queue):
            return
        self._spawn(self._claim(queue))

    async def _claim(
        self, queue: str, conn: AsyncConnection[tuple[Any, ...]] | None = None
    ) -> None:
        """Claim rows of ``queue`` into the shared mailbox until nothing more is wanted.

        Only one claim per queue runs in the process at a time (across event loops), so
        rows enter the mailbox in id order and channels keep their FIFO order.
        """
        shared = self.shared
        own = self.owns(queue)
        try:
            while True:
                if own:
                    limit = _CLAIM_BATCH
                else:
                    waiting = shared.mailbox.waiting().get(queue, 0)
                    limit = waiting - shared.mailbox.buffered(queue)
                claimed = await self._claim_rows(queue, limit, conn) if limit > 0 else 0
                if not shared.finish_claim(queue, again=own and claimed == limit):
                    return
        except BaseException as exc:
            shared.abandon_claim(queue)
            if shared.connection.revoked(exc):
                self._credentials_revoked()
            raise

    async def _claim_rows(
        self, queue: str, limit: int, conn: AsyncConnection[tuple[Any, ...]] | None
    ) -> int:
        statement = self.shared.statements.claim
        parameters = {"queue": queue, "limit": limit}
        if conn is not None:
            rows = await (await conn.execute(statement, parameters)).fetchall()
        else:
            async with self._connection() as pooled:
                rows = await (await pooled.execute(statement, parameters)).fetchall()
        if rows:
            now = time.monotonic()
            rows.sort(key=lambda row: row[0])
            dropped = self.shared.mailbox.put_many(
                (
                    (channels, bytes(payload), now + float(ttl))
                    for _, channels, payload, ttl in rows
                ),
                limit=self.config.capacity_for(queue),
            )
            if dropped:
                self._warn_dropped(
                    "%d messages for channels of %r were dropped: their receivers are not "
                    "keeping up (capacity %d).",
                    dropped,
                    queue,
                    self.config.capacity_for(queue),
                )
        return len(rows)

    # Maintenance -------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Safety claims (in case a notification was lost) and the expiry cleanup."""
        interval = self._options["sweep_interval"]
        cleanup_every = self._options["cleanup_interval"]
        next_cleanup = time.monotonic() + cleanup_every * 0.5
        while True:
            await asyncio.sleep(interval)
            self._on_listening(list(self._watched))
            self.shared.mailbox.expire()
            cache = self.shared.connection.credentials
            if cache is not None and cache.needs_refresh():
                # Refresh ahead of expiry even when no connection is being opened, so
                # that the swap happens while the current login still works.
                try:
                    await cache.get()
                except Exception as exc:
                    if not self._refresh_failing:
                        logger.warning("Credential refresh failed (%s); will retry.", exc)
                    self._refresh_failing = True
                else:
                    if self._refresh_failing:
                        logger.info("Credential refresh works again.")
                    self._refresh_failing = False
            if time.monotonic() >= next_cleanup:
                next_cleanup = time.monotonic() + cleanup_every
                try:
                    await self._cleanup()
                except Exception as exc:
                    logger.warning("Expiry cleanup failed (%s); will retry.", exc)

    async def _cleanup(self) -> None:
        """Delete expired rows in batches; one process at a time does it."""
        statements = self.shared.statements
        gone = sorted(self.shared.mailbox.drain_expired())
        async with self._connection() as conn:
            if gone:
                await conn.execute(statements.leave_groups, {"channels": gone})
            for _ in range(20):
                async with conn.transaction():
                    cursor = await conn.execute(
                        statements.try_cleanup_lock, [statements.cleanup_lock]
                    )
                    row = await cursor.fetchone()
                    if not row or not row[0]:
                        return
                    cursor = await conn.execute(
                        statements.delete_expired_messages, {"limit": _CLEANUP_BATCH}
                    )
                    counts = await cursor.fetchone()
                    members = await conn.execute(
                        statements.delete_expired_members, {"limit": _CLEANUP_BATCH}
                    )
                assert counts is not None
                if counts[0] < _CLEANUP_BATCH and members.rowcount < _CLEANUP_BATCH:
                    return

    # Connections -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
        pool = self._pool or await self._get_pool()
        async with pool.connection() as conn:
            try:
                yield conn
            except Exception as exc:
                if self.shared.connection.revoked(exc):
                    self._credentials_revoked()
                raise

    def _credentials_revoked(self) -> None:
        """The login lost its rights on a live session: fetch new credentials, reconnect."""
        cache = self.shared.connection.credentials
        now = time.monotonic()
        if cache is None or now - self._last_revocation < 1.0:
            return
        self._last_revocation = now
        logger.warning(
            "The database refused a query for lack of privileges; refreshing credentials "
            "and reconnecting."
        )
        cache.invalidate(cache.current)
        self._spawn(self._refresh_credentials())

    async def _refresh_credentials(self) -> None:
        cache = self.shared.connection.credentials
        assert cache is not None
        await cache.get()
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
                from .pool import ConnectionPool

                options = self._options
                pool = ConnectionPool(
                    self._connect_pooled,
                    min_size=options["pool_min_size"],
                    max_size=options["pool_max_size"],
                    timeout=options["pool_timeout"],
                    check_after=options["heartbeat_interval"],
                    describe=self.shared.connection.describe("pool"),
                    handoff=self.shared.handoff,
                    tag=self._login,
                )
                try:
                    await self.shared.ensure_tables(pool, self)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
                cache = self.shared.connection.credentials
                if cache is not None:
                    cache.subscribe(self, self._credentials_changed)
            return self._pool

    def _login(self) -> object:
        """What pooled connections log in with now (None: fixed settings or an alias)."""
        cache = self.shared.connection.credentials
        return None if cache is None else cache.current

    async def _connect_pooled(self) -> AsyncConnection[tuple[Any, ...]]:
        return await self.shared.connection.connect("pool")

    # Helpers -----------------------------------------------------------------------

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
        if task is self._sweeper:
            self._sweeper = None
        if not task.cancelled() and task.exception() is not None and not self._closed:
            exc = task.exception()
            logger.warning("Background work of the postgres engine failed: %s", exc, exc_info=exc)

    def _warn_dropped(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_drop_warning >= _WARN_EVERY:
            self._last_drop_warning = now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)


@dataclass
class _Send:
    queue: str
    channel: str
    message: bytes
    capacity: int
    listen: str
    future: asyncio.Future[bool] | None = None

    def done(self) -> bool:
        """Cancelled by its caller before it was sent (then it is never sent)."""
        return self.future is not None and self.future.done()

    def resolve(self, accepted: bool) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(accepted)

    def fail(self, exc: BaseException) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(exc)


@dataclass
class _Shared:
    """What every event loop's engine of one layer shares in a process."""

    connection: ConnectionSettings
    statements: Statements
    namespace: str
    #: Idle pool connections passed from a closing event loop to the next one.
    handoff: IdleHandoff
    mailbox: Mailbox = field(default_factory=Mailbox)
    lock: threading.Lock = field(default_factory=threading.Lock)
    claiming: set[str] = field(default_factory=set)
    claim_again: set[str] = field(default_factory=set)
    tables_ready: bool = False

    def start_claim(self, queue: str) -> bool:
        """True if the caller should claim ``queue``; else the running claim repeats."""
        with self.lock:
            if queue in self.claiming:
                self.claim_again.add(queue)
                return False
            self.claiming.add(queue)
            return True

    def finish_claim(self, queue: str, *, again: bool) -> bool:
        """True if the claim must run once more (more rows, or a wake-up meanwhile)."""
        with self.lock:
            if again or queue in self.claim_again:
                self.claim_again.discard(queue)
                return True
            self.claiming.discard(queue)
            return False

    def abandon_claim(self, queue: str) -> None:
        with self.lock:
            self.claiming.discard(queue)
            self.claim_again.discard(queue)

    async def ensure_tables(self, pool: ConnectionPool, engine: PostgresEngine) -> None:
        """Create the tables once per process if they are missing (and allowed)."""
        if self.tables_ready:
            return
        statements = self.statements
        async with pool.connection() as conn:
            cursor = await conn.execute(statements.tables_exist, list(statements.table_names))
            row = await cursor.fetchone()
            if not (row and row[0]):
                if not engine.config.options["create_tables"]:
                    from ..exceptions import InvalidConfigError

                    raise InvalidConfigError(
                        f"{engine.config.where}: the tables {statements.table_names[0]} and "
                        f"{statements.table_names[1]} do not exist and CONFIG['create_tables'] "
                        "is False. Run `manage.py migrate channels_engines`, or apply the SQL "
                        "from `python -m channels_engines.postgres schema`."
                    )
                async with conn.transaction():
                    # Many processes may start at once: one creates, the others wait.
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", [statements.ddl_lock])
                    for statement in statements.create:
                        await conn.execute(statement)
        self.tables_ready = True
