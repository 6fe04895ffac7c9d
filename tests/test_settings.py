"""The ``{"ENGINE": ..., "CONFIG": ...}`` form, rewritten into what Channels reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from channels_engines import EngineChannelLayer, InvalidEngineError
from channels_engines.redaction import HiddenSettings
from channels_engines.settings import LAYER_BACKEND, normalize_channel_layers


def test_top_level_engine_is_moved_into_config_and_test_config() -> None:
    layers = {
        "default": {"ENGINE": "postgres", "CONFIG": {"dsn": "x"}, "TEST_CONFIG": {}},
        "stock": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }
    assert normalize_channel_layers(layers) == {
        "default": {
            "ENGINE": "postgres",
            "BACKEND": LAYER_BACKEND,
            "CONFIG": {"ENGINE": "postgres", "dsn": "x"},
            "TEST_CONFIG": {"ENGINE": "postgres"},
        },
        "stock": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }
    assert layers["default"] == {  # the input is not modified
        "ENGINE": "postgres",
        "CONFIG": {"dsn": "x"},
        "TEST_CONFIG": {},
    }


def test_missing_config_becomes_one_with_only_the_engine() -> None:
    assert normalize_channel_layers({"default": {"ENGINE": "memory"}}) == {
        "default": {"ENGINE": "memory", "BACKEND": LAYER_BACKEND, "CONFIG": {"ENGINE": "memory"}}
    }


def test_test_config_may_name_its_own_engine() -> None:
    layers = {"default": {"ENGINE": "postgres", "TEST_CONFIG": {"ENGINE": "memory"}}}
    result = normalize_channel_layers(layers)
    assert result is not None
    assert result["default"]["TEST_CONFIG"] == {"ENGINE": "memory"}


@pytest.mark.parametrize(
    "layers",
    [
        None,
        "not a dict",
        {},
        {"default": {"BACKEND": LAYER_BACKEND, "CONFIG": HiddenSettings({"ENGINE": "memory"})}},
        {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"x": 1}}},
    ],
)
def test_nothing_to_rewrite_returns_none(layers: Any) -> None:
    assert normalize_channel_layers(layers) is None


def test_the_config_of_this_packages_layers_is_hidden_in_both_forms() -> None:
    layers = {
        "engine": {"ENGINE": "postgres", "CONFIG": {"dsn": "secret"}, "TEST_CONFIG": {}},
        "backend": {
            "BACKEND": LAYER_BACKEND,
            "CONFIG": {"ENGINE": "postgres", "dsn": "secret"},
            "TEST_CONFIG": {"ENGINE": "memory"},
        },
        "stock": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"x": "y"}},
    }
    result = normalize_channel_layers(layers)
    assert result is not None
    for alias in ("engine", "backend"):
        for key in ("CONFIG", "TEST_CONFIG"):
            assert isinstance(result[alias][key], HiddenSettings), (alias, key)
            assert not isinstance(result[alias][key], Mapping)
    assert repr(result["backend"]["CONFIG"]) == "{'ENGINE': 'postgres', 'dsn': <hidden>}"
    assert result["backend"]["CONFIG"] == {"ENGINE": "postgres", "dsn": "secret"}
    assert result["stock"] == layers["stock"]
    assert type(result["stock"]["CONFIG"]) is dict
    assert type(layers["backend"]["CONFIG"]) is dict  # the input is not modified


def test_a_hidden_config_still_builds_the_layer_through_channels() -> None:
    from channels.layers import get_channel_layer
    from django.test import override_settings

    layers = {"default": {"BACKEND": LAYER_BACKEND, "CONFIG": {"ENGINE": "memory", "capacity": 7}}}
    with override_settings(CHANNEL_LAYERS=layers):
        from django.conf import settings

        assert isinstance(settings.CHANNEL_LAYERS["default"]["CONFIG"], HiddenSettings)
        layer = get_channel_layer()
        assert isinstance(layer, EngineChannelLayer)
        assert (layer.alias, layer.capacity) == ("default", 7)


def test_already_rewritten_settings_are_left_alone() -> None:
    once = normalize_channel_layers({"default": {"ENGINE": "memory", "CONFIG": {"capacity": 2}}})
    assert normalize_channel_layers(once) is None


def test_backend_of_this_package_may_be_given_with_engine() -> None:
    for backend in (LAYER_BACKEND, "channels_engines.layer.EngineChannelLayer"):
        result = normalize_channel_layers({"default": {"BACKEND": backend, "ENGINE": "memory"}})
        assert result is not None
        assert result["default"]["BACKEND"] == backend


def test_another_backend_with_engine_is_refused() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        normalize_channel_layers(
            {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "ENGINE": "memory"}}
        )
    assert str(caught.value) == (
        "CHANNEL_LAYERS['default'] has both BACKEND 'channels_redis.core.RedisChannelLayer' and "
        "ENGINE 'memory'. ENGINE selects a channels_engines engine; leave BACKEND out or set "
        "it to 'channels_engines.EngineChannelLayer'."
    )


def test_two_different_engines_are_refused() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        normalize_channel_layers({"main": {"ENGINE": "memory", "CONFIG": {"ENGINE": "postgres"}}})
    assert str(caught.value) == (
        "CHANNEL_LAYERS['main'] names two engines: ENGINE 'memory' and CONFIG['ENGINE'] "
        "'postgres'. Keep one."
    )


def test_config_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(InvalidEngineError) as caught:
        normalize_channel_layers({"default": {"ENGINE": "memory", "CONFIG": ["capacity", 1]}})
    assert str(caught.value) == "CHANNEL_LAYERS['default']['CONFIG'] must be a dict, not list."
