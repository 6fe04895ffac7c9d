"""layer.sync: calls from synchronous code on one background event loop per process."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from channels_engines import EngineChannelLayer
from channels_engines.sync import shutdown
from tests.support.pgtools import Admin, Sampler, config, make_layer, run, server_dsn, unique
from tests.support.polling import wait_for


@pytest.fixture(autouse=True)
def stopped_afterwards() -> Iterator[None]:
    """Each test's layers leave no connection open on the background loop."""
    yield
    shutdown()


def test_sync_calls_work_from_plain_sync_code_on_memory() -> None:
    layer = EngineChannelLayer(ENGINE="memory", capacity=2)
    layer.sync.group_add("room", "sync.member")
    layer.sync.send("sync.member", {"type": "direct"})
    layer.sync.group_send("room", {"type": "group"})
    with pytest.raises(ChannelFull):
        layer.sync.send("sync.member", {"type": "one too many"})
    layer.sync.group_discard("room", "sync.member")
    layer.sync.group_send("room", {"type": "nobody"})

    async def read() -> list[dict[str, Any]]:
        return [await layer.receive("sync.member") for _ in range(2)]

    # The memory engine shares its messages between event loops of a process.
    assert run(read()) == [{"type": "direct"}, {"type": "group"}]
    layer.sync.flush()


def test_errors_of_the_call_reach_the_caller() -> None:
    layer = EngineChannelLayer(ENGINE="memory")
    with pytest.raises(TypeError, match="channel name"):
        layer.sync.send("not a valid name!", {"type": "x"})


def test_sync_from_async_code_is_refused_without_running_anything() -> None:
    layer = EngineChannelLayer(ENGINE="memory")

    async def misuse() -> None:
        layer.sync.send("sync.async", {"type": "x"})

    with pytest.raises(RuntimeError, match="await the layer's own method instead"):
        run(misuse())

    # The memory engine buffers what is sent in the layer's mailbox: nothing arrived.
    assert layer._shared.mailbox.buffered("sync.async") == 0


@pytest.mark.postgres
def test_many_threads_share_one_loop_and_stay_within_the_pool(
    app: str, prefix: str, admin: Admin
) -> None:
    """1,000 group_send() calls from 4 threads: every message arrives, and the process
    never holds more connections than the pool allows."""
    sending_app = unique("ce_t")  # the sender's own sessions, counted on the server
    sender = make_layer(sending_app, prefix=prefix, capacity=5000)
    receiver = make_layer(app, prefix=prefix, capacity=5000)

    async def join() -> str:
        channel = await receiver.new_channel()
        await receiver.group_add("sync-many", channel)
        return channel

    channel = run(join())
    errors: list[BaseException] = []

    def calls(thread: int) -> None:
        try:
            for n in range(250):
                sender.sync.group_send("sync-many", {"type": "m", "t": thread, "n": n})
        except BaseException as exc:
            errors.append(exc)

    with Sampler(sending_app) as sampler:
        threads = [threading.Thread(target=calls, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        sampler.sample()
    assert errors == []

    async def read() -> list[dict[str, Any]]:
        got = [await asyncio.wait_for(receiver.receive(channel), 10) for _ in range(1000)]
        await receiver.close()
        return got

    got = run(read())
    for thread in range(4):
        assert [m["n"] for m in got if m["t"] == thread] == list(range(250))
    # Two pooled connections (pool_max_size), no listener: the sender never receives.
    assert sampler.samples >= 2
    assert 1 <= sampler.server_max <= 2, sampler.server_max


@pytest.mark.postgres
# Python 3.12+ warns about fork() with threads running: the child here uses none of them.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_its_own_loop(app: str, prefix: str) -> None:
    layer = make_layer(app, prefix=prefix)
    layer.sync.send("sync.fork", {"type": "parent"})  # the parent's loop is running

    def child() -> None:
        layer.sync.send("sync.fork", {"type": "child"})

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    assert process.exitcode == 0

    async def read() -> list[dict[str, Any]]:
        reader = make_layer(app, prefix=prefix)
        got = [await asyncio.wait_for(reader.receive("sync.fork"), 10) for _ in range(2)]
        await reader.close()
        return got

    assert run(read()) == [{"type": "parent"}, {"type": "child"}]


@pytest.mark.postgres
def test_the_loop_releases_its_connections_when_the_interpreter_exits(
    app: str, prefix: str, admin: Admin
) -> None:
    script = textwrap.dedent(
        f"""
        import django
        from django.conf import settings
        settings.configure(SECRET_KEY="s" * 50, INSTALLED_APPS=["channels_engines"])
        django.setup()
        from channels_engines import EngineChannelLayer
        layer = EngineChannelLayer(**{config(app, prefix=prefix, dsn=server_dsn())!r})
        for n in range(20):
            layer.sync.send("sync.exit", {{"type": "m", "n": n}})
        from channels_engines.sync import shutdown
        shutdown()
        print("closed", flush=True)
        import sys
        sys.stdin.read()  # alive until the test closes its input
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "closed"
            # Still running, its connections already closed by the loop's cleanup.
            wait_for(lambda: admin.count(app) == 0, "the child's connections closed")
            assert process.poll() is None
        finally:
            process.communicate(timeout=30)  # closes its input: it ends


@pytest.mark.postgres
def test_a_process_that_used_it_exits_cleanly(app: str, prefix: str) -> None:
    script = textwrap.dedent(
        f"""
        import django
        from django.conf import settings
        settings.configure(SECRET_KEY="s" * 50, INSTALLED_APPS=["channels_engines"])
        django.setup()
        from channels_engines import EngineChannelLayer
        layer = EngineChannelLayer(**{config(app, prefix=prefix, dsn=server_dsn())!r})
        layer.sync.group_send("sync-exit", {{"type": "m"}})
        layer.sync.send("sync.exit", {{"type": "m"}})
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
