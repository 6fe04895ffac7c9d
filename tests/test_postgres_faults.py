"""The PostgreSQL engine under faults: killed listeners, server restarts, idle timeouts.

Backends of this suite's own layers are terminated on the configured server; everything
that needs a server setting or a restart runs on a private EmbeddedPostgres started here.
Each history is checked Jepsen-style: every message sent is received exactly once, in
per-channel order, and every receive() that was waiting keeps waiting and gets its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psutil
import psycopg
import pytest

from channels_engines import EngineChannelLayer, ServerUnavailableError
from channels_engines.postgres.embedded import EmbeddedPostgres
from channels_engines.postgres.schema import NOTES_PER_BATCH
from channels_engines.testing import engine_for
from tests.pg_backend import base as counting_backend
from tests.support.pgtools import (
    Admin,
    Child,
    LogCapture,
    config,
    database_alias,
    digest,
    dropped_afterwards,
    engine_of,
    listening_backend,
    make_layer,
    message,
    run,
    server_dsn,
    unique,
)
from tests.support.polling import await_for, payload_bytes, wait_for

pytestmark = pytest.mark.postgres


def check_history(
    received: dict[str, Any], channels: list[str], per_channel: int, size_of: Any
) -> None:
    """Every message exactly once, in order per channel, with intact data."""
    assert received["errors"] == []
    assert received["timed_out"] == 0
    order: dict[str, list[int]] = {channel: [] for channel in channels}
    for channel, n, size, sha in received["messages"]:
        order[channel].append(n)
        assert size == size_of(channel, n)
        assert sha == digest(payload_bytes(size, n))
    assert order == {channel: list(range(per_channel)) for channel in channels}


# 5. Listener kills ---------------------------------------------------------------------


@pytest.mark.parametrize("sizes", ["mixed", "carried"])
def test_killing_the_listener_repeatedly_loses_and_duplicates_nothing(
    prefix: str, admin: Admin, sizes: str
) -> None:
    """A receiver process with 80 channels; its LISTEN backend is terminated 5 times
    while 4,000 messages (all small, or 10 % over the NOTIFY limit) are sent to it. Safety
    sweeps are off, so only the listener's re-LISTEN-then-claim and the messages that
    notifications carry can deliver; notifications in flight at each kill are lost."""
    kills, per_channel = 5, 50
    app = unique("ce_f")
    listen_app = app + "_l"
    receiver = config(
        app,
        prefix=prefix,
        listen_dsn=server_dsn(),
        listen_connection={"application_name": listen_app},
        sweep_interval=3600.0,
        capacity=10_000,
    )
    normal = [f"kill.normal-{index}" for index in range(40)]
    job = {
        "job": "receive",
        "config": receiver,
        "channels": normal,
        "new": 40,
        "expect": per_channel,
        "timeout": 90,
        "hold": True,
    }
    with Child(job) as child:
        ready = child.expect("ready")
        channels: list[str] = ready["channels"]
        index = {channel: position for position, channel in enumerate(channels)}

        def size_of(channel: str, n: int) -> int:
            if sizes == "carried":  # every message fits in its notification
                return 100
            return 9000 if (n + index[channel]) % 10 == 0 else 100

        assert admin.backends(listen_app) == [ready["listener_pid"]]

        async def scenario() -> list[int]:
            layer = make_layer(unique("ce_f"), prefix=prefix, capacity=10_000)
            total = len(channels) * per_channel
            points = [total * (k + 1) // (kills + 1) for k in range(kills)]
            reached = [asyncio.Event() for _ in range(kills)]
            killed = [asyncio.Event() for _ in range(kills)]
            sent = 0
            # A batch with more than NOTES_PER_BATCH messages for the process wakes it
            # instead of carrying them: to have notes in flight, send fewer at once.
            in_flight = asyncio.Semaphore(NOTES_PER_BATCH if sizes == "carried" else 1000)

            async def sender(channel: str) -> None:
                nonlocal sent
                for n in range(per_channel):
                    for k, point in enumerate(points):
                        if sent >= point and not killed[k].is_set():
                            reached[k].set()
                            await killed[k].wait()
                    async with in_flight:
                        await layer.send(channel, message(n, channel, size_of(channel, n)))
                    sent += 1

            async def killer() -> list[int]:
                pids = [ready["listener_pid"]]
                for k in range(kills):
                    await reached[k].wait()
                    assert await asyncio.to_thread(admin.terminate, pids[-1])
                    killed[k].set()  # the senders go on while the listener is away
                    pids.append(
                        await asyncio.to_thread(
                            wait_for,
                            lambda: listening_backend(admin, listen_app, pids),
                            "a new LISTEN backend",
                        )
                    )
                return pids

            results = await asyncio.gather(killer(), *(sender(channel) for channel in channels))
            await layer.close()
            return results[0]  # type: ignore[no-any-return]

        pids = run(scenario())
        received = child.expect("received", timeout=120)
        child.tell(str(pids[-1]))
        closing = child.expect("closing")
        assert child.finish() == 0
    assert len(set(pids)) == kills + 1
    assert closing == {"event": "closing", "reconnects": kills, "listener_pid": pids[-1]}
    if sizes == "carried":
        # The layers seal messages (tests.settings has a SECRET_KEY), so messages to the
        # process-specific channels came in their notifications, and some were in
        # flight at each kill.
        assert received["from_notes"] > 0
    check_history(received, channels, per_channel, size_of)


def test_killing_the_listener_of_a_second_event_loop_loses_nothing(
    prefix: str, admin: Admin
) -> None:
    """One layer, two event loops: the thread's loop receives, the main loop sends."""
    app = unique("ce_f")
    layer = make_layer(app, prefix=prefix, sweep_interval=3600.0, capacity=10_000)
    channels = [f"loops.normal-{index}" for index in range(10)]
    per_channel = 100
    thread_loop = asyncio.new_event_loop()
    received: dict[str, list[int]] = {channel: [] for channel in channels}
    errors: list[BaseException] = []
    started = threading.Event()

    async def receive_all() -> None:
        async def one(channel: str) -> None:
            for _ in range(per_channel):
                received[channel].append((await layer.receive(channel))["n"])

        tasks = [asyncio.ensure_future(one(channel)) for channel in channels]
        started.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await layer.close()

    def thread_main() -> None:
        try:
            thread_loop.run_until_complete(receive_all())
        except BaseException as exc:
            errors.append(exc)
        finally:
            thread_loop.close()

    thread = threading.Thread(target=thread_main)
    thread.start()
    try:
        started.wait(10)
        listener = wait_for(
            lambda: getattr(engine_for(layer, thread_loop), "listener", None), "the listener"
        )
        wait_for(lambda: listener.backend_pid, "the thread loop's listener connection")
        assert listener.backend_pid in admin.backends(app)

        async def send_all() -> None:
            for n in range(per_channel):
                await asyncio.gather(*(layer.send(channel, {"n": n}) for channel in channels))
                if n in (20, 50, 80):
                    pid = listener.backend_pid
                    assert pid is not None
                    assert await asyncio.to_thread(admin.terminate, pid)
                    await await_for(
                        lambda pid=pid: listener.backend_pid not in (None, pid), "a new listener"
                    )
            await layer.close()  # the main loop's engine

        run(send_all())
    finally:
        thread.join(90)
    assert not thread.is_alive()
    assert errors == []
    assert listener.reconnects == 3
    assert received == {channel: list(range(per_channel)) for channel in channels}


