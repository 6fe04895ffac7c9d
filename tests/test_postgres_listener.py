"""The LISTEN connection: what it listens on, and for how long."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from channels_engines.postgres.listener import ListenerUnavailable
from channels_engines.postgres.schema import listen_identifier
from tests.support.pgtools import (
    Admin,
    Sampler,
    engine_of,
    make_layer,
    message,
    run,
    server_dsn,
)
from tests.support.polling import await_for, wait_for

pytestmark = pytest.mark.postgres


def test_names_nobody_waits_on_any_more_are_unlistened(app: str, prefix: str) -> None:
    """300 receives on distinct names, cancelled: the listener goes back to what it had."""
    layer = make_layer(app, prefix=prefix, sweep_interval=0.05)

    async def scenario() -> None:
        await layer.send("names.kept", {"type": "x"})
        kept = asyncio.ensure_future(layer.receive("names.kept"))
        assert await asyncio.wait_for(kept, 10) == {"type": "x"}
        waiting = asyncio.ensure_future(layer.receive("names.still-waiting"))
        engine = engine_of(layer)
        listener = engine.listener
        # Its own control name, the flush name, and the name a receive still waits on.
        baseline = {
            engine._control,
            listen_identifier(f".{prefix}", "#flush"),
            listen_identifier(f".{prefix}", "names.still-waiting"),
        }
        await await_for(lambda: listener.listening == baseline, "the names.kept name dropped")
        receives = [asyncio.ensure_future(layer.receive(f"names.n{n}")) for n in range(300)]
        await await_for(lambda: len(listener.listening) == 303, "300 more names listened")
        for receive in receives:
            receive.cancel()
        for receive in receives:
            with contextlib.suppress(asyncio.CancelledError):
                await receive
        await await_for(lambda: listener.listening == baseline, "back to the baseline")
        # The receive still waiting keeps its name, and gets its message.
        await layer.send("names.still-waiting", {"type": "y"})
        assert await asyncio.wait_for(waiting, 10) == {"type": "y"}
        # A name listened again works again.
        again = asyncio.ensure_future(layer.receive("names.n7"))
        await await_for(lambda: len(listener.listening) >= len(baseline), "listening again")
        await layer.send("names.n7", {"type": "z"})
        assert await asyncio.wait_for(again, 10) == {"type": "z"}
        await layer.close()

    run(scenario())


def test_500_waiting_receivers_use_one_listener_and_at_most_two_pool_connections(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> None:
        # Process-specific channels share one capacity: room for all 500 messages.
        layer = make_layer(app, prefix=prefix, capacity=500)
        channels = [await layer.new_channel() for _ in range(500)]
        with Sampler(app) as sampler:
            # All 500 receive() calls start in the same event loop step.
            receivers = [asyncio.ensure_future(layer.receive(channel)) for channel in channels]
            mailbox = layer._shared.mailbox
            await await_for(lambda: len(mailbox.waiting()) == 500, "500 waiting receivers")
            listener = engine_of(layer).listener
            await asyncio.to_thread(sampler.sample)  # while they wait
            backends = await asyncio.to_thread(admin.backends, app)
            assert listener.backend_pid in backends
            assert len(backends) <= 3

            await asyncio.gather(
                *(layer.send(channel, message(n, channel)) for n, channel in enumerate(channels))
            )
            results = await asyncio.wait_for(asyncio.gather(*receivers), 30)
            await asyncio.to_thread(sampler.sample)  # after they were woken
        assert [result["ch"] for result in results] == channels
        assert [result["n"] for result in results] == list(range(500))
        assert mailbox.waiting() == {}
        assert all(mailbox.buffered(channel) == 0 for channel in channels)
        # Rows of messages that came in their notifications are deleted after delivery.
        await await_for(
            lambda: admin.table_count(prefix + "message") == 0, "delivered rows deleted"
        )
        assert sampler.samples >= 2
        assert sampler.max_connections <= 3, sampler.max_connections
        assert sampler.server_max <= 3, sampler.server_max
        await layer.close()

    run(scenario())


def test_listener_on_another_database_fails_the_first_receive_naming_listen_dsn(
    app: str, prefix: str, admin: Admin
) -> None:
    test_db = conninfo_to_dict(server_dsn()).get("dbname")
    assert test_db != "postgres"
    listen_app = app + "_l"
    wrong = make_conninfo(server_dsn(), dbname="postgres", application_name=listen_app)

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix, listen_dsn=wrong)
        channel = await layer.new_channel()
        with pytest.raises(ListenerUnavailable) as raised:
            await asyncio.wait_for(layer.receive(channel), 30)
        assert "CONFIG['listen_dsn']" in str(raised.value)
        assert "did not receive its own notification" in str(raised.value)
        assert "postgres" in str(raised.value)  # where it listened
        await asyncio.to_thread(wait_for, lambda: admin.count(listen_app) == 0, "listener closed")
        await layer.close()

        right = make_conninfo(server_dsn(), application_name=listen_app)
        fixed = make_layer(app, prefix=prefix, listen_dsn=right)
        channel = await fixed.new_channel()
        waiting = asyncio.ensure_future(fixed.receive(channel))
        await fixed.send(channel, {"type": "heard"})
        assert await asyncio.wait_for(waiting, 10) == {"type": "heard"}
        assert admin.count(listen_app) == 1
        await fixed.close()

    run(scenario())
