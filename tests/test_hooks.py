"""Hooks: configured like engines, told what happens, able to wrap messages, never able
to break delivery or see credentials."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from channels_engines import (
    CredentialProvider,
    Credentials,
    EngineChannelLayer,
    InvalidConfigError,
    Requirement,
    unregister_hook,
)
from channels_engines.hooks import (
    Counted,
    CredentialsChanged,
    CredentialsRefreshFailed,
    Event,
    GroupSent,
    Hook,
    ListenerLost,
    ListenerRecovered,
    LoopClosed,
    LoopOpened,
    MessageReceived,
    MessageSent,
    hooks,
    register_hook,
)
from tests.support.hooks import Recorder
from tests.support.pgtools import Admin, engine_of, make_layer, run
from tests.support.polling import await_for


def memory(*hook_list: Any, **config: Any) -> EngineChannelLayer:
    return EngineChannelLayer(ENGINE="memory", hooks=list(hook_list), **config)


# Configuration ------------------------------------------------------------------------


def test_an_unknown_hook_name_is_refused_with_its_place_and_the_closest_name() -> None:
    register_hook("audit_trail", Recorder)
    try:
        with pytest.raises(InvalidConfigError) as caught:
            memory("audit_trial")
        text = str(caught.value)
        assert "CONFIG['hooks'][0]" in text
        assert "'audit_trial'" in text
        assert "Did you mean 'audit_trail'?" in text
    finally:
        hooks.unregister("audit_trail")


def test_a_hook_in_entry_point_form_is_shown_with_the_dotted_spelling() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        memory("tests.support.hooks:Recorder")
    assert str(caught.value) == (
        "EngineChannelLayer: CONFIG['hooks'][0]: CONFIG['hooks'] 'tests.support.hooks:Recorder' "
        "is neither a registered name nor a dotted path. That is the entry-point form; "
        "CONFIG['hooks'] takes a dotted path, written with a dot: "
        "'tests.support.hooks.Recorder'. Available hooks: 'opentelemetry', 'prometheus'."
    )


def test_unregister_hook_frees_a_name() -> None:
    register_hook("ce_test_gone", Recorder)
    unregister_hook("ce_test_gone")
    assert "ce_test_gone" not in hooks.names()
    register_hook("ce_test_gone", Recorder)
    unregister_hook("ce_test_gone")


@pytest.mark.parametrize("value", [3, None, "", object(), int])
def test_an_item_that_is_no_hook_is_refused_naming_the_setting(value: Any) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        memory(value)
    assert "hooks" in str(caught.value)
    assert "Hook subclasses or Hook instances" in str(caught.value)


def test_hooks_must_be_a_list() -> None:
    with pytest.raises(InvalidConfigError, match="hooks"):
        EngineChannelLayer(ENGINE="memory", hooks="tests.support.hooks.Recorder")


def test_a_dotted_path_to_something_else_is_refused() -> None:
    with pytest.raises(InvalidConfigError, match=r"not a subclass of channels_engines\.Hook"):
        memory("tests.test_hooks.memory")


class NeedsArguments(Hook):
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace


def test_a_hook_class_that_needs_arguments_asks_for_an_instance() -> None:
    with pytest.raises(InvalidConfigError, match="Put an instance in the list"):
        memory(NeedsArguments)
    layer = memory(NeedsArguments("chat"))
    assert layer._hooks.hooks[0].namespace == "chat"  # type: ignore[attr-defined]


class NeedsAPackage(Hook):
    requires = (Requirement("not_installed_anywhere_x", "not-installed-anywhere", "nothing"),)


def test_a_hook_whose_package_is_missing_says_how_to_install_it() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        memory(NeedsAPackage)
    # The hook's module belongs to no installed distribution whose extra could be named.
    assert str(caught.value) == (
        "EngineChannelLayer: CONFIG['hooks'][0]: hook tests.test_hooks.NeedsAPackage needs "
        "not-installed-anywhere, which is not installed. Install it with: "
        "pip install 'not-installed-anywhere'"
    )


def test_names_dotted_paths_classes_and_instances_are_used_in_their_order() -> None:
    register_hook("recorder_by_name", Recorder)
    instance = Recorder()
    try:
        layer = memory("recorder_by_name", "tests.support.hooks.Recorder", Recorder, instance)
    finally:
        hooks.unregister("recorder_by_name")
    loaded = layer._hooks.hooks
    assert [type(hook) for hook in loaded] == [Recorder] * 4
    assert loaded[3] is instance
    assert len({id(hook) for hook in loaded}) == 4


@pytest.fixture
def published_hook(tmp_path: Path) -> Iterator[str]:
    """A package installed beside the others that publishes a hook as an entry point."""
    (tmp_path / "ce_hook_example.py").write_text(
        "from channels_engines.hooks import Hook, MessageSent\n"
        "class Audit(Hook):\n"
        "    events = (MessageSent,)\n"
        "    seen = []\n"
        "    def handle(self, event):\n"
        "        Audit.seen.append(event.channel)\n"
    )
    info = tmp_path / "ce_hook_example-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ce-hook-example\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[channels_engines.hooks]\naudit_example = ce_hook_example:Audit\n"
    )
    sys.path.append(str(tmp_path))
    importlib.invalidate_caches()
    hooks.refresh_entry_points()
    yield "audit_example"
    sys.path.remove(str(tmp_path))
    sys.modules.pop("ce_hook_example", None)
    importlib.invalidate_caches()
    hooks.refresh_entry_points()


def test_a_hook_published_by_a_package_is_found_by_its_entry_point_name(
    published_hook: str,
) -> None:
    assert published_hook in hooks.names()

    async def scenario() -> list[str]:
        layer = memory(published_hook)
        await layer.send("audit.here", {"type": "x"})
        return list(layer._hooks.hooks[0].seen)  # type: ignore[attr-defined]

    assert run(scenario()) == ["audit.here"]


# Events -------------------------------------------------------------------------------


def test_the_layer_reports_sends_receives_group_sends_and_its_event_loops() -> None:
    recorder = Recorder()

    async def scenario() -> tuple[EngineChannelLayer, str]:
        layer = memory(recorder, capacity=1)
        channel = await layer.new_channel()
        other = await layer.new_channel("other")
        await layer.send(channel, {"type": "direct", "text": "x" * 100})
        waiting = asyncio.ensure_future(layer.receive(other))
        await layer.group_add("room", other)
        await layer.group_add("room", channel)  # its queue is full: dropped there
        await layer.group_send("room", {"type": "group"})
        assert await layer.receive(channel) == {"type": "direct", "text": "x" * 100}
        assert await waiting == {"type": "group"}
        await layer.send("full.channel", {"type": "a"})
        with pytest.raises(ChannelFull):
            await layer.send("full.channel", {"type": "b"})
        await layer.close()
        return layer, channel

    layer, channel = run(scenario())
    kinds = [type(event) for event in recorder.seen]
    assert kinds[0] is LoopOpened
    assert kinds[-1] is LoopClosed
    sent = recorder.of(MessageSent)
    assert [event.channel for event in sent] == [channel, "full.channel"]
    assert sent[0].size > 100
    assert all(event.seconds >= 0 for event in sent)
    (group,) = recorder.of(GroupSent)
    # The channels are in two queues ("specific." and "other."); one was full.
    assert (group.group, group.receivers) == ("room", 1)
    received = recorder.of(MessageReceived)
    assert sorted(event.channel.split(".")[0] for event in received) == ["other", "specific"]
    assert all(event.waited >= 0 and event.size > 0 for event in received)
    counted = {(event.name, event.count) for event in recorder.of(Counted)}
    assert counted == {("group_send.dropped", 1), ("send.channel_full", 1)}
    assert layer.events.get("send.channel_full") == 1
    assert all(event.layer.engine == "memory" for event in recorder.seen)


def test_a_hook_gets_only_the_events_it_subscribes_to() -> None:
    class SendsOnly(Recorder):
        events = (MessageSent, MessageReceived)

    hook = SendsOnly()

    async def scenario() -> None:
        layer = memory(hook)
        await layer.send("only.sends", {"type": "x"})
        await layer.receive("only.sends")
        await layer.close()

    run(scenario())
    assert [type(event) for event in hook.seen] == [MessageSent, MessageReceived]


def test_without_hooks_the_layer_makes_no_events() -> None:
    layer = memory()
    assert not layer._hooks.watching
    assert layer._on_sent == layer._on_received == layer._on_group_sent == ()
    assert layer.events._hooks is None


# Failing hooks ------------------------------------------------------------------------


class Broken(Hook):
    events = (Event,)

    def handle(self, event: Event) -> None:
        raise RuntimeError("the hook's own bug")

    def outgoing(self, kind: str, target: str, message: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("the hook's own bug")

    def incoming(self, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        return "not a dict"  # type: ignore[return-value]


def test_a_failing_hook_is_logged_by_name_once_a_minute_and_delivery_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()

    async def scenario() -> list[dict[str, Any]]:
        layer = memory(Broken(), recorder)
        for n in range(5):
            await layer.send("broken.hook", {"type": "m", "n": n})
        got = [await layer.receive("broken.hook") for _ in range(5)]
        await layer.close()
        return got

    with caplog.at_level(logging.WARNING, logger="channels_engines.hooks"):
        got = run(scenario())
    assert got == [{"type": "m", "n": n} for n in range(5)]
    # The hook after the broken one still sees everything.
    assert len(recorder.of(MessageSent)) == len(recorder.of(MessageReceived)) == 5
    records = [record.getMessage() for record in caplog.records]
    assert len(records) == 1, records
    assert "Hook tests.test_hooks.Broken failed" in records[0]
    assert "the hook's own bug" in records[0]


# Wrapping messages across processes ---------------------------------------------------


class Tracing(Hook):
    """Carries the sender's trace id inside the message, as a tracing hook would."""

    def __init__(self, trace: str) -> None:
        self.trace = trace
        self.linked: list[tuple[str, str]] = []

    def outgoing(self, kind: str, target: str, message: dict[str, Any]) -> dict[str, Any]:
        return {**message, "_trace": f"{self.trace} ({kind})"}

    def incoming(self, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        message = dict(message)
        self.linked.append((channel, message.pop("_trace", "")))
        return message


@pytest.mark.postgres
def test_outgoing_and_incoming_carry_context_from_one_process_to_another(
    app: str, prefix: str
) -> None:
    sending, receiving = Tracing("trace-of-the-sender"), Tracing("trace-of-the-receiver")

    async def scenario() -> None:
        sender = make_layer(app, prefix=prefix, hooks=[sending])
        receiver = make_layer(app, prefix=prefix, hooks=[receiving])
        channel = await receiver.new_channel()
        await receiver.group_add("traced", channel)
        await sender.send(channel, {"type": "direct"})
        await sender.group_send("traced", {"type": "group"})
        assert await asyncio.wait_for(receiver.receive(channel), 10) == {"type": "direct"}
        assert await asyncio.wait_for(receiver.receive(channel), 10) == {"type": "group"}
        assert receiving.linked == [
            (channel, "trace-of-the-sender (send)"),
            (channel, "trace-of-the-sender (group_send)"),
        ]
        await sender.close()
        await receiver.close()

    run(scenario())


# The postgres engine's own events -----------------------------------------------------


@pytest.mark.postgres
def test_a_lost_listener_is_reported_and_so_is_its_return(
    app: str, prefix: str, admin: Admin
) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix, hooks=[recorder])
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "before"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "before"}
        listener = engine_of(layer).listener
        admin.conn.execute("SELECT pg_terminate_backend(%s)", [listener.backend_pid])
        await await_for(lambda: recorder.of(ListenerRecovered), "the listener's return")
        await layer.send(channel, {"type": "after"})
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "after"}
        await layer.close()

    run(scenario())
    (lost,) = recorder.of(ListenerLost)
    (back,) = recorder.of(ListenerRecovered)
    assert "terminat" in lost.reason or "closed" in lost.reason
    assert back.away > 0
    assert back.may_have_missed is False  # the server did not restart
    assert recorder.seen.index(lost) < recorder.seen.index(back)


