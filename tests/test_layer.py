"""The facade: settings forms, Channels' layer manager, and errors at layer creation."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from channels.exceptions import ChannelFull, InvalidChannelLayerError, MessageTooLarge
from channels.layers import channel_layers, get_channel_layer
from django.conf import settings
from django.core.signals import setting_changed
from django.test import override_settings

from channels_engines import (
    BaseChannelEngine,
    EngineChannelLayer,
    InvalidConfigError,
    InvalidEngineError,
    Option,
)
from channels_engines import layer as layer_module
from channels_engines.apps import _on_setting_changed
from channels_engines.memory import MemoryEngine
from channels_engines.redaction import Secret
from channels_engines.testing import as_stored, engine_for, undecodable_payloads
from channels_engines.validation import non_local_name

BACKEND = "channels_engines.EngineChannelLayer"
WHERE = "CHANNEL_LAYERS['default']"
LAYER_KEYS = (
    "capacity, channel_capacity, encryption_keys, expiry, group_expiry, hooks, max_message_size"
)


class SendOnlyEngine(BaseChannelEngine):
    """An engine that provides no extension (the tests never reach send or receive)."""

    async def send(self, channel: str, message: bytes) -> None:
        raise AssertionError("not reached")

    async def receive(self, channel: str) -> bytes:
        raise AssertionError("not reached")


class SecretEngine(MemoryEngine):
    """An engine with a secret option, to check it never shows."""

    options = {
        "password": Option((str,), "", "A password.", secret=True),
        "region": Option((str,), "eu", "Where the server is.", choices=("eu", "us")),
    }


class GreedyEngine(MemoryEngine):
    """An engine that claims a key the layer owns."""

    options = {"capacity": Option((int,), 1, "Mine.")}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def engine_layer(alias: str = "default") -> EngineChannelLayer:
    """``get_channel_layer(alias)``, checked to be this package's layer."""
    layer = get_channel_layer(alias)
    assert isinstance(layer, EngineChannelLayer)
    return layer


def layer_error(layers: dict[str, Any], alias: str = "default") -> InvalidChannelLayerError:
    """The error Channels raises when it creates the layer ``alias`` from ``layers``."""
    with (
        override_settings(CHANNEL_LAYERS=layers),
        pytest.raises(InvalidChannelLayerError) as caught,
    ):
        get_channel_layer(alias)
    return caught.value


# Settings forms --------------------------------------------------------------------


def test_top_level_engine_form_is_normalised_by_the_app_at_start_up() -> None:
    """tests/settings.py says {"default": {"ENGINE": "memory"}}."""
    assert settings.CHANNEL_LAYERS["default"] == {
        "ENGINE": "memory",
        "BACKEND": BACKEND,
        "CONFIG": {"ENGINE": "memory"},
    }
    layer = get_channel_layer()
    assert isinstance(layer, EngineChannelLayer)
    assert (layer.alias, layer.engine_name) == ("default", "memory")


def test_top_level_engine_form_works_inside_override_settings() -> None:
    layers = {"default": {"ENGINE": "memory", "CONFIG": {"capacity": 7, "expiry": 5}}}
    with override_settings(CHANNEL_LAYERS=layers):
        layer = get_channel_layer()
        assert isinstance(layer, EngineChannelLayer)
        assert (layer.alias, layer.capacity, layer.expiry) == ("default", 7, 5)


def test_explicit_backend_form_needs_no_app() -> None:
    """With the app's settings hook disconnected, Channels alone builds the layer."""
    layers = {
        "default": {"BACKEND": BACKEND, "CONFIG": {"ENGINE": "memory", "capacity": 3}},
        "other": {
            "BACKEND": "channels_engines.layer.EngineChannelLayer",
            "CONFIG": {"ENGINE": "memory"},
        },
    }
    assert setting_changed.disconnect(dispatch_uid="channels_engines.layers")
    try:
        with override_settings(CHANNEL_LAYERS=layers):
            assert layers == settings.CHANNEL_LAYERS
            default, other = get_channel_layer(), get_channel_layer("other")
            assert isinstance(default, EngineChannelLayer)
            assert isinstance(other, EngineChannelLayer)
            assert (default.alias, default.capacity) == ("default", 3)
            assert (other.alias, other.capacity) == ("other", 100)
    finally:
        setting_changed.connect(_on_setting_changed, dispatch_uid="channels_engines.layers")


