"""A conformance suite any engine can run, derived from the channel layer specification.

Subclass :class:`ChannelLayerConformance` in a pytest module and give the layer CONFIG::

    from channels_engines.testing import ChannelLayerConformance

    class TestMyEngine(ChannelLayerConformance):
        config = {"ENGINE": "myengine", "url": "..."}

Every test coroutine runs in a fresh event loop with its own layer, flushed first and
closed afterwards; no asyncio plugin is needed. Negative checks ("nothing else arrived")
send a sentinel after the message that must not arrive and expect the sentinel next,
relying on FIFO order instead of waiting for a timeout. Requires pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import re
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any, ClassVar

import msgpack
import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull, MessageTooLarge

from .contract import BaseChannelEngine
from .exceptions import ServerUnavailableError
from .layer import EngineChannelLayer
from .validation import MAX_NESTING

__all__ = [
    "ChannelLayerConformance",
    "WorkExceeded",
    "as_stored",
    "bounded_work",
    "engine_for",
    "pathological_messages",
    "undecodable_payloads",
]

SENTINEL = {"type": "conformance.sentinel"}


def engine_for(
    layer: EngineChannelLayer, loop: asyncio.AbstractEventLoop | None = None
) -> BaseChannelEngine | None:
    """The engine ``layer`` runs on ``loop`` (default: the running loop), or None before
    anything was done there: for tests that look at an engine's parts (its pool, its
    listener, its counters) without going through private attributes."""
    return layer._engines.get(loop or asyncio.get_running_loop())


TestCoroutine = Callable[..., Awaitable[None]]


class ChannelLayerConformance:
    """Spec conformance tests; subclass and set :attr:`config`."""

    #: The layer CONFIG, including ENGINE.
    config: ClassVar[dict[str, Any]] = {}
    #: Seconds any one test may take before it fails.
    timeout: ClassVar[float] = 60.0
    #: Seconds a single receive() may wait in a test before it fails.
    receive_timeout: ClassVar[float] = 10.0
    #: Expiry used by the expiry tests (seconds); keep it short, the tests wait past it.
    short_expiry: ClassVar[float] = 0.5

    def unreachable_config(self) -> dict[str, Any] | None:
        """CONFIG overrides that point the engine at a server that cannot be reached (a
        closed port), with a short timeout; None (the default) for an engine without a
        server, which skips the test of :class:`~channels_engines.ServerUnavailableError`."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for klass in cls.__mro__:
            for name, value in vars(klass).items():
                if name.startswith("test_") and inspect.iscoroutinefunction(value):
                    if not inspect.iscoroutinefunction(getattr(cls, name)):
                        continue  # a subclass replaced it with a plain test
                    setattr(cls, name, _run_in_new_loop(value))

    # Helpers for tests ------------------------------------------------------------

    def make_layer(self, **overrides: Any) -> EngineChannelLayer:
        """A new layer from :attr:`config` with ``overrides`` applied."""
        return EngineChannelLayer(**{**self.config, **overrides})

    @asynccontextmanager
    async def open_layer(self, **overrides: Any) -> AsyncIterator[EngineChannelLayer]:
        """A flushed layer, closed on exit."""
        layer = self.make_layer(**overrides)
        if "flush" in layer.extensions:
            await layer.flush()
        try:
            yield layer
        finally:
            await layer.close()

    async def receive(self, layer: EngineChannelLayer, channel: str) -> dict[str, Any]:
        return await asyncio.wait_for(layer.receive(channel), self.receive_timeout)

    async def assert_nothing_pending(self, layer: EngineChannelLayer, channel: str) -> None:
        """The next message on ``channel`` is a sentinel sent now: nothing was queued."""
        await layer.send(channel, SENTINEL)
        assert await self.receive(layer, channel) == SENTINEL

    def require(self, layer: EngineChannelLayer, extension: str) -> None:
        if extension not in layer.extensions:
            pytest.skip(f"the engine does not provide the {extension!r} extension")

    # Sending and receiving -------------------------------------------------------

    async def test_send_receive_process_specific_channel(self) -> None:
        async with self.open_layer() as layer:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "test.message", "text": "hello"})
            assert await self.receive(layer, channel) == {"type": "test.message", "text": "hello"}

    async def test_send_receive_normal_channel(self) -> None:
        async with self.open_layer() as layer:
            await layer.send("conformance.normal", {"type": "test.message", "n": 1})
            assert await self.receive(layer, "conformance.normal") == {
                "type": "test.message",
                "n": 1,
            }

    async def test_receive_waits_for_a_later_send(self) -> None:
        async with self.open_layer() as layer:
            channel = await layer.new_channel()
            waiting = asyncio.ensure_future(self.receive(layer, channel))
            await asyncio.sleep(0)
            assert not waiting.done()
            await layer.send(channel, {"type": "late"})
            assert await waiting == {"type": "late"}

    async def test_fifo_per_channel(self) -> None:
        async with self.open_layer() as layer:
            channel = await layer.new_channel()
            for name in (channel, "conformance.fifo"):
                for index in range(50):
                    await layer.send(name, {"type": "seq", "index": index})
                received = [(await self.receive(layer, name))["index"] for _ in range(50)]
                assert received == list(range(50))

    async def test_message_values_round_trip(self) -> None:
        message = {
            "type": "all.types",
            "bytes": b"\x00\xffbinary",
            "text": "unicode \u2603",
            "int": -(2**63),
            "big": 2**63 - 1,
            "float": 1.5,
            "list": [1, "two", [3.0]],
            "tuple": (1, 2),
            "dict": {"nested": {"deeper": None}},
            "bool": True,
            "none": None,
        }
        async with self.open_layer() as layer:
            channel = await layer.new_channel()
            await layer.send(channel, message)
            assert await self.receive(layer, channel) == {**message, "tuple": [1, 2]}

    async def test_large_messages(self) -> None:
        """The spec asks for messages of 1 MB encoded as JSON."""
        async with self.open_layer() as layer:
            channel = await layer.new_channel()
            text = {"type": "large", "text": "x" * 1_000_000}
            data = {"type": "large", "bytes": bytes(range(256)) * 4096}
            await layer.send(channel, text)
            await layer.send(channel, data)
            assert await self.receive(layer, channel) == text
            assert await self.receive(layer, channel) == data

    async def test_message_too_large_is_refused_and_not_sent(self) -> None:
        async with self.open_layer(max_message_size=1024) as layer:
            channel = await layer.new_channel()
            if "groups" in layer.extensions:
                await layer.group_add("conformance-big", channel)
            with pytest.raises(MessageTooLarge, match="max_message_size"):
                await layer.send(channel, {"type": "big", "text": "x" * 2000})
            if "groups" in layer.extensions:
                with pytest.raises(MessageTooLarge):
                    await layer.group_send("conformance-big", {"type": "big", "text": "x" * 2000})
            await self.assert_nothing_pending(layer, channel)

    # Process-specific channels -----------------------------------------------------

    async def test_new_channel_names_are_unique_and_valid(self) -> None:
        async with self.open_layer() as layer:
            names = [await layer.new_channel() for _ in range(1000)]
            assert len(set(names)) == 1000
            for name in names:
                assert re.fullmatch(r"specific\.[a-zA-Z0-9._-]+![a-zA-Z0-9._-]+", name, re.ASCII)
            custom = await layer.new_channel("chat.user")
            assert custom.startswith("chat.user.")
            assert "!" in custom
            with pytest.raises(TypeError):
                await layer.new_channel("bad!prefix")

    async def test_process_specific_channels_do_not_mix(self) -> None:
        async with self.open_layer() as layer:
            first, second = await layer.new_channel(), await layer.new_channel()
            await layer.send(first, {"type": "to.first"})
            await layer.send(second, {"type": "to.second"})
            assert await self.receive(layer, second) == {"type": "to.second"}
            assert await self.receive(layer, first) == {"type": "to.first"}

    async def test_receive_on_another_layers_process_specific_channel_is_refused(self) -> None:
        async with self.open_layer() as layer:
            other = self.make_layer()
            foreign = await other.new_channel()
            with pytest.raises(ValueError, match="another process"):
                await layer.receive(foreign)

    async def test_many_concurrent_receivers_each_get_one_message(self) -> None:
        async with self.open_layer() as layer:
            receivers = [
                asyncio.ensure_future(self.receive(layer, "conformance.work")) for _ in range(50)
            ]
            await asyncio.sleep(0)
            for index in range(50):
                await layer.send("conformance.work", {"type": "job", "index": index})
            results = await asyncio.gather(*receivers)
            assert sorted(result["index"] for result in results) == list(range(50))

    async def test_many_receivers_on_their_own_channels(self) -> None:
        # Process-specific channels share one capacity; leave room for all 200 at once.
        async with self.open_layer(capacity=1000) as layer:
            channels = [await layer.new_channel() for _ in range(200)]
            receivers = [
                asyncio.ensure_future(self.receive(layer, channel)) for channel in channels
            ]
            await asyncio.sleep(0)
            for index, channel in enumerate(channels):
                await layer.send(channel, {"type": "mine", "index": index})
            results = await asyncio.gather(*receivers)
            assert [result["index"] for result in results] == list(range(200))

    async def test_cancelled_receive_loses_nothing(self) -> None:
        rng = random.Random(1234)
        async with self.open_layer() as layer:
            channel = await layer.new_channel()
            received: list[int] = []
            for index in range(200):
                await layer.send(channel, {"type": "seq", "index": index})
                task = asyncio.ensure_future(layer.receive(channel))
                # The delay is the point of the test: cancel at varying moments.
                await asyncio.sleep(rng.uniform(0, 0.003))
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    received.append((await task)["index"])
            while len(received) < 200:
                received.append((await self.receive(layer, channel))["index"])
            assert received == list(range(200))
            await self.assert_nothing_pending(layer, channel)

    # Capacity ----------------------------------------------------------------------

    async def test_send_raises_channel_full_at_capacity(self) -> None:
        async with self.open_layer(capacity=3) as layer:
            channel = await layer.new_channel()
            for index in range(3):
                await layer.send(channel, {"type": "fill", "index": index})
            with pytest.raises(ChannelFull):
                await layer.send(channel, {"type": "over"})
            assert (await self.receive(layer, channel))["index"] == 0
            await layer.send(channel, {"type": "fits.again"})

    async def test_channel_capacity_patterns(self) -> None:
        patterns = {"conformance.small*": 1, re.compile(r"^conformance\.big"): 4}
        async with self.open_layer(capacity=2, channel_capacity=patterns) as layer:
            await layer.send("conformance.small.a", {"type": "x"})
            with pytest.raises(ChannelFull):
                await layer.send("conformance.small.a", {"type": "x"})
            for _ in range(4):
                await layer.send("conformance.big.a", {"type": "x"})
            with pytest.raises(ChannelFull):
                await layer.send("conformance.big.a", {"type": "x"})
            for _ in range(2):
                await layer.send("conformance.other", {"type": "x"})
            with pytest.raises(ChannelFull):
                await layer.send("conformance.other", {"type": "x"})
            assert layer.get_capacity("conformance.small.zzz") == 1

    async def test_process_specific_channels_share_capacity(self) -> None:
        """Capacity applies to the part up to the '!', shared by its channels."""
        async with self.open_layer(capacity=2) as layer:
            first, second = await layer.new_channel(), await layer.new_channel()
            await layer.send(first, {"type": "x"})
            await layer.send(second, {"type": "x"})
            with pytest.raises(ChannelFull):
                await layer.send(first, {"type": "x"})

    # Expiry ------------------------------------------------------------------------

    async def test_unread_messages_expire(self) -> None:
        async with self.open_layer(expiry=self.short_expiry) as layer:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "expires"})
            await layer.send("conformance.expiring", {"type": "expires"})
            await asyncio.sleep(self.short_expiry * 2.5)  # expiry is the behaviour under test
            for name in (channel, "conformance.expiring"):
                await layer.send(name, {"type": "fresh"})
                assert await self.receive(layer, name) == {"type": "fresh"}

    # Groups ------------------------------------------------------------------------

    async def test_group_send_reaches_every_member_once(self) -> None:
        async with self.open_layer() as layer:
            self.require(layer, "groups")
            members = [await layer.new_channel() for _ in range(3)] + ["conformance.member"]
            outsider = await layer.new_channel()
            for channel in members:
                await layer.group_add("conformance-group", channel)
            await layer.group_add("conformance-group", members[0])
            await layer.group_send("conformance-group", {"type": "broadcast"})
            for channel in members:
                assert await self.receive(layer, channel) == {"type": "broadcast"}
                await self.assert_nothing_pending(layer, channel)
            await self.assert_nothing_pending(layer, outsider)

    async def test_group_send_to_many_local_members_counts_once_against_capacity(self) -> None:
        """A group message to 150 channels of one process is one message of their queue."""
        async with self.open_layer(capacity=100) as layer:
            self.require(layer, "groups")
            members = [await layer.new_channel() for _ in range(150)]
            for channel in members:
                await layer.group_add("conformance-crowd", channel)
            await layer.group_send("conformance-crowd", {"type": "crowd"})
            for channel in members:
                assert await self.receive(layer, channel) == {"type": "crowd"}

    async def test_group_messages_keep_their_order(self) -> None:
        async with self.open_layer() as layer:
            self.require(layer, "groups")
            channel = await layer.new_channel()
            await layer.group_add("conformance-order", channel)
            for index in range(20):
                await layer.group_send("conformance-order", {"type": "seq", "index": index})
            assert [(await self.receive(layer, channel))["index"] for _ in range(20)] == list(
                range(20)
            )

    async def test_group_discard(self) -> None:
        async with self.open_layer() as layer:
            self.require(layer, "groups")
            kept, gone = await layer.new_channel(), await layer.new_channel()
            await layer.group_add("conformance-discard", kept)
            await layer.group_add("conformance-discard", gone)
            await layer.group_discard("conformance-discard", gone)
            await layer.group_discard("conformance-discard", "conformance.never.added")
            await layer.group_discard("conformance-no-such-group", kept)
            await layer.group_send("conformance-discard", {"type": "after.discard"})
            assert await self.receive(layer, kept) == {"type": "after.discard"}
            await self.assert_nothing_pending(layer, gone)
            await layer.group_send("conformance-empty-group", {"type": "to.nobody"})

    async def test_group_send_never_raises_channel_full(self) -> None:
        async with self.open_layer(capacity=1) as layer:
            self.require(layer, "groups")
            full = "conformance.full"
            room = "conformance.room"
            await layer.group_add("conformance-capacity", full)
            await layer.group_add("conformance-capacity", room)
            await layer.send(full, {"type": "first"})
            await layer.group_send("conformance-capacity", {"type": "group"})
            assert await self.receive(layer, room) == {"type": "group"}
            assert await self.receive(layer, full) == {"type": "first"}
            await self.assert_nothing_pending(layer, full)

    async def test_group_membership_expires_after_group_expiry(self) -> None:
        async with self.open_layer(group_expiry=1) as layer:
            self.require(layer, "groups")
            renewed, lapsed = await layer.new_channel(), await layer.new_channel()
            await layer.group_add("conformance-expiry", renewed)
            await layer.group_add("conformance-expiry", lapsed)
            await asyncio.sleep(0.6)  # group expiry is the behaviour under test
            await layer.group_add("conformance-expiry", renewed)
            await asyncio.sleep(0.6)
            await layer.group_send("conformance-expiry", {"type": "late"})
            assert await self.receive(layer, renewed) == {"type": "late"}
            await self.assert_nothing_pending(layer, lapsed)

    async def test_group_expiry_zero_means_memberships_never_expire(self) -> None:
        async with self.open_layer(group_expiry=0) as layer:
            self.require(layer, "groups")
            channel = await layer.new_channel()
            await layer.group_add("conformance-forever", channel)
            await asyncio.sleep(0.2)
            await layer.group_send("conformance-forever", {"type": "still.member"})
            assert await self.receive(layer, channel) == {"type": "still.member"}

    # Flush and close ---------------------------------------------------------------

    async def test_flush_removes_messages_and_groups(self) -> None:
        async with self.open_layer() as layer:
            self.require(layer, "flush")
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "before.flush"})
            await layer.send("conformance.flushed", {"type": "before.flush"})
            if "groups" in layer.extensions:
                await layer.group_add("conformance-flush", channel)
            await layer.flush()
            await self.assert_nothing_pending(layer, channel)
            await self.assert_nothing_pending(layer, "conformance.flushed")
            if "groups" in layer.extensions:
                await layer.group_send("conformance-flush", {"type": "after.flush"})
                await self.assert_nothing_pending(layer, channel)

    async def test_flush_removes_messages_already_taken_from_the_server(self) -> None:
        """An engine that fetches several messages at once holds some that no receive()
        has returned yet: flush() removes those too."""
        async with self.open_layer() as layer:
            self.require(layer, "flush")
            for channel in (await layer.new_channel(), "conformance.flush.taken"):
                for index in range(5):
                    await layer.send(channel, {"type": "before.flush", "index": index})
                assert (await self.receive(layer, channel))["index"] == 0
                await layer.flush()
                await self.assert_nothing_pending(layer, channel)

    async def test_close_keeps_messages_already_taken_from_the_server(self) -> None:
        """Messages an engine fetched but no receive() returned yet survive close(): the
        next engine instance on the loop delivers them, in order."""
        async with self.open_layer() as layer:
            for channel in (await layer.new_channel(), "conformance.close.taken"):
                for index in range(5):
                    await layer.send(channel, {"type": "across.close", "index": index})
                assert (await self.receive(layer, channel))["index"] == 0
                await layer.close()
                await layer.send(channel, SENTINEL)
                rest = []
                while (message := await self.receive(layer, channel)) != SENTINEL:
                    rest.append(message["index"])
                assert rest == [1, 2, 3, 4], "close() lost messages taken from the server"

    async def test_an_unreachable_server_raises_server_unavailable(self) -> None:
        """Within its timeout, and with the client library's error as the cause: not a
        hang, and not an exception of the engine's client library."""
        overrides = self.unreachable_config()
        if overrides is None:
            pytest.skip("the kit subclass gives no unreachable_config()")
        layer = self.make_layer(**overrides)
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("send", lambda: layer.send("conformance.unreachable", {"type": "x"})),
            ("receive", lambda: layer.receive("conformance.unreachable")),
        ]
        if "groups" in layer.extensions:
            calls += [
                ("group_add", lambda: layer.group_add("conformance-gone", "conformance.x")),
                ("group_send", lambda: layer.group_send("conformance-gone", {"type": "x"})),
            ]
        if "flush" in layer.extensions:
            calls.append(("flush", layer.flush))
        try:
            for name, call in calls:
                with pytest.raises(ServerUnavailableError) as caught:
                    await call()
                assert caught.value.__cause__ is not None, f"{name}() chained no cause"
        finally:
            await layer.close()

    async def test_close_then_use_again(self) -> None:
        async with self.open_layer() as layer:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "across.close"})
            await layer.close()
            assert await self.receive(layer, channel) == {"type": "across.close"}
            await layer.close()
            await layer.close()

    # Validation --------------------------------------------------------------------

    async def test_invalid_names_are_refused(self) -> None:
        bad = [
            "",
            "grp\n",
            "abc!é",
            "caf\u00e9",
            "two!!marks",
            "sp ace",
            "a" * 101,
            "a?b",
            42,
            None,
        ]
        longest = "a" * 100
        async with self.open_layer() as layer:
            for name in bad:
                with pytest.raises(TypeError):
                    await layer.send(name, {"type": "x"})  # type: ignore[arg-type]
                with pytest.raises(TypeError):
                    await layer.receive(name)  # type: ignore[arg-type]
                if "groups" in layer.extensions:
                    with pytest.raises(TypeError):
                        await layer.group_add(name, "conformance.ok")  # type: ignore[arg-type]
                    with pytest.raises(TypeError):
                        await layer.group_add("conformance-ok", name)  # type: ignore[arg-type]
                    with pytest.raises(TypeError):
                        await layer.group_discard(name, "conformance.ok")  # type: ignore[arg-type]
                    with pytest.raises(TypeError):
                        await layer.group_send(name, {"type": "x"})  # type: ignore[arg-type]
            await layer.send(longest, {"type": "longest"})
            assert await self.receive(layer, longest) == {"type": "longest"}
            if "groups" in layer.extensions:
                await layer.group_add(longest, longest)
                await layer.group_send(longest, {"type": "longest.group"})
                assert await self.receive(layer, longest) == {"type": "longest.group"}

    async def test_invalid_messages_are_refused_and_not_sent(self) -> None:
        bad: list[tuple[Any, type[Exception]]] = [
            (["not", "a", "dict"], TypeError),
            ({"type": "x", "set": {1, 2}}, TypeError),
            ({"type": "x", "object": object()}, TypeError),
            ({"type": "x", "nested": [{"deep": {3, 4}}]}, TypeError),
            ({"type": "x", 1: "int key"}, TypeError),
            ({"type": "x", "too.big": 2**63}, ValueError),
            ({"type": "x", "too.small": -(2**63) - 1}, ValueError),
            ({"type": "x", "bytearray": bytearray(b"x")}, TypeError),
        ]
        async with self.open_layer() as layer:
            channel = await layer.new_channel()
            if "groups" in layer.extensions:
                await layer.group_add("conformance-bad", channel)
            for message, error in bad:
                with pytest.raises(error):
                    await layer.send(channel, message)
                if "groups" in layer.extensions:
                    with pytest.raises(error):
                        await layer.group_send("conformance-bad", message)
            await self.assert_nothing_pending(layer, channel)

    async def test_pathological_messages_fail_fast(self) -> None:
        """A message that contains itself, nests too deeply, or is sure to be too large
        once encoded is refused with little work and memory, whatever its size, and
        nothing is sent. Work is counted in Python lines run, which would also be the
        time the event loop is blocked."""
        async with self.open_layer() as layer:
            channel = await layer.new_channel()
            if "groups" in layer.extensions:
                await layer.group_add("conformance-pathological", channel)
            for name, message, error in pathological_messages():
                with pytest.raises(error), bounded_work(lines=20_000, memory=1 << 20, what=name):
                    await layer.send(channel, message)
                if "groups" in layer.extensions:
                    group = "conformance-pathological"
                    with (
                        pytest.raises(error),
                        bounded_work(lines=20_000, memory=1 << 20, what=name),
                    ):
                        await layer.group_send(group, message)
            await self.assert_nothing_pending(layer, channel)

    async def test_encrypted_messages_arrive_and_replays_to_another_channel_are_dropped(
        self,
    ) -> None:
        """With ``encryption_keys`` the engine carries sealed bytes unchanged; a message
        sealed for one channel and stored on another never reaches a consumer."""
        keys = ["conformance-key-" + "k" * 32]
        async with self.open_layer(encryption_keys=keys) as layer:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "sealed", "n": 1})
            assert await self.receive(layer, channel) == {"type": "sealed", "n": 1}
            if "groups" in layer.extensions:
                await layer.group_add("conformance-sealed", channel)
                await layer.group_send("conformance-sealed", {"type": "sealed", "n": 2})
                assert await self.receive(layer, channel) == {"type": "sealed", "n": 2}
            replayed = as_stored(layer, "conformance.elsewhere", msgpack.packb({"type": "x"}))
            await layer._engine().send(channel, replayed)
            await self.assert_nothing_pending(layer, channel)
            assert layer.events.get("receive.unopenable") == 1

    async def test_undecodable_messages_are_dropped_and_receive_keeps_waiting(self) -> None:
        """Bytes that no layer could have sent (another writer's bug, an attack) never
        reach a consumer, as a message or as an exception: receive() drops and counts
        them, and returns the next real message."""
        async with self.open_layer(max_message_size=1024) as layer:
            engine = layer._engine()
            bad = [payload for _, payload in undecodable_payloads()]
            for channel in (await layer.new_channel(), "conformance.undecodable"):
                before = layer.events.get("receive.undecodable")
                waiting = asyncio.ensure_future(self.receive(layer, channel))
                for payload in bad:
                    await engine.send(channel, as_stored(layer, channel, payload))
                deadline = asyncio.get_running_loop().time() + self.receive_timeout
                while layer.events.get("receive.undecodable") < before + len(bad):
                    assert asyncio.get_running_loop().time() < deadline, "drops not counted"
                    assert not waiting.done(), waiting.result()
                    await asyncio.sleep(0.01)
                assert not waiting.done()
                await layer.send(channel, {"type": "after"})
                assert await waiting == {"type": "after"}
                assert layer.events.get("receive.undecodable") == before + len(bad)

    async def test_layer_attributes(self) -> None:
        async with self.open_layer() as layer:
            assert isinstance(layer.extensions, list)
            assert layer.ChannelFull is ChannelFull
            assert layer.MessageTooLarge is MessageTooLarge
            assert layer.group_expiry == self.make_layer().group_expiry

    # Sync callers ------------------------------------------------------------------

    def test_async_to_sync_callers_share_the_layer(self) -> None:
        """Each async_to_sync call runs in its own short-lived event loop."""
        layer = self.make_layer()
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.send)(channel, {"type": "from.sync"})
        assert async_to_sync(layer.receive)(channel) == {"type": "from.sync"}
        if "groups" in layer.extensions:
            async_to_sync(layer.group_add)("conformance-sync", channel)
            for index in range(20):
                async_to_sync(layer.group_send)(
                    "conformance-sync", {"type": "sync", "index": index}
                )
            received = [async_to_sync(layer.receive)(channel)["index"] for _ in range(20)]
            assert received == list(range(20))
            async_to_sync(layer.group_discard)("conformance-sync", channel)
        async_to_sync(layer.close)()