# 6. Server restarts -------------------------------------------------------------------


@pytest.fixture(scope="module")
def restartable() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


@pytest.mark.parametrize(
    ("mode", "unlogged"), [("fast", True), ("immediate", False)], ids=["fast", "immediate"]
)
@pytest.mark.own_server
def test_after_a_server_restart_the_listener_reconnects_once_and_waiting_receivers_get_new_messages(
    restartable: EmbeddedPostgres, mode: Any, unlogged: bool
) -> None:
    pg = restartable
    dsn = pg.dsn()
    prefix = unique("ce_f") + "_"
    app = unique("ce_f")
    with dropped_afterwards(prefix, dsn=dsn):

        async def scenario() -> None:
            before = make_layer(unique("ce_f"), prefix=prefix, dsn=dsn, unlogged=unlogged)
            for n in range(5):
                await before.send("restart.kept", {"n": n})
            await before.close()

            layer = make_layer(app, prefix=prefix, dsn=dsn, unlogged=unlogged, sweep_interval=0.2)
            specific = await layer.new_channel()
            waiting = [
                asyncio.ensure_future(layer.receive(specific)),
                asyncio.ensure_future(layer.receive("restart.normal")),
            ]
            await await_for(lambda: len(layer._shared.mailbox.waiting()) == 2, "two receivers")
            engine = engine_of(layer)
            listener = engine.listener
            old_pid = listener.backend_pid

            with LogCapture("channels_engines.postgres") as log:
                await asyncio.to_thread(pg.restart, mode)
                await await_for(lambda: listener.reconnects == 1, "the listener back", 30)
                assert listener.backend_pid not in (None, old_pid)
                with Admin(dsn) as admin:  # connections from before the restart are gone
                    assert listener.backend_pid in admin.backends(app)
                assert not any(task.done() for task in waiting)  # they kept waiting

                sender = make_layer(unique("ce_f"), prefix=prefix, dsn=dsn)  # a new process
                await sender.send(specific, {"type": "after", "n": 1})
                await sender.send("restart.normal", {"type": "after", "n": 2})
                results = await asyncio.wait_for(asyncio.gather(*waiting), 20)
                assert results == [{"type": "after", "n": 1}, {"type": "after", "n": 2}]
                kept = [
                    (await asyncio.wait_for(layer.receive("restart.kept"), 20))["n"]
                    for _ in range(5)
                ]
                assert kept == list(range(5))  # committed before the restart, still there
                await sender.close()
                await layer.close()
            listener_records = [
                record for record in log.records if record.getMessage().startswith("Listener")
            ]
            assert [record.levelno for record in listener_records] == [
                logging.WARNING,
                *[logging.DEBUG] * (len(listener_records) - 2),
                logging.INFO,
            ]
            assert "lost" in listener_records[0].getMessage()
            assert "re-established" in listener_records[-1].getMessage()

        run(scenario())