def test_engine_can_be_given_next_to_config_and_inside_it() -> None:
    layers = {"default": {"ENGINE": "memory", "CONFIG": {"ENGINE": "memory", "capacity": 2}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert engine_layer().capacity == 2


def test_override_settings_gives_a_fresh_layer() -> None:
    before = engine_layer()
    layers = {"default": {"ENGINE": "memory", "CONFIG": {"capacity": 7}}}
    with override_settings(CHANNEL_LAYERS=layers):
        inside = engine_layer()
        assert inside is not before
        assert inside.capacity == 7
        run(inside.send("fresh.check", {"type": "inside"}))
    after = engine_layer()
    assert after is not inside
    assert after.capacity == 100

    async def nothing_carried_over() -> None:
        await after.send("fresh.check", {"type": "after"})
        assert await after.receive("fresh.check") == {"type": "after"}

    run(nothing_carried_over())


def test_test_config_is_used_by_make_test_backend() -> None:
    layers = {
        "default": {
            "ENGINE": "memory",
            "CONFIG": {"capacity": 5},
            "TEST_CONFIG": {"capacity": 9},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        assert engine_layer().capacity == 5
        test_layer = channel_layers.make_test_backend("default")
        assert isinstance(test_layer, EngineChannelLayer)
        assert (test_layer.alias, test_layer.capacity) == ("default", 9)


def test_test_config_may_choose_another_engine() -> None:
    """Production can name a server engine while tests run in memory."""
    layers = {
        "default": {
            "ENGINE": "no_such_engine",
            "CONFIG": {},
            "TEST_CONFIG": {"ENGINE": "memory"},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        assert channel_layers.make_test_backend("default").engine_name == "memory"


def test_missing_test_config_is_reported_by_channels() -> None:
    layers = {"default": {"ENGINE": "memory"}}
    with (
        override_settings(CHANNEL_LAYERS=layers),
        pytest.raises(InvalidChannelLayerError, match="No TEST_CONFIG specified for default"),
    ):
        channel_layers.make_test_backend("default")


# Errors at layer creation -------------------------------------------------------------


def test_unknown_engine_names_the_alias_and_suggests() -> None:
    error = layer_error({"default": {"ENGINE": "postgress"}})
    assert isinstance(error, InvalidEngineError)
    assert str(error) == (
        f"{WHERE}: unknown ENGINE 'postgress'. Did you mean 'postgres'? Available engines: "
        "'memory', 'postgres', 'redis'. ENGINE takes a registered name or the dotted path of a "
        "channels_engines.BaseChannelEngine subclass."
    )


def test_unknown_engine_in_explicit_form_names_its_alias() -> None:
    error = layer_error(
        {
            "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
            "engines": {"BACKEND": BACKEND, "CONFIG": {"ENGINE": "memroy"}},
        },
        alias="engines",
    )
    assert str(error).startswith(
        "CHANNEL_LAYERS['engines']: unknown ENGINE 'memroy'. Did you mean 'memory'?"
    )


def test_misspelled_config_key_is_named_with_a_suggestion() -> None:
    error = layer_error({"default": {"ENGINE": "memory", "CONFIG": {"capacty": 10}}})
    assert isinstance(error, InvalidConfigError)
    assert str(error) == (
        f"{WHERE}: unknown CONFIG key 'capacty' for ENGINE 'memory'. Did you mean "
        f"'capacity'? Allowed keys: {LAYER_KEYS}."
    )


def test_unknown_config_key_lists_the_engines_own_keys_too() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE=SecretEngine, host="db")
    assert str(caught.value) == (
        "EngineChannelLayer: unknown CONFIG key 'host' for ENGINE 'SecretEngine'. Did you "
        "mean 'hooks'? Allowed keys: capacity, channel_capacity, encryption_keys, expiry, "
        "group_expiry, hooks, max_message_size, password, region."
    )


CAPACITY = "an integer >= 1 and <= 2147483647"
PATTERNS = (
    "a dict mapping glob strings or compiled regular expressions to integers >= 1 and <= 2147483647"
)
EXPIRY = "a number > 0 and <= 86400"
GROUP_EXPIRY = "a number >= 0 and <= 315360000 or None"
SIZE = "an integer >= 1024 and <= 268435321"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"capacity": "10"}, f"CONFIG['capacity'] must be {CAPACITY}, not '10' (str)."),
        ({"capacity": True}, f"CONFIG['capacity'] must be {CAPACITY}, not True (bool)."),
        ({"capacity": 0}, f"CONFIG['capacity'] must be {CAPACITY}, not 0 (int)."),
        (
            {"capacity": 2**31},
            f"CONFIG['capacity'] must be {CAPACITY}, not 2147483648 (int).",
        ),
        ({"expiry": 0}, f"CONFIG['expiry'] must be {EXPIRY}, not 0 (int)."),
        ({"expiry": None}, f"CONFIG['expiry'] must be {EXPIRY}, not None (NoneType)."),
        ({"expiry": math.inf}, f"CONFIG['expiry'] must be {EXPIRY}, not inf (float)."),
        ({"expiry": math.nan}, f"CONFIG['expiry'] must be {EXPIRY}, not nan (float)."),
        ({"expiry": 86401}, f"CONFIG['expiry'] must be {EXPIRY}, not 86401 (int)."),
        ({"group_expiry": -1}, f"CONFIG['group_expiry'] must be {GROUP_EXPIRY}, not -1 (int)."),
        (
            {"group_expiry": 1e15},
            f"CONFIG['group_expiry'] must be {GROUP_EXPIRY}, not 1000000000000000.0 (float).",
        ),
        (
            {"group_expiry": math.inf},
            f"CONFIG['group_expiry'] must be {GROUP_EXPIRY}, not inf (float).",
        ),
        ({"max_message_size": 10}, f"CONFIG['max_message_size'] must be {SIZE}, not 10 (int)."),
        (
            {"max_message_size": 2**30},
            f"CONFIG['max_message_size'] must be {SIZE}, not 1073741824 (int).",
        ),
        (
            {"channel_capacity": {"a*": 0}},
            f"CONFIG['channel_capacity'] must be {PATTERNS}, not {{'a*': 0}} (dict).",
        ),
        (
            {"channel_capacity": {"*": 2**40}},
            f"CONFIG['channel_capacity'] must be {PATTERNS}, not {{'*': 1099511627776}} (dict).",
        ),
        (
            {"channel_capacity": [("a*", 1)]},
            f"CONFIG['channel_capacity'] must be {PATTERNS}, not [('a*', 1)] (list).",
        ),
    ],
)
def test_config_value_of_the_wrong_type_is_refused(config: dict[str, Any], message: str) -> None:
    error = layer_error({"default": {"ENGINE": "memory", "CONFIG": config}})
    assert isinstance(error, InvalidConfigError)
    assert str(error) == f"{WHERE}: {message}"


def test_secret_config_value_is_never_shown() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE=SecretEngine, password=12345678)
    assert str(caught.value) == (
        "EngineChannelLayer: CONFIG['password'] must be a string, not <hidden> (int)."
    )


