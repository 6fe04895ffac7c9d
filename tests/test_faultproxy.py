"""The fault proxy itself, against the real server: what each fault looks like to a client.

The fault tests rely on these behaviours (a black hole keeps both sockets open and stays
silent, a trigger fires after the server got the bytes), so each is shown here once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.faultproxy import FaultProxy, Refusal
from tests.support.pgtools import Admin, run, server_dsn, unique
from tests.support.polling import await_for

pytestmark = pytest.mark.postgres

# How long a test waits to show that nothing arrives: a silence, not a synchronisation.
SILENCE = 0.5


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy.for_dsn(server_dsn()) as proxy:
        yield proxy


async def connect(proxy: FaultProxy, app: str, **options: Any) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        proxy.dsn(server_dsn()), autocommit=True, application_name=app, **options
    )


async def answer(conn: psycopg.AsyncConnection[Any], query: str, timeout: float) -> Any:
    async def execute() -> Any:
        row = await (await conn.execute(query)).fetchone()
        assert row is not None
        return row[0]

    return await asyncio.wait_for(execute(), timeout)


def test_forwards_a_session_and_counts_connections_and_bytes(
    proxy: FaultProxy, admin: Admin
) -> None:
    app = unique("ce_p")

    async def scenario() -> None:
        first, second = await connect(proxy, app), await connect(proxy, app)
        assert await answer(first, "SELECT 41 + 1", 10) == 42
        assert await answer(second, "SELECT current_setting('application_name')", 10) == app
        assert proxy.accepted == 2
        assert [link.number for link in proxy.links] == [1, 2]
        assert all(link.bytes_up > 0 and link.bytes_down > 0 for link in proxy.links)
        assert proxy.bytes_up == sum(link.bytes_up for link in proxy.links)
        assert proxy.bytes_down == sum(link.bytes_down for link in proxy.links)
        assert await asyncio.to_thread(admin.count, app) == 2
        await first.close()
        await await_for(lambda: len(proxy.links) == 1, "the closed link gone")
        await second.close()

    run(scenario())


def test_a_black_hole_keeps_both_sockets_open_silently_until_it_is_healed(
    proxy: FaultProxy, admin: Admin
) -> None:
    app = unique("ce_p")

    async def scenario() -> None:
        conn = await connect(proxy, app)
        pid = conn.info.backend_pid
        (link,) = proxy.links
        link.blackhole()
        assert link.blackholed == {"up", "down"}
        query = asyncio.ensure_future(answer(conn, "SELECT 'after the heal'", 30))
        done, _ = await asyncio.wait({query}, timeout=SILENCE)
        assert not done  # no answer, and no error either
        assert not conn.closed
        assert await asyncio.to_thread(admin.backends, app) == [pid]  # the server keeps it
        link.forward()
        assert await query == "after the heal"  # the bytes waited in the kernel's buffers
        await conn.close()

    run(scenario())


def test_a_one_way_black_hole_lets_the_other_direction_through(
    proxy: FaultProxy, admin: Admin
) -> None:
    """Down only: the server runs the client's statement, the answer never comes. Up
    only: the client's statement never arrives, but the server's notifications do."""
    app = unique("ce_p")
    table = unique("ce_p")
    admin.conn.execute(f"CREATE TABLE {table} (n int)")

    async def scenario() -> None:
        conn = await connect(proxy, app)
        (link,) = proxy.links
        link.blackhole("down")
        query = asyncio.ensure_future(
            answer(conn, f"INSERT INTO {table} VALUES (1) RETURNING n", 30)
        )
        await await_for(lambda: admin.table_count(table) == 1, "the insert committed")
        done, _ = await asyncio.wait({query}, timeout=SILENCE)
        assert not done
        link.forward()
        assert await query == 1
        await conn.execute("LISTEN ce_p_up")
        link.blackhole("up")
        notified = asyncio.ensure_future(anext(conn.notifies(timeout=30, stop_after=1)))
        await asyncio.to_thread(admin.conn.execute, "NOTIFY ce_p_up, 'through'")
        assert (await asyncio.wait_for(notified, 10)).payload == "through"
        link.forward()
        await conn.close()

    try:
        run(scenario())
    finally:
        admin.conn.execute(f"DROP TABLE {table}")


def test_a_reset_breaks_the_client_at_once_and_ends_the_server_session(
    proxy: FaultProxy, admin: Admin
) -> None:
    app = unique("ce_p")

    async def scenario() -> None:
        conn = await connect(proxy, app)
        assert proxy.reset_all() == 1
        with pytest.raises(psycopg.OperationalError):
            await answer(conn, "SELECT 1", 10)
        await asyncio.to_thread(
            admin.wait_for, lambda: admin.count(app) == 0, "the server session ended"
        )
        assert proxy.links == []
        await conn.close()

    run(scenario())


@pytest.mark.parametrize("how", ["close", "reset", "hang", "closed-port"])
def test_refused_connections_fail_the_client_and_accept_restores_them(
    proxy: FaultProxy, how: Refusal
) -> None:
    app = unique("ce_p")

    async def scenario() -> None:
        kept = await connect(proxy, app)
        proxy.refuse(how)
        with pytest.raises(psycopg.OperationalError):
            # A hung accept looks like a server that never greets: connect_timeout ends it.
            await connect(proxy, app, connect_timeout=1)
        assert proxy.refused == (0 if how == "closed-port" else 1)
        assert await answer(kept, "SELECT 1", 10) == 1  # open links go on
        proxy.accept()
        conn = await connect(proxy, app)
        assert await answer(conn, "SELECT 2", 10) == 2
        assert proxy.accepted == 2
        await conn.close()
        await kept.close()

    run(scenario())


def test_a_trigger_black_holes_the_link_right_after_forwarding_the_bytes(
    proxy: FaultProxy, admin: Admin
) -> None:
    """The server commits the statement; the client never hears of it; other links and
    later statements are not affected."""
    app = unique("ce_p")
    table = unique("ce_p")
    admin.conn.execute(f"CREATE TABLE {table} (n int)")

    async def scenario() -> None:
        other = await connect(proxy, app)
        conn = await connect(proxy, app)
        trigger = proxy.after_client_sends(f"INSERT INTO {table}".encode())
        assert await answer(conn, "SELECT 1", 10) == 1  # other bytes pass
        query = asyncio.ensure_future(
            answer(conn, f"INSERT INTO {table} VALUES (7) RETURNING n", 30)
        )
        assert await asyncio.to_thread(trigger.wait, 10)
        assert trigger.link is not None
        assert trigger.link.number == 2
        await await_for(lambda: admin.table_count(table) == 1, "the insert committed")
        done, _ = await asyncio.wait({query}, timeout=SILENCE)
        assert not done
        assert await answer(other, f"INSERT INTO {table} VALUES (8) RETURNING n", 10) == 8
        trigger.link.reset()
        with pytest.raises(psycopg.OperationalError):
            await query
        await conn.close()
        await other.close()

    try:
        run(scenario())
    finally:
        admin.conn.execute(f"DROP TABLE {table}")


def test_a_reset_trigger_breaks_the_link_after_the_server_got_the_statement(
    proxy: FaultProxy, admin: Admin
) -> None:
    app = unique("ce_p")
    table = unique("ce_p")
    admin.conn.execute(f"CREATE TABLE {table} (n int)")

    async def scenario() -> None:
        conn = await connect(proxy, app)
        trigger = proxy.after_client_sends(f"INSERT INTO {table}".encode(), action="reset")
        with pytest.raises(psycopg.OperationalError):
            await answer(conn, f"INSERT INTO {table} VALUES (9)", 10)
        assert trigger.fired.is_set()
        await asyncio.to_thread(
            admin.wait_for, lambda: admin.count(app) == 0, "the server session ended"
        )
        await conn.close()

    try:
        run(scenario())
        # An autocommit statement that reached the server before the reset committed.
        assert admin.table_count(table) == 1
    finally:
        admin.conn.execute(f"DROP TABLE {table}")