@pytest.mark.own_server
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_after_a_server_restart_existing_layers_work_without_errors_or_extra_warnings(
    restartable: EmbeddedPostgres, mode: Any
) -> None:
    pg = restartable
    dsn = pg.dsn()
    prefix = unique("ce_f") + "_"
    with dropped_afterwards(prefix, dsn=dsn):

        async def scenario() -> None:
            # No safety sweeps: the wake-ups after the restart alone must deliver.
            layer = make_layer(
                unique("ce_f"), prefix=prefix, dsn=dsn, sweep_interval=3600.0, unlogged=False
            )
            sender = make_layer(unique("ce_f"), prefix=prefix, dsn=dsn)
            specific = await layer.new_channel()
            await sender.send(specific, {"n": 0})
            assert await layer.receive(specific) == {"n": 0}
            waiting = asyncio.ensure_future(layer.receive(specific))
            listener = engine_of(layer).listener
            with LogCapture("channels_engines.postgres", logging.WARNING) as log:
                await asyncio.to_thread(pg.restart, mode)
                await await_for(lambda: listener.reconnects == 1, "the listener back", 30)
                await sender.send(specific, {"n": 1})
                await sender.send("restart.kept", {"n": 2})
                assert await asyncio.wait_for(waiting, 10) == {"n": 1}
                assert await asyncio.wait_for(layer.receive("restart.kept"), 10) == {"n": 2}
                await sender.close()
                await layer.close()
            assert len(log.records) == 1, log.at_least(logging.WARNING)
            assert "Listener connection" in log.records[0].getMessage()

        run(scenario())