class Rotating(CredentialProvider):
    """Short-lived passwords (the test server trusts every login), then an outage."""

    def __init__(self) -> None:
        self.issued = 0
        self.failing = False

    def get_credentials(self) -> Credentials:
        if self.failing:
            raise ConnectionError("the secrets service is down (test outage)")
        self.issued += 1
        expires = datetime.now(timezone.utc) + timedelta(seconds=3)
        return Credentials("postgres", f"sealed-password-{self.issued}", expires)


@pytest.mark.postgres
def test_credential_changes_and_failed_refreshes_are_reported_without_credentials(
    app: str, prefix: str
) -> None:
    recorder = Recorder()
    provider = Rotating()

    async def scenario() -> None:
        layer = make_layer(
            app, prefix=prefix, hooks=[recorder], credentials=provider, sweep_interval=0.2
        )
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "x"})
        await layer.receive(channel)
        await await_for(lambda: recorder.of(CredentialsChanged), "a rotation", timeout=30)
        provider.failing = True
        await await_for(lambda: recorder.of(CredentialsRefreshFailed), "a failure", timeout=30)
        await layer.close()

    run(scenario())
    changed = recorder.of(CredentialsChanged)[0]
    failed = recorder.of(CredentialsRefreshFailed)[0]
    assert "Rotating" in changed.provider
    assert "secrets service is down" in failed.reason
    shown = " ".join(repr(event) for event in recorder.seen)
    assert "sealed-password" not in shown