def pathological_messages() -> Iterator[tuple[str, dict[str, Any], type[Exception]]]:
    """Messages whose naive walk never ends or takes seconds and gigabytes: (what, message,
    the error the layer raises), built one at a time."""
    cycle: list[Any] = []
    cycle.append(cycle)
    yield "a list that contains itself", {"type": "x", "v": cycle}, ValueError
    loop: dict[str, Any] = {}
    loop["d"] = loop
    yield "a dict that contains itself", {"type": "x", "v": loop}, ValueError
    mutual: dict[str, Any] = {"type": "x"}
    mutual["list"] = [{"back": mutual}]
    yield "a message inside its own value", mutual, ValueError
    deep: list[Any] = []
    message: dict[str, Any] = {"type": "x", "v": deep}
    for _ in range(100_000):
        deep.append([])
        deep = deep[0]
    yield "lists nested 100,000 deep", message, ValueError
    del message, deep
    yield "a list of 8 million items", {"type": "x", "v": [0] * 8_000_000}, MessageTooLarge
    shared: list[Any] = []
    for _ in range(60):
        shared = [shared, shared]
    yield "a list that holds another twice, 60 levels down", {"v": shared}, MessageTooLarge


def as_stored(layer: EngineChannelLayer, channel: str, payload: bytes) -> bytes:
    """``payload`` as the engine holds a message for ``channel``: sealed when the layer
    encrypts, so that it opens and reaches the decoder."""
    sealer = layer._sealer
    return payload if sealer is None else sealer.seal_for_channel(channel, payload)