def test_a_send_right_after_its_pooled_connection_was_terminated_succeeds(
    prefix: str, admin: Admin
) -> None:
    app = unique("ce_f")

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix)
        await layer.send("terminated.pool", {"n": 1})  # the pool holds one idle connection
        for pid in admin.backends(app):
            assert admin.terminate(pid)
        await asyncio.to_thread(wait_for, lambda: admin.count(app) == 0, "backends gone")
        try:
            await layer.send("terminated.pool", {"n": 2})  # the dead connection stays hidden
            assert await layer.receive("terminated.pool") == {"n": 1}
            assert await layer.receive("terminated.pool") == {"n": 2}
        finally:
            await layer.close()

    run(scenario())


@pytest.fixture
def stoppable(tmp_path: Any) -> Iterator[EmbeddedPostgres]:
    """A server with its own data directory and port, so it can be stopped and started."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = EmbeddedPostgres(tmp_path / "data", port=port).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_send_while_the_server_is_down_raises_and_sends_work_again_once_it_is_back(
    stoppable: EmbeddedPostgres,
) -> None:
    pg = stoppable
    dsn = pg.dsn()
    prefix = unique("ce_f") + "_"

    async def scenario() -> None:
        layer = make_layer(unique("ce_f"), prefix=prefix, dsn=dsn, pool_timeout=1.0)
        channel = await layer.new_channel()
        await layer.send(channel, {"n": 0})
        assert await layer.receive(channel) == {"n": 0}
        waiting = asyncio.ensure_future(layer.receive(channel))
        await asyncio.to_thread(pg.stop, "fast")
        with pytest.raises(ServerUnavailableError):  # within pool_timeout, not a hang
            await layer.send(channel, {"n": 1})
        await asyncio.to_thread(pg.start)
        await layer.send(channel, {"n": 2})
        assert await asyncio.wait_for(waiting, 20) == {"n": 2}
        await layer.close()

    run(scenario())


@contextlib.asynccontextmanager
async def stopped_backend(pid: int) -> AsyncIterator[None]:
    """SIGSTOP a server backend: its TCP connection stays up, but nothing answers."""
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.to_thread(
            wait_for,
            lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED,
            "backend stopped",
        )
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def listening_layer(dsn: str, prefix: str, **options: Any) -> tuple[Any, str, Any]:
    """A layer whose listener heartbeats every 0.2 s and has received once: (layer, its
    channel, its listener)."""
    layer = make_layer(
        unique("ce_f"),
        prefix=prefix,
        dsn=dsn,
        heartbeat_interval=0.2,
        heartbeat_timeout=0.3,
        **options,
    )
    channel = await layer.new_channel()
    await layer.send(channel, {"n": 0})
    assert await layer.receive(channel) == {"n": 0}
    return layer, channel, engine_of(layer).listener


@pytest.mark.own_server
def test_a_hung_listener_backend_is_replaced_and_nothing_is_lost(
    restartable: EmbeddedPostgres,
) -> None:
    """SIGSTOP of the LISTEN backend: TCP stays up, only the heartbeat can notice."""
    dsn = restartable.dsn()
    prefix = unique("ce_f") + "_"
    with dropped_afterwards(prefix, dsn=dsn):

        async def scenario() -> None:
            layer, channel, listener = await listening_layer(dsn, prefix, sweep_interval=3600.0)
            sender = make_layer(unique("ce_f"), prefix=prefix, dsn=dsn)
            hung = listener.backend_pid
            waiting = asyncio.ensure_future(layer.receive(channel))
            async with stopped_backend(hung):
                for n in (1, 2, 3):
                    await sender.send(channel, {"n": n})
                assert await asyncio.wait_for(waiting, 30) == {"n": 1}
                assert [(await layer.receive(channel))["n"] for _ in range(2)] == [2, 3]
                assert listener.reconnects == 1
                assert listener.backend_pid not in (None, hung)
                assert psutil.Process(hung).status() == psutil.STATUS_STOPPED  # no SIGCONT
            await sender.close()
            await layer.close()

        run(scenario())


@pytest.mark.own_server
def test_the_heartbeat_timeout_itself_abandons_a_hung_listener_connection(
    restartable: EmbeddedPostgres,
) -> None:
    dsn = restartable.dsn()
    prefix = unique("ce_f") + "_"
    with dropped_afterwards(prefix, dsn=dsn):

        async def scenario() -> None:
            layer, _, listener = await listening_layer(dsn, prefix)
            with LogCapture("psycopg", logging.WARNING) as psycopg_log:
                async with stopped_backend(listener.backend_pid):
                    await await_for(lambda: listener.reconnects == 1, "a new listener", 30)
            # Not psycopg's fallback ("query not terminated after cancellation: closing
            # connection", after its own 5 s wait): the engine gave up on the connection.
            assert psycopg_log.at_least(logging.WARNING) == []
            await layer.close()

        run(scenario())


def test_a_checkout_cancelled_during_the_health_check_closes_its_connection(
    restartable: EmbeddedPostgres,
) -> None:
    """The idle connection under check is out of the pool: cancelling the caller must
    close it and free its slot, not drop it still open."""
    from channels_engines.postgres.pool import ConnectionPool

    dsn = restartable.dsn()

    async def scenario() -> None:
        pool = ConnectionPool(
            lambda timeout: psycopg.AsyncConnection.connect(dsn, autocommit=True),
            min_size=0,
            max_size=2,
            timeout=30.0,
            check_after=0.0,
        )
        async with pool.connection() as checked:
            pid = checked.info.backend_pid

        async def checkout() -> None:
            async with pool.connection():
                raise AssertionError("the checked connection cannot have answered")

        async with stopped_backend(pid):
            caller = asyncio.ensure_future(checkout())
            await await_for(lambda: not pool._idle, "the health check to start")
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert checked.closed
            assert pool.size == 0
        async with pool.connection() as conn:  # the slot is usable again
            assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
        await pool.close()
        assert pool.size == 0

    run(scenario())


# 7. idle_session_timeout --------------------------------------------------------------


@pytest.fixture(scope="module")
def idle_timeout_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(settings={"idle_session_timeout": "1s"}) as server:
        yield server


@pytest.mark.own_server
def test_heartbeats_keep_the_listener_through_idle_session_timeout_and_the_pool_recovers(
    idle_timeout_server: EmbeddedPostgres,
) -> None:
    pg = idle_timeout_server
    dsn = pg.dsn()
    prefix = unique("ce_f") + "_"
    app, other_app = unique("ce_f"), unique("ce_f")
    assert pg.log_path is not None
    log_path = pg.log_path
    with (
        dropped_afterwards(prefix, dsn=dsn),
        Admin(dsn, options="-c idle_session_timeout=0") as admin,
    ):

        async def scenario() -> None:
            layer = make_layer(
                app, prefix=prefix, dsn=dsn, heartbeat_interval=0.3, sweep_interval=3600.0
            )
            other = make_layer(other_app, prefix=prefix, dsn=dsn, heartbeat_interval=0.3)
            channel = await layer.new_channel()
            await other.send(channel, {"n": 0})
            assert await layer.receive(channel) == {"n": 0}
            listener = engine_of(layer).listener
            listen_pid = listener.backend_pid
            pool_pids = (set(admin.backends(app)) | set(admin.backends(other_app))) - {listen_pid}
            assert pool_pids
            waiting = asyncio.ensure_future(layer.receive(channel))
            offset = log_path.stat().st_size

            await asyncio.sleep(3)  # the fault: three seconds without traffic

            def ended_by_the_server() -> bool:
                alive = set(admin.backends(app)) | set(admin.backends(other_app))
                return not (alive & pool_pids)

            await asyncio.to_thread(wait_for, ended_by_the_server, "idle pool connections ended")
            assert not waiting.done()
            await other.send(channel, {"n": 1})  # no error: dead connections are replaced
            assert await asyncio.wait_for(waiting, 10) == {"n": 1}
            await layer.send(channel, {"n": 2})
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 2}
            assert listener.reconnects == 0
            assert listener.backend_pid == listen_pid
            log = log_path.read_text(errors="replace")[offset:]
            timeouts = re.findall(
                r"\[(\d+)\] FATAL:  terminating connection due to idle-session timeout", log
            )
            assert pool_pids <= {int(pid) for pid in timeouts}  # the fault did happen
            assert listen_pid not in {int(pid) for pid in timeouts}
            await layer.close()
            await other.close()

        run(scenario())


# 11. Names never in SQL text --------------------------------------------------------------


@pytest.fixture(scope="module")
def statement_log_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(settings={"log_statement": "all"}) as server:
        yield server


_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)


@pytest.mark.own_server
def test_channel_and_group_names_reach_the_server_only_as_bind_parameters(
    statement_log_server: EmbeddedPostgres,
) -> None:
    pg = statement_log_server
    dsn = pg.dsn()
    assert pg.log_path is not None
    prefix = unique("ce_f") + "_"
    token = secrets.token_hex(4)
    group = f"grp.-_{token}.-_.group"
    normal = f"chan-._{token}_-.normal"
    local_prefix = f"pfx._-{token}.specific"
    offset = pg.log_path.stat().st_size
    with dropped_afterwards(prefix, dsn=dsn):

        async def scenario() -> str:
            layer = make_layer(unique("ce_f"), prefix=prefix, dsn=dsn)
            other = make_layer(unique("ce_f"), prefix=prefix, dsn=dsn)
            specific = await layer.new_channel(local_prefix)
            await layer.group_add(group, specific)
            await other.group_add(group, normal)
            await other.send(normal, {"type": "direct"})
            assert await layer.receive(normal) == {"type": "direct"}
            await other.group_send(group, {"type": "to.group"})
            assert await layer.receive(specific) == {"type": "to.group"}
            assert await layer.receive(normal) == {"type": "to.group"}
            await layer.group_discard(group, normal)
            await other.send(specific, {"type": "direct"})
            assert await layer.receive(specific) == {"type": "direct"}
            await layer.flush()
            await layer.close()
            await other.close()
            return specific

        specific = run(scenario())
    text = pg.log_path.read_text(errors="replace")[offset:]
    starts = [match.start() for match in _ENTRY.finditer(text)] + [len(text)]
    entries = [text[a:b] for a, b in itertools.pairwise(starts)]
    parameters = [entry for entry in entries if re.search(r"DETAIL:  parameters:", entry, re.I)]
    statements = [entry for entry in entries if entry not in parameters]
    names = [group, normal, specific, specific.split("!")[1], local_prefix, token]
    for name in names:
        assert not [entry for entry in statements if name in entry], name
    for name in (group, normal, specific):
        assert any(name in entry for entry in parameters), name
    listens = [entry for entry in statements if "LISTEN" in entry]
    assert listens
    for entry in listens:
        text_part = entry.split("statement: ", 1)[1].strip()
        assert re.fullmatch(r"LISTEN ce_[0-9a-f]{32}(; LISTEN ce_[0-9a-f]{32})*", text_part)
    # Only transaction-level advisory locks (the DDL lock was taken: the log is complete).
    assert any("pg_advisory_xact_lock(" in entry for entry in statements)
    session_lock = re.compile(r"pg_(?:try_)?advisory_(?:un)?lock(?:_shared)?\s*\(")
    assert not [entry for entry in statements if session_lock.search(entry)]


# 13. Rotating credentials through a custom database backend ----------------------------


@pytest.fixture(scope="module")
def password_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(auth="scram-sha-256", superuser_password=secrets.token_hex(8)) as server:
        yield server


def test_a_backend_that_rotates_passwords_supplies_every_new_connection(
    password_server: EmbeddedPostgres,
) -> None:
    pg = password_server
    role = unique("ce_role")
    app = unique("ce_f")
    alias = unique("rotating")
    prefix = unique("ce_f") + "_"
    first, second = secrets.token_hex(8), secrets.token_hex(8)
    pg.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{first}'")
    entry = {
        "ENGINE": "tests.pg_backend",
        "NAME": "postgres",
        "USER": role,
        "PASSWORD": "not-the-password",
        "HOST": pg.host,
        "PORT": str(pg.port),
        "OPTIONS": {"application_name": app},
    }
    counting_backend.PASSWORDS[alias] = first
    try:
        with (
            database_alias(alias, entry),
            Admin(pg.dsn()) as admin,
            dropped_afterwards(prefix, dsn=pg.dsn()),
        ):

            async def scenario() -> None:
                layer = EngineChannelLayer(ENGINE="postgres", database=alias, table_prefix=prefix)
                channel = await layer.new_channel()
                await layer.send(channel, {"n": 1})
                assert await layer.receive(channel) == {"n": 1}
                engine = engine_of(layer)
                listener, pool = engine.listener, engine.pool
                assert counting_backend.CALLS[alias] == pool.stats["connections_opened"] + 1

                pg.execute(f"ALTER ROLE {role} PASSWORD '{second}'")
                counting_backend.PASSWORDS[alias] = second
                with pytest.raises(psycopg.OperationalError):
                    await psycopg.AsyncConnection.connect(
                        host=pg.host, port=pg.port, user=role, password=first, dbname="postgres"
                    )
                with LogCapture("channels_engines.postgres", logging.WARNING) as log:
                    assert await asyncio.to_thread(admin.terminate, listener.backend_pid)
                    await await_for(lambda: listener.reconnects == 1, "the listener back")
                    # The pool replaces its connections (as after a rotation): new ones
                    # are opened with the new password.
                    opened = pool.stats["connections_opened"]
                    await pool.drain()
                    waiting = asyncio.ensure_future(layer.receive(channel))
                    await layer.send(channel, {"n": 2})
                    assert await asyncio.wait_for(waiting, 10) == {"n": 2}
                    assert pool.stats["connections_opened"] > opened
                assert counting_backend.CALLS[alias] == pool.stats["connections_opened"] + 2
                assert len(log.records) == 1  # the loss of the listener, nothing else
                assert listener.backend_pid in admin.backends(app)
                await layer.close()

            run(scenario())
    finally:
        counting_backend.PASSWORDS.pop(alias, None)


# Soak ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_soak_a_minute_of_traffic_with_a_listener_kill_every_two_seconds(
    prefix: str, admin: Admin
) -> None:
    duration, channels_count, rate = 60.0, 20, 400  # messages per second in total
    per_channel = int(duration * rate / channels_count)
    app = unique("ce_f")
    listen_app = app + "_l"
    receiver = config(
        app,
        prefix=prefix,
        listen_dsn=server_dsn(),
        listen_connection={"application_name": listen_app},
        sweep_interval=3600.0,
        capacity=100_000,
    )
    channels = [f"soak.normal-{index}" for index in range(channels_count)]
    job = {
        "job": "receive",
        "config": receiver,
        "channels": channels,
        "expect": per_channel,
        "timeout": duration + 60,
        "hold": True,
    }
    with Child(job) as child:
        ready = child.expect("ready")

        async def scenario() -> list[int]:
            layer = make_layer(unique("ce_f"), prefix=prefix, capacity=100_000)
            done = asyncio.Event()

            async def sender(channel: str) -> None:
                for n in range(per_channel):
                    await layer.send(channel, message(n, channel, 9000 if n % 10 == 0 else 100))
                    await asyncio.sleep(channels_count / rate)  # a steady load, not sync

            async def killer() -> list[int]:
                pids = [ready["listener_pid"]]
                while True:
                    await asyncio.sleep(2.0)  # the fault schedule
                    if done.is_set():  # the receiver may be finishing: no more faults
                        return pids
                    assert await asyncio.to_thread(admin.terminate, pids[-1])
                    pids.append(
                        await asyncio.to_thread(
                            wait_for,
                            lambda: listening_backend(admin, listen_app, pids),
                            "a new LISTEN backend",
                        )
                    )

            kill_task = asyncio.ensure_future(killer())
            started = time.monotonic()
            await asyncio.gather(*(sender(channel) for channel in channels))
            assert time.monotonic() - started > duration / 2
            done.set()
            pids = await kill_task
            await layer.close()
            return pids

        pids = run(scenario(), timeout=duration * 3)
        received = child.expect("received", timeout=120)
        child.tell(str(pids[-1]))
        closing = child.expect("closing")
        assert child.finish() == 0
    assert len(set(pids)) >= 11
    assert closing == {"event": "closing", "reconnects": len(pids) - 1, "listener_pid": pids[-1]}
    check_history(received, channels, per_channel, lambda _channel, n: 9000 if n % 10 == 0 else 100)
