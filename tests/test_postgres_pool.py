"""The connection pool (:mod:`channels_engines.postgres.pool`) and its hand-off of idle
connections between event loops, against a real server."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import warnings
from collections import Counter
from typing import Any

import psycopg
import pytest
from asgiref.sync import async_to_sync

from tests.support.pgtools import (
    REPO,
    Admin,
    LogCapture,
    Sampler,
    client_connections,
    make_layer,
    run,
    server_dsn,
)
from tests.support.polling import await_for, wait_for

pytestmark = pytest.mark.postgres


def test_connection_count_does_not_grow_with_groups_and_receive_calls(
    app: str, prefix: str
) -> None:
    """200 groups, 2,000 receive() calls over 100 normal channels, then their messages."""

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix, capacity=1000)
        channels = [f"budget.normal-{index}" for index in range(100)]
        with Sampler(app) as sampler:
            await asyncio.gather(
                *(layer.group_add(f"budget-group-{g}", channels[g % 100]) for g in range(200))
            )
            receivers = [
                asyncio.ensure_future(layer.receive(channel))
                for channel in channels
                for _ in range(20)
            ]
            await await_for(
                lambda: sum(layer._shared.mailbox.waiting().values()) == 2000, "2,000 waiting"
            )
            await asyncio.to_thread(sampler.sample)
            await asyncio.gather(
                *(layer.group_send(f"budget-group-{g}", {"type": "g", "n": g}) for g in range(200))
            )
            await asyncio.gather(
                *(layer.send(channels[n % 100], {"type": "s", "n": n}) for n in range(1800))
            )
            results = await asyncio.wait_for(asyncio.gather(*receivers), 30)
            await asyncio.to_thread(sampler.sample)
        received = Counter((result["type"], result["n"]) for result in results)
        assert received == Counter([("g", g) for g in range(200)] + [("s", n) for n in range(1800)])
        assert sampler.max_connections <= 3, sampler.max_connections
        assert sampler.server_max <= 3, sampler.server_max
        await layer.close()

    run(scenario())


def test_close_releases_every_connection_and_the_layer_works_again_after(
    app: str, prefix: str, admin: Admin
) -> None:
    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix)
        channel = await layer.new_channel()
        waiting = asyncio.ensure_future(layer.receive(channel))
        # Two operations at once: both pool connections open, plus the listener.
        await asyncio.gather(layer.group_add("close", channel), layer.group_add("close", "close.b"))
        await layer.group_send("close", {"type": "close"})
        assert await asyncio.wait_for(waiting, 10) == {"type": "close"}
        await await_for(lambda: admin.count(app) == 3, "three connections")
        assert client_connections(admin.port) == 3

        await layer.close()

        assert client_connections(admin.port) == 0
        await asyncio.to_thread(wait_for, lambda: admin.count(app) == 0, "no connection left")
        # The next call on this loop opens connections again; close() releases them again.
        await layer.send(channel, {"type": "again"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "again"}
        await layer.close()
        assert client_connections(admin.port) == 0
        await asyncio.to_thread(wait_for, lambda: admin.count(app) == 0, "no connection left")

    run(scenario())


def test_async_to_sync_calls_reuse_a_bounded_set_of_connections_until_close(
    app: str, prefix: str, admin: Admin
) -> None:
    """Each async_to_sync call runs a new event loop; the loop's idle connections are
    handed to the next loop's pool instead of being reopened 400 times."""
    layer = make_layer(app, prefix=prefix, capacity=1000)
    async_to_sync(layer.group_add)("sync-group", "sync.member")
    problems = LogCapture("asyncio", logging.WARNING)
    engine_log = LogCapture("channels_engines", logging.WARNING)
    with warnings.catch_warnings(record=True) as caught, problems, engine_log:
        warnings.simplefilter("always")
        with Sampler(app) as sampler:
            for n in range(200):
                async_to_sync(layer.group_send)("sync-group", {"type": "g", "n": n})
                async_to_sync(layer.send)(f"sync.channel-{n % 10}", {"type": "s", "n": n})
        gc.collect()
    assert sampler.samples > 10
    assert sampler.max_connections <= 3, sampler.max_connections
    assert len(sampler.backends) <= 3, sorted(sampler.backends)
    assert 1 <= client_connections(admin.port) <= 2  # left for the next call (pool_max_size)
    texts = [str(warning.message) for warning in caught] + problems.at_least(logging.WARNING)
    assert texts == []
    assert engine_log.at_least(logging.WARNING) == []
    for needle in ("Task was destroyed", "attached to a different loop", "ResourceWarning"):
        assert not any(needle in text for text in texts)

    async def drain() -> tuple[list[int], list[int]]:
        groups = [(await layer.receive("sync.member"))["n"] for _ in range(200)]
        sends = [(await layer.receive(f"sync.channel-{n % 10}"))["n"] for n in range(200)]
        await layer.close()
        return groups, sends

    groups, sends = run(drain())
    assert groups == list(range(200))
    assert sends == list(range(200))
    assert admin.table_count(prefix + "message") == 0
    assert client_connections(admin.port) == 0  # close() released the handed-off ones too
    wait_for(lambda: admin.count(app) == 0, "every connection released")