def undecodable_payloads() -> list[tuple[str, bytes]]:
    """Stored bytes a receiving layer must drop: (what, payload). All are under 1024 bytes
    but the last, a valid message of almost 2000 bytes."""
    deep: list[Any] = [None]
    for _ in range(MAX_NESTING):
        deep = [deep]
    return [
        ("not msgpack", b"\xc1SECRET-PAYLOAD"),
        ("empty", b""),
        ("cut short", msgpack.packb({"type": "x", "text": "cut"})[:-2]),
        ("followed by more bytes", msgpack.packb({"type": "x"}) + b"\x00"),
        ("an array", msgpack.packb(["type", "x"])),
        ("a string", msgpack.packb("type")),
        ("an integer key", msgpack.packb({"type": "x", 1: "one"})),
        ("a bytes key inside", msgpack.packb({"type": "x", "d": {b"k": 1}}, use_bin_type=True)),
        ("an extension type", msgpack.packb({"type": "x", "e": msgpack.ExtType(42, b"data")})),
        ("a timestamp", msgpack.packb({"type": "x", "t": msgpack.Timestamp(0, 0)})),
        ("an unsigned 64-bit integer", msgpack.packb({"type": "x", "n": 2**64 - 1})),
        ("nested too deeply", msgpack.packb({"type": "x", "v": deep})),
        ("over max_message_size", msgpack.packb({"type": "x", "text": "x" * 1982})),
    ]