def test_choice_config_value_lists_the_choices() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE=SecretEngine, region="mars")
    assert str(caught.value) == (
        "EngineChannelLayer: CONFIG['region'] must be one of 'eu', 'us', not 'mars' (str)."
    )


def test_missing_engine_names_the_alias() -> None:
    error = layer_error({"default": {"BACKEND": BACKEND}})
    assert isinstance(error, InvalidEngineError)
    assert str(error) == (
        f"{WHERE}: no ENGINE given. Name one in CONFIG (or next to CONFIG with "
        "'channels_engines' in INSTALLED_APPS); available engines: 'memory', 'postgres', 'redis'."
    )


def test_alias_is_not_confused_with_another_backend_with_the_same_config() -> None:
    layers = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
        "engines": {"BACKEND": BACKEND},
    }
    error = layer_error(layers, alias="engines")
    assert str(error).startswith("CHANNEL_LAYERS['engines']: no ENGINE given.")


def test_backend_and_engine_together_are_refused() -> None:
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "ENGINE": "memory"}}
    with pytest.raises(InvalidEngineError) as caught, override_settings(CHANNEL_LAYERS=layers):
        pass  # the app refuses the settings as they are applied
    assert str(caught.value) == (
        f"{WHERE} has both BACKEND 'channels.layers.InMemoryChannelLayer' and ENGINE 'memory'. "
        "ENGINE selects a channels_engines engine; leave BACKEND out or set it to "
        "'channels_engines.EngineChannelLayer'."
    )
    assert settings.CHANNEL_LAYERS["default"]["ENGINE"] == "memory"


