"""Cleanups that run on an event loop just before it closes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from channels_engines import loops


def test_cleanup_runs_on_the_loop_before_it_closes() -> None:
    seen: list[tuple[bool, bool]] = []

    async def cleanup() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # the loop can still run tasks
        seen.append((loop.is_running(), loop.is_closed()))

    async def main() -> None:
        assert loops.call_before_close(asyncio.get_running_loop(), "key", cleanup)

    asyncio.run(main())
    assert seen == [(True, False)]


def test_cancelled_cleanup_does_not_run() -> None:
    ran: list[str] = []

    async def cleanup() -> None:
        ran.append("ran")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loops.call_before_close(loop, "key", cleanup)
        loops.cancel_before_close(loop, "key")
        loops.cancel_before_close(loop, "never.registered")

    asyncio.run(main())
    assert ran == []


def test_one_cleanup_per_key_and_each_runs_once() -> None:
    ran: list[str] = []

    def cleanup(name: str) -> loops.Cleanup:
        async def run() -> None:
            ran.append(name)

        return run

    loop = asyncio.new_event_loop()
    loops.call_before_close(loop, "a", cleanup("a.first"))
    loops.call_before_close(loop, "a", cleanup("a.second"))
    loops.call_before_close(loop, "b", cleanup("b"))
    loop.close()
    loop.close()
    assert ran == ["a.second", "b"]
    assert loop not in loops._cleanups


def test_failing_cleanup_is_logged_and_the_loop_still_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def broken() -> None:
        raise RuntimeError("cleanup failed")

    async def fine() -> None:
        ran.append("fine")

    loop = asyncio.new_event_loop()
    loops.call_before_close(loop, "broken", broken)
    loops.call_before_close(loop, "fine", fine)
    with caplog.at_level(logging.ERROR, logger="channels_engines"):
        loop.close()
    assert loop.is_closed()
    assert ran == ["fine"]
    assert [record.getMessage() for record in caplog.records] == [
        "Cleanup before closing an event loop failed"
    ]


def test_loop_whose_close_cannot_be_wrapped_is_reported() -> None:
    class SealedLoop(asyncio.SelectorEventLoop):
        def __setattr__(self, name: str, value: object) -> None:
            if name == "close":
                raise AttributeError("read-only")
            super().__setattr__(name, value)

    async def cleanup() -> None:
        pass

    loop = SealedLoop()
    try:
        assert not loops.call_before_close(loop, "key", cleanup)
        assert loop not in loops._cleanups
    finally:
        loop.close()