class WorkExceeded(AssertionError):
    """Code under :func:`bounded_work` ran more Python lines than allowed."""


@contextlib.contextmanager
def bounded_work(*, lines: int, memory: int, what: str = "the code") -> Iterator[None]:
    """Fail if the code inside runs more than ``lines`` lines of Python or allocates more
    than ``memory`` bytes at its peak.

    Lines run are a measure of work that does not depend on the machine, unlike time; the
    count stops the code (with :class:`WorkExceeded`) as soon as it passes the bound, so an
    endless loop fails instead of hanging. Covers the current thread only.
    """
    ran = 0

    def count(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal ran
        if event == "line":
            ran += 1
            if ran > lines:
                raise WorkExceeded(f"{what}: more than {lines:,} lines of Python ran")
        return count

    previous = sys.gettrace()
    already_tracing = tracemalloc.is_tracing()
    if already_tracing:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    sys.settrace(count)
    try:
        yield
    finally:
        # Also when the code raised (the usual case: it is refusing something).
        sys.settrace(previous)
        peak = tracemalloc.get_traced_memory()[1] - baseline
        if not already_tracing:
            tracemalloc.stop()
        if peak > memory and ran <= lines:
            raise AssertionError(f"{what}: {peak:,} bytes allocated at the peak, over {memory:,}")


def _run_in_new_loop(test: TestCoroutine) -> Callable[[Any], None]:
    """Wrap a test coroutine so pytest runs it as a plain test in a fresh event loop."""

    def run(self: ChannelLayerConformance) -> None:
        asyncio.run(asyncio.wait_for(test(self), self.timeout))

    run.__name__ = test.__name__
    run.__qualname__ = test.__qualname__
    run.__doc__ = test.__doc__
    run.__module__ = test.__module__
    return run