def test_engine_claiming_a_layer_key_is_refused() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        EngineChannelLayer(ENGINE=GreedyEngine)
    assert str(caught.value) == (
        "EngineChannelLayer: ENGINE 'GreedyEngine' declares CONFIG keys the layer owns: capacity."
    )


def test_errors_are_channels_invalid_channel_layer_errors() -> None:
    for error in (InvalidEngineError, InvalidConfigError):
        assert issubclass(error, InvalidChannelLayerError)


# The layer ------------------------------------------------------------------------


def test_repr_shows_no_config_values() -> None:
    layer = EngineChannelLayer(ENGINE=SecretEngine, password="hunter2", capacity=4321)
    assert repr(layer) == "<EngineChannelLayer alias=None engine='SecretEngine'>"
    assert layer.config.options == {"password": Secret("hunter2"), "region": "eu"}


def test_config_holds_validated_values_with_defaults() -> None:
    layer = EngineChannelLayer(ENGINE="memory", expiry=5, group_expiry=0)
    config = layer.config
    assert (config.engine, config.expiry, config.group_expiry) == ("memory", 5.0, None)
    assert (config.capacity, config.max_message_size) == (100, 2 * 1024 * 1024)
    assert layer.group_expiry == 0


def test_message_too_large_says_how_large_and_which_setting() -> None:
    layer = EngineChannelLayer(ENGINE="memory", max_message_size=1024)
    with pytest.raises(MessageTooLarge) as caught:
        run(layer.send("big", {"type": "big", "text": "x" * 2000}))
    assert str(caught.value) == (
        "message for channel 'big' is at least 2,018 bytes encoded; the limit is 1,024 bytes "
        "(CONFIG 'max_message_size')."
    )
    with pytest.raises(MessageTooLarge, match=r"^message for group 'room' is at least 2,018 "):
        run(layer.group_send("room", {"type": "big", "text": "x" * 2000}))


def test_capacity_patterns_first_match_wins() -> None:
    layer = EngineChannelLayer(
        ENGINE="memory",
        capacity=10,
        channel_capacity={
            "http.request": 200,
            re.compile(r"^websocket\.send"): 20,
            "websocket.*": 30,
            "specific.*": 40,
        },
    )
    assert layer.get_capacity("http.request") == 200
    assert layer.get_capacity("http.request.body") == 10  # globs match the whole name
    assert layer.get_capacity("websocket.send") == 20
    assert layer.get_capacity("websocket.send.extra") == 20  # regexes match from the start
    assert layer.get_capacity("websocket.receive") == 30
    assert layer.get_capacity("specific.abc!local") == 40
    assert layer.get_capacity("other") == 10


