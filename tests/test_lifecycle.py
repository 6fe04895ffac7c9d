"""One engine per running event loop, released when that loop closes.

``async_to_sync`` runs each call in a new event loop on a new thread and closes it
afterwards; ``asyncio.run`` does the same in the calling thread. Whatever an engine holds
must be released as each of those loops closes, and one layer must serve loops of several
threads at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import psutil
import pytest
from asgiref.sync import async_to_sync

from channels_engines import EngineChannelLayer, register_engine
from channels_engines import loops as loops_module
from channels_engines.contract import EngineConfig
from channels_engines.engine_registry import engines
from channels_engines.memory import MemoryEngine


class CountingEngine(MemoryEngine):
    """The memory engine, recording each instance, its loop, and each close()."""

    instances: ClassVar[list[CountingEngine]] = []

    def __init__(self, config: EngineConfig, shared: Any, *, client_id: str) -> None:
        super().__init__(config, shared, client_id=client_id)
        self.loop = asyncio.get_running_loop()
        self.closed_on: list[asyncio.AbstractEventLoop] = []
        type(self).instances.append(self)

    async def close(self) -> None:
        self.closed_on.append(asyncio.get_running_loop())
        await super().close()


@pytest.fixture
def counting() -> Iterator[list[CountingEngine]]:
    """Register ENGINE "counting"; yields the list of its instances."""
    CountingEngine.instances = []
    register_engine("counting", CountingEngine)
    yield CountingEngine.instances
    engines.unregister("counting")


def assert_each_closed_once_on_its_own_loop(instances: list[CountingEngine]) -> None:
    for engine in instances:
        assert engine.closed_on == [engine.loop]
        assert engine.loop.is_closed()


def loop_problems(
    caplog: pytest.LogCaptureFixture, caught: list[warnings.WarningMessage]
) -> list[str]:
    """Logged errors and warnings, e.g. 'attached to a different loop' or unclosed loops."""
    found = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    return found + [str(warning.message) for warning in caught]


# One engine per loop -------------------------------------------------------------------


def test_each_asyncio_run_gets_its_own_engine_closed_once_with_its_loop(
    counting: list[CountingEngine],
) -> None:
    layer = EngineChannelLayer(ENGINE="counting")

    async def use() -> None:
        for index in range(3):
            await layer.send("lifecycle.run", {"type": "n", "index": index})
            assert await layer.receive("lifecycle.run") == {"type": "n", "index": index}

    asyncio.run(use())
    assert len(counting) == 1
    asyncio.run(use())
    assert len(counting) == 2
    assert counting[0].loop is not counting[1].loop
    assert_each_closed_once_on_its_own_loop(counting)
    assert layer._engines == {}


def test_close_releases_now_and_the_next_call_reopens(counting: list[CountingEngine]) -> None:
    layer = EngineChannelLayer(ENGINE="counting")

    async def scenario() -> None:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "across.close"})
        await layer.close()
        assert [len(engine.closed_on) for engine in counting] == [1]
        assert await layer.receive(channel) == {"type": "across.close"}
        assert len(counting) == 2
        await layer.close()
        await layer.close()

    asyncio.run(scenario())
    assert len(counting) == 2
    assert_each_closed_once_on_its_own_loop(counting)


def test_engine_unused_by_a_loop_is_never_created(counting: list[CountingEngine]) -> None:
    layer = EngineChannelLayer(ENGINE="counting")

    async def only_names() -> None:
        await layer.new_channel()
        await layer.close()

    asyncio.run(only_names())
    assert counting == []


# Sync callers ------------------------------------------------------------------------


def _settle(threads_before: set[threading.Thread]) -> None:
    """Let finished work release what it holds: collect garbage, join exiting threads.

    async_to_sync leaves its one-off executor to the garbage collector, whose worker
    thread then exits on its own; joining it is the synchronisation, not a delay.
    """
    gc.collect()
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(timeout=10)


def _resources(layer: EngineChannelLayer) -> dict[str, int]:
    return {
        "threads": threading.active_count(),
        "fds": psutil.Process().num_fds(),
        "layer engines": len(layer._engines),
        "loop cleanups": len(loops_module._cleanups),
    }


def test_two_hundred_sync_calls_leave_no_resources_behind(
    counting: list[CountingEngine], caplog: pytest.LogCaptureFixture
) -> None:
    layer = EngineChannelLayer(ENGINE="counting")
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("lifecycle-sync", channel)
    task_counts: list[int] = []

    async def send_and_count_tasks(index: int) -> None:
        await layer.send(channel, {"type": "direct", "index": index})
        task_counts.append(len(asyncio.all_tasks()))

    def one_round(index: int) -> None:
        async_to_sync(send_and_count_tasks)(index)
        assert async_to_sync(layer.receive)(channel) == {"type": "direct", "index": index}
        async_to_sync(layer.group_send)("lifecycle-sync", {"type": "group", "index": index})
        assert async_to_sync(layer.receive)(channel) == {"type": "group", "index": index}

    threads_before = set(threading.enumerate())
    one_round(-1)  # first use may create lasting state (imports, thread-locals)
    _settle(threads_before)
    before = _resources(layer)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        for index in range(200):
            one_round(index)
        _settle(threads_before)
    assert _resources(layer) == before
    assert before["layer engines"] == 0
    assert len(set(task_counts)) == 1
    assert len(counting) == 1 + 4 * 201
    assert_each_closed_once_on_its_own_loop(counting)
    assert loop_problems(caplog, caught) == []


def test_one_layer_serves_two_threads_with_their_own_loops_at_once(
    counting: list[CountingEngine], caplog: pytest.LogCaptureFixture
) -> None:
    """Ping-pong between two loops: every wake-up crosses threads."""
    layer = EngineChannelLayer(ENGINE="counting")
    both_started = threading.Barrier(2, timeout=10)
    engines_at_once: list[int] = []
    errors: list[BaseException] = []

    async def ping() -> None:
        await layer.send("lifecycle.ping", {"type": "ping", "index": 0})
        both_started.wait()  # blocks this loop briefly; the other one has its engine too
        engines_at_once.append(len(layer._engines))
        for index in range(100):
            assert await layer.receive("lifecycle.pong") == {"type": "pong", "index": index}
            if index < 99:
                await layer.send("lifecycle.ping", {"type": "ping", "index": index + 1})

    async def pong() -> None:
        await layer.new_channel()
        await layer.send("lifecycle.unused", {"type": "creates.the.engine"})
        both_started.wait()
        for index in range(100):
            assert await layer.receive("lifecycle.ping") == {"type": "ping", "index": index}
            await layer.send("lifecycle.pong", {"type": "pong", "index": index})

    def run(coroutine: Any) -> None:
        try:
            asyncio.run(coroutine())
        except BaseException as exc:
            errors.append(exc)
            both_started.abort()

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        threads = [threading.Thread(target=run, args=(f,)) for f in (ping, pong)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert engines_at_once == [2]
    assert len(counting) == 2
    assert_each_closed_once_on_its_own_loop(counting)
    assert loop_problems(caplog, caught) == []


def test_receiver_in_one_thread_is_woken_by_a_sync_sender() -> None:
    layer = EngineChannelLayer(ENGINE="memory")
    waiting = threading.Event()
    received: list[dict[str, Any]] = []

    async def receive() -> None:
        task = asyncio.ensure_future(layer.receive("lifecycle.wake"))
        await asyncio.sleep(0)  # one loop step: the receiver is now waiting
        waiting.set()
        received.append(await asyncio.wait_for(task, 10))

    thread = threading.Thread(target=asyncio.run, args=(receive(),))
    thread.start()
    assert waiting.wait(10)
    async_to_sync(layer.send)("lifecycle.wake", {"type": "wake"})
    thread.join(10)
    assert received == [{"type": "wake"}]


# Fork ----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_with_fresh_state_and_parent_keeps_its_own() -> None:
    layer = EngineChannelLayer(ENGINE="memory")
    asyncio.run(layer.send("lifecycle.fork", {"type": "parent"}))
    parent_id = layer.client_id

    async def child() -> dict[str, Any]:
        await layer.send("lifecycle.fork", {"type": "child"})
        return await layer.receive("lifecycle.fork")

    with warnings.catch_warnings():
        # Python 3.12+ warns about forking with threads; this child uses none of them.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            fresh = layer.client_id != parent_id and layer._engines == {}
            code = 0 if fresh and asyncio.run(child()) == {"type": "child"} else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert layer.client_id == parent_id
    assert asyncio.run(layer.receive("lifecycle.fork")) == {"type": "parent"}
