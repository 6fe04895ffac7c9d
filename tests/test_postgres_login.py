"""Where the engine connects and as whom (:class:`channels_engines.postgres.connection.Login`),
on the test server: ``DATABASES`` aliases, custom backends."""

from __future__ import annotations

import asyncio

import pytest
from psycopg.conninfo import conninfo_to_dict

from channels_engines import EngineChannelLayer
from channels_engines.exceptions import InvalidConfigError
from tests.pg_backend import base as counting_backend
from tests.support.pgtools import (
    Admin,
    database_alias,
    default_database,
    engine_of,
    run,
    server_dsn,
    unique,
)
from tests.support.polling import await_for

pytestmark = pytest.mark.postgres


def test_zero_config_connects_with_databases_default(prefix: str, admin: Admin) -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="postgres", table_prefix=prefix)
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "zero"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "zero"}
        pid = engine_of(layer).listener.backend_pid
        row = admin.rows(
            "SELECT datname, usename, application_name FROM pg_stat_activity WHERE pid = %s",
            [pid],
        )
        await layer.close()
        return row

    rows = run(scenario())
    default = default_database()
    assert rows == [(default["NAME"], default["USER"] or rows[0][1], "channels_engines")]
    assert default["NAME"] == conninfo_to_dict(server_dsn()).get("dbname", "test")


def test_a_custom_database_backend_is_asked_for_every_new_connection(
    app: str, prefix: str, admin: Admin
) -> None:
    alias = unique("counting")
    entry = {
        **default_database(),
        "ENGINE": "tests.pg_backend",
        "OPTIONS": {"application_name": app},
    }
    with database_alias(alias, entry):

        async def scenario() -> None:
            layer = EngineChannelLayer(ENGINE="postgres", database=alias, table_prefix=prefix)
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "one"})
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "one"}
            engine = engine_of(layer)
            listener, pool = engine.listener, engine.pool

            def opened() -> int:
                return pool.stats["connections_opened"] + 1 + listener.reconnects

            assert counting_backend.CALLS[alias] == opened()
            # One connection held here: the next operation needs a second one.
            async with pool.connection():
                await layer.group_add("c", "c.a")
            assert pool.stats["connections_opened"] >= 2
            assert counting_backend.CALLS[alias] == opened()
            # A new listener connection.
            before = counting_backend.CALLS[alias]
            await asyncio.to_thread(admin.terminate, listener.backend_pid)
            await await_for(lambda: listener.reconnects == 1, "the listener reconnected")
            assert counting_backend.CALLS[alias] == opened() > before
            waiting = asyncio.ensure_future(layer.receive(channel))
            await layer.send(channel, {"type": "two"})
            assert await asyncio.wait_for(waiting, 10) == {"type": "two"}
            assert set(admin.backends(app)) >= {listener.backend_pid}
            await layer.close()

        run(scenario())


def test_database_naming_a_missing_alias_is_refused_at_construction() -> None:
    with pytest.raises(InvalidConfigError) as raised:
        EngineChannelLayer(ENGINE="postgres", database="nope")
    assert str(raised.value) == (
        "EngineChannelLayer: CONFIG['database'] names 'nope', which is not in "
        "settings.DATABASES (aliases: 'default'). Name a PostgreSQL alias, or give 'dsn' or "
        "'connection'."
    )


def test_database_naming_a_sqlite_alias_fails_clearly_at_first_use() -> None:
    with database_alias("lite", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}):
        layer = EngineChannelLayer(ENGINE="postgres", database="lite")

        async def scenario() -> None:
            # The error names the alias, its backend and the problem, at every use.
            clear = r"DATABASES\['lite'\].*'django\.db\.backends\.sqlite3'.*not PostgreSQL"
            with pytest.raises(Exception, match=clear):
                await layer.send("lite.channel", {"type": "x"})
            with pytest.raises(Exception, match=clear):
                await asyncio.wait_for(layer.receive("lite.channel"), 30)
            await layer.close()

        run(scenario())