def test_process_specific_channels_match_patterns_on_their_non_local_part() -> None:
    layer = EngineChannelLayer(ENGINE="memory", channel_capacity={"*!": 2, "*!x": 50})
    assert layer.get_capacity("specific.abc!x") == 2
    assert layer.get_capacity("specific.abc!anything") == 2


def test_channel_capacity_pattern_applies_to_send() -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory", channel_capacity={"small.*": 1})
        await layer.send("small.one", {"type": "x"})
        with pytest.raises(ChannelFull):
            await layer.send("small.one", {"type": "x"})

    run(scenario())


def test_receive_on_another_layers_process_specific_channel_is_refused() -> None:
    async def scenario() -> None:
        mine, other = EngineChannelLayer(ENGINE="memory"), EngineChannelLayer(ENGINE="memory")
        foreign = await other.new_channel()
        with pytest.raises(ValueError, match="another process") as caught:
            await mine.receive(foreign)
        assert str(caught.value) == (
            f"receive(): {foreign!r} is a process-specific channel of another process or "
            "channel layer instance; only the layer that made it with new_channel() can "
            "receive from it."
        )
        own = await mine.new_channel("chat")
        assert own.startswith(f"chat.{mine.client_id}!")
        await mine.send(own, {"type": "mine"})
        assert await mine.receive(own) == {"type": "mine"}

    run(scenario())


def test_new_channel_refuses_a_prefix_that_leaves_no_room() -> None:
    layer = EngineChannelLayer(ENGINE="memory")
    with pytest.raises(TypeError) as caught:
        run(layer.new_channel("p" * 70))
    assert str(caught.value) == (
        f"prefix {'p' * 70!r} is too long: channel names have at most 100 characters and 34 "
        "are needed for the process and local parts."
    )


@pytest.mark.parametrize(
    ("method", "args", "extension"),
    [
        ("group_add", ("room", "chan"), "groups"),
        ("group_discard", ("room", "chan"), "groups"),
        ("group_send", ("room", {"type": "x"}), "groups"),
        ("flush", (), "flush"),
    ],
)
def test_missing_extension_says_which_engine_lacks_it(
    method: str, args: tuple[Any, ...], extension: str
) -> None:
    layer = EngineChannelLayer(ENGINE=f"{__name__}.SendOnlyEngine")
    assert layer.extensions == []
    with pytest.raises(NotImplementedError) as caught:
        run(getattr(layer, method)(*args))
    assert str(caught.value) == (
        f"{method}() is not available: ENGINE 'tests.test_layer.SendOnlyEngine' does not "
        f"provide the {extension!r} extension (it provides: none)."
    )


@pytest.fixture
def default_layer() -> Iterator[EngineChannelLayer]:
    layer = get_channel_layer()
    assert isinstance(layer, EngineChannelLayer)
    yield layer
    run(layer.flush())


def test_stock_get_channel_layer_returns_one_layer_per_alias(
    default_layer: EngineChannelLayer,
) -> None:
    assert get_channel_layer() is default_layer

    async def scenario() -> None:
        channel = await default_layer.new_channel()
        await default_layer.group_add("stock", channel)
        await default_layer.group_send("stock", {"type": "via.stock"})
        assert await default_layer.receive(channel) == {"type": "via.stock"}

    run(scenario())


# Messages that cannot be decoded ---------------------------------------------------


def test_undecodable_messages_are_logged_once_a_minute_without_their_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> str:
        layer = EngineChannelLayer(ENGINE="memory")
        channel = await layer.new_channel()
        await layer.flush()  # starts this loop's engine
        engine = engine_for(layer)
        assert engine is not None
        await engine.send(channel, b"\xc1SECRET-PAYLOAD")
        await engine.send(channel, msgpack.packb(["SECRET"]))
        await layer.send(channel, {"type": "after"})
        assert await layer.receive(channel) == {"type": "after"}
        assert layer.events.get("receive.undecodable") == 2
        return channel

    with caplog.at_level(logging.WARNING, logger="channels_engines"):
        channel = run(scenario())
    assert [record.getMessage() for record in caplog.records] == [
        f"{WHERE}: dropped a message on channel {channel!r} that cannot be "
        "decoded: msgpack cannot decode it (FormatError). 1 dropped so far (layer.events "
        "'receive.undecodable'); this warning repeats at most once a minute."
    ]
    assert "SECRET" not in caplog.text