def test_a_handed_off_connection_the_server_ended_is_replaced_without_an_error(
    app: str, prefix: str, admin: Admin
) -> None:
    layer = make_layer(app, prefix=prefix)
    async_to_sync(layer.send)("handoff.a", {"n": 1})
    [parked] = admin.backends(app)
    assert admin.terminate(parked)
    wait_for(lambda: admin.count(app) == 0, "the terminated backend to exit")
    with LogCapture("channels_engines", logging.WARNING) as engine_log:
        async_to_sync(layer.send)("handoff.a", {"n": 2})
    assert engine_log.at_least(logging.WARNING) == []
    [replacement] = admin.backends(app)
    assert replacement != parked

    async def drain() -> list[int]:
        received = [(await layer.receive("handoff.a"))["n"] for _ in range(2)]
        await layer.close()
        return received

    assert run(drain()) == [1, 2]
    wait_for(lambda: admin.count(app) == 0, "every connection released")


FORK_SCRIPT = """
import asyncio, os, sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
import django

django.setup()
from tests.support.pgtools import make_layer

layer = make_layer(sys.argv[1], prefix=sys.argv[2])


def parked_pid():
    [(entry, _)] = layer._shared.handoff._entries
    return entry.conn.info.backend_pid


asyncio.run(layer.send("fork.parent", {"n": 1}))
before = parked_pid()
child = os.fork()
if child == 0:
    asyncio.run(layer.send("fork.child", {"n": 2}))
    sys.exit(0)  # a normal exit: atexit handlers and finalizers run in the child
_, status = os.waitpid(child, 0)
asyncio.run(layer.send("fork.parent", {"n": 3}))
print(status, before, parked_pid())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_uses_nor_closes_the_parents_handed_off_connection(
    app: str, prefix: str, admin: Admin
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, app, prefix],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status, before, after = result.stdout.split()
    assert status == "0", result.stderr
    assert before == after  # the parent's session survived the child's exit and was reused
    layer = make_layer(app, prefix=prefix)

    async def drain() -> tuple[list[int], list[int]]:
        parent = [(await layer.receive("fork.parent"))["n"] for _ in range(2)]
        child = [(await layer.receive("fork.child"))["n"]]
        await layer.close()
        return parent, child

    assert run(drain()) == ([1, 3], [2])
    wait_for(lambda: admin.count(app) == 0, "every connection released")


def test_the_handoff_keeps_at_most_its_limit_and_only_gives_back_the_same_login() -> None:
    from channels_engines.postgres.pool import ConnectionPool, IdleHandoff

    handoff = IdleHandoff(2)
    first_login, second_login = object(), object()
    login = first_login

    async def open_three() -> list[Any]:
        pool = ConnectionPool(
            lambda timeout: psycopg.AsyncConnection.connect(server_dsn(), autocommit=True),
            min_size=0,
            max_size=3,
            timeout=10.0,
            check_after=60.0,
            handoff=handoff,
            tag=lambda: login,
        )
        holders = [pool.connection() for _ in range(3)]
        conns = [await holder.__aenter__() for holder in holders]
        for holder in holders:
            await holder.__aexit__(None, None, None)
        await pool.close(hand_off=True)
        return conns

    conns = asyncio.run(open_three())
    assert len(handoff) == 2
    assert sum(conn.closed for conn in conns) == 1  # the third did not fit

    async def take_one() -> int | None:
        pool = ConnectionPool(
            lambda timeout: psycopg.AsyncConnection.connect(server_dsn(), autocommit=True),
            min_size=0,
            max_size=1,
            timeout=10.0,
            check_after=60.0,
            handoff=handoff,
            tag=lambda: login,
        )
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
        opened = pool.stats["connections_opened"]
        await pool.close(hand_off=True)
        return None if opened else pid

    kept = [conn for conn in conns if not conn.closed]
    assert asyncio.run(take_one()) in {conn.info.backend_pid for conn in kept}
    login = second_login  # the credentials changed: the old login's connections go
    assert asyncio.run(take_one()) is None
    assert all(conn.closed for conn in kept)
    assert len(handoff) == 1  # the new login's connection
    handoff.clear()
    assert len(handoff) == 0


def test_close_from_a_new_event_loop_releases_the_connections_ended_loops_left(
    app: str, prefix: str, admin: Admin
) -> None:
    """Sync code: each async_to_sync call ends its loop and leaves idle connections for
    the next; ``async_to_sync(layer.close)()`` runs on a loop that never used the layer,
    and releases them still."""
    layer = make_layer(app, prefix=prefix)
    for n in range(5):
        async_to_sync(layer.send)("pool.handoff", {"n": n})
    assert admin.count(app) >= 1
    async_to_sync(layer.close)()
    wait_for(lambda: admin.count(app) == 0, "the kept connections to close")
