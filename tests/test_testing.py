"""The conformance kit catches what it is meant to: engines broken on purpose fail it.

Each broken engine is the memory engine with one mistake an engine that fetches several
messages at once can make; the kit's test for that mistake must fail on it, and pass on
the memory engine itself (tests/test_memory.py runs the whole kit).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from channels_engines import EngineConfig
from channels_engines.memory import MemoryEngine, MemoryStore
from channels_engines.testing import ChannelLayerConformance


class BufferingEngine(MemoryEngine):
    """Takes every waiting message of a channel at once, into ``buffer``, and returns
    them one by one: what a server-backed engine does to save round trips."""

    def buffer(self) -> dict[str, deque[bytes]]:
        raise NotImplementedError

    async def receive(self, channel: str) -> bytes:
        buffered = self.buffer().setdefault(channel, deque())
        if not buffered:
            buffered.append(await super().receive(channel))
            while (more := self.shared.mailbox.take_nowait(channel)) is not None:
                buffered.append(more)
        return buffered.popleft()


class ClosingLosesTakenMessages(BufferingEngine):
    """Keeps its buffer on the instance, which close() throws away with it."""

    def __init__(self, config: EngineConfig, shared: Any, *, client_id: str) -> None:
        super().__init__(config, shared, client_id=client_id)
        self._buffer: dict[str, deque[bytes]] = {}

    def buffer(self) -> dict[str, deque[bytes]]:
        return self._buffer

    async def flush(self) -> None:
        await super().flush()
        self._buffer.clear()


class SharedBuffer(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.buffer: dict[str, deque[bytes]] = {}


class FlushLeavesTakenMessages(BufferingEngine):
    """Keeps its buffer where it outlives close(), but flush() forgets to empty it."""

    shared: SharedBuffer

    @classmethod
    def create_shared(cls, config: EngineConfig) -> SharedBuffer:
        return SharedBuffer()

    def buffer(self) -> dict[str, deque[bytes]]:
        return self.shared.buffer


class ClosingLosesKit(ChannelLayerConformance):
    config = {"ENGINE": ClosingLosesTakenMessages}


class FlushLeavesKit(ChannelLayerConformance):
    config = {"ENGINE": FlushLeavesTakenMessages}


def test_the_kit_catches_a_close_that_loses_messages_already_taken() -> None:
    with pytest.raises(AssertionError):
        ClosingLosesKit().test_close_keeps_messages_already_taken_from_the_server()
    # The mistake is that one: the kit's flush test passes on this engine.
    ClosingLosesKit().test_flush_removes_messages_already_taken_from_the_server()


def test_the_kit_catches_a_flush_that_leaves_messages_already_taken() -> None:
    with pytest.raises(AssertionError):
        FlushLeavesKit().test_flush_removes_messages_already_taken_from_the_server()
    FlushLeavesKit().test_close_keeps_messages_already_taken_from_the_server()


def test_the_older_close_test_misses_the_lost_messages() -> None:
    """Why the kit needs the new test: one message sent, none taken, survives either way."""
    ClosingLosesKit().test_close_then_use_again()


class NoServerKit(ChannelLayerConformance):
    config = {"ENGINE": "memory"}


def test_the_unreachable_server_test_is_skipped_for_an_engine_without_a_server() -> None:
    with pytest.raises(pytest.skip.Exception, match="gives no unreachable_config"):
        NoServerKit().test_an_unreachable_server_raises_server_unavailable()