def test_each_undecodable_message_is_logged_when_the_interval_has_passed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layer_module, "_UNDECODABLE_WARNING_INTERVAL", 0.0)

    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory")
        await layer.flush()  # starts this loop's engine
        engine = engine_for(layer)
        assert engine is not None
        for payload in (b"", msgpack.packb([1]), msgpack.packb({"type": "x"})):
            await engine.send("plain.channel", payload)
        assert await layer.receive("plain.channel") == {"type": "x"}

    with caplog.at_level(logging.WARNING, logger="channels_engines"):
        run(scenario())
    assert [record.getMessage().split(": ", 2)[2] for record in caplog.records] == [
        "msgpack cannot decode it (ValueError). 1 dropped so far (layer.events "
        "'receive.undecodable'); this warning repeats at most once a minute.",
        "it is a msgpack array, not a map. 2 dropped so far (layer.events "
        "'receive.undecodable'); this warning repeats at most once a minute.",
    ]


@pytest.mark.postgres
@pytest.mark.parametrize("specific", [True, False], ids=["process-specific", "normal"])
def test_undecodable_rows_written_to_the_postgres_table_never_reach_the_receiver(
    prefix: str, specific: bool
) -> None:
    """Rows another writer inserted (and announced with NOTIFY) are dropped and counted;
    the waiting receive() goes on to the next real message."""
    from channels_engines.postgres.schema import Tables, listen_identifier
    from tests.support.pgtools import Admin, make_layer, unique
    from tests.support.polling import await_for

    bad = [payload for _, payload in undecodable_payloads()]
    insert = (
        f'INSERT INTO "{prefix}message" (queue, channels, expires_at, payload)'
        " VALUES (%s, %s, now() + interval '1 minute', %s)"
    )

    async def scenario() -> None:
        layer = make_layer(unique("ce_t"), prefix=prefix, max_message_size=1024)
        try:
            channel = await layer.new_channel() if specific else "pg.undecodable"
            queue = non_local_name(channel)
            # A first round trip: the tables exist and the listener listens for the queue.
            waiting = asyncio.ensure_future(layer.receive(channel))
            await layer.send(channel, {"type": "ready"})
            assert await asyncio.wait_for(waiting, 20) == {"type": "ready"}
            waiting = asyncio.ensure_future(layer.receive(channel))
            with Admin() as admin:
                for payload in bad:
                    admin.conn.execute(
                        insert, [queue, [channel], as_stored(layer, channel, payload)]
                    )
                identifier = listen_identifier(Tables(None, prefix, True).namespace, queue)
                admin.conn.execute("SELECT pg_notify(%s, '')", [identifier])
            await await_for(
                lambda: layer.events.get("receive.undecodable") == len(bad) or waiting.done(),
                "the bad rows to be dropped",
            )
            assert not waiting.done(), waiting.result()
            await layer.send(channel, {"type": "after"})
            assert await asyncio.wait_for(waiting, 20) == {"type": "after"}
            assert layer.events.get("receive.undecodable") == len(bad)
            with Admin() as admin:
                # The bad rows were claimed; the last one's row goes with the next
                # deletion of delivered notes.
                await await_for(
                    lambda: admin.table_count(f"{prefix}message") == 0, "the rows to be deleted"
                )
        finally:
            await layer.close()

    run(scenario())


# Settings assigned after construction ---------------------------------------------------


def test_assigned_settings_are_validated_like_config() -> None:
    layer = EngineChannelLayer(ENGINE="memory")
    for name, value, message in [
        ("expiry", 0, f"CONFIG['expiry'] must be {EXPIRY}, not 0 (int)."),
        ("capacity", True, f"CONFIG['capacity'] must be {CAPACITY}, not True (bool)."),
        ("group_expiry", -1, f"CONFIG['group_expiry'] must be {GROUP_EXPIRY}, not -1 (int)."),
        (
            "channel_capacity",
            [("a*", 1)],
            f"CONFIG['channel_capacity'] must be {PATTERNS}, not [('a*', 1)] (list).",
        ),
    ]:
        with pytest.raises(InvalidConfigError) as caught:
            setattr(layer, name, value)
        assert str(caught.value) == f"{layer.config.where}: {message}"
    assert (layer.expiry, layer.capacity, layer.group_expiry) == (60, 100, 86400)
    assert layer.channel_capacity == {}


def test_assigned_settings_reach_the_config_of_existing_and_later_engines() -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory")
        engine = layer._engine()
        layer.expiry = 5
        layer.capacity = 3
        layer.group_expiry = 0
        layer.channel_capacity = {"small.*": 1}
        assert (layer.expiry, layer.capacity, layer.group_expiry) == (5, 3, 0)
        assert layer.channel_capacity == {"small.*": 1}
        for config in (engine.config, layer.config):
            assert (config.expiry, config.capacity, config.group_expiry) == (5.0, 3, None)
            assert config.capacity_for("small.x") == 1
            assert config.capacity_for("big.x") == 3
        await layer.close()
        assert layer._engine().config is layer.config

    run(scenario())


def test_an_expiry_assigned_to_a_running_memory_layer_applies_to_the_next_send() -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory")
        await layer.send("assigned.expiry", {"type": "kept"})
        assert await layer.receive("assigned.expiry") == {"type": "kept"}
        layer.expiry = 0.2
        await layer.send("assigned.expiry", {"type": "expires"})
        await asyncio.sleep(0.6)  # expiry is the behaviour under test
        await layer.send("assigned.expiry", {"type": "sentinel"})
        assert await layer.receive("assigned.expiry") == {"type": "sentinel"}

    run(scenario())


def test_a_capacity_assigned_to_a_running_memory_layer_applies_to_the_next_send() -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory")
        await layer.send("assigned.capacity", {"n": 1})
        layer.capacity = 1
        with pytest.raises(ChannelFull):
            await layer.send("assigned.capacity", {"n": 2})

    run(scenario())


@pytest.mark.postgres
def test_an_expiry_assigned_to_a_running_postgres_layer_is_what_the_server_stores(
    prefix: str,
) -> None:
    """As Channels' own tests do with ``layer.expiry``, here after the engine started."""
    from tests.support.pgtools import Admin, make_layer, unique

    async def scenario() -> None:
        layer = make_layer(unique("ce_t"), prefix=prefix)
        await layer.send("assigned.first", {"type": "started"})
        assert await layer.receive("assigned.first") == {"type": "started"}
        layer.expiry = 1
        try:
            await layer.send("assigned.pg", {"type": "x"})
            with Admin() as admin:
                left = admin.scalar(
                    f'SELECT extract(epoch FROM expires_at - now()) FROM "{prefix}message"'
                )
            assert 0 < left <= 1
        finally:
            await layer.close()

    run(scenario())


@pytest.mark.postgres
def test_a_capacity_assigned_to_a_running_postgres_layer_applies_to_the_next_send(
    prefix: str,
) -> None:
    from tests.support.pgtools import make_layer, unique

    async def scenario() -> None:
        layer = make_layer(unique("ce_t"), prefix=prefix)
        try:
            await layer.send("assigned.pg-capacity", {"n": 1})
            layer.capacity = 1
            with pytest.raises(ChannelFull):
                await layer.send("assigned.pg-capacity", {"n": 2})
        finally:
            await layer.close()

    run(scenario())
