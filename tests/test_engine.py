"""The engine contract: requirements, settings given to engines, and the base class."""

from __future__ import annotations

import asyncio
import re

import pytest

from channels_engines import BaseChannelEngine, EngineConfig, Requirement


def make_config(**overrides: object) -> EngineConfig:
    values: dict[str, object] = {
        "alias": "default",
        "engine": "bare",
        "expiry": 60.0,
        "group_expiry": None,
        "capacity": 10,
    }
    return EngineConfig(**{**values, **overrides})  # type: ignore[arg-type]


class BareEngine(BaseChannelEngine):
    """Implements nothing: every required method must say so."""


def test_requirement_knows_whether_its_module_is_installed() -> None:
    assert Requirement("msgpack", "msgpack").installed()
    assert not Requirement("channels_engines_no_such_module", "x").installed()
    assert not Requirement("no_such_parent.child", "x").installed()


def test_install_hint_names_the_extra_or_the_package() -> None:
    assert Requirement("psycopg", "psycopg", extra="postgres").install_hint() == (
        "pip install 'channels-engines[postgres]'"
    )
    assert Requirement("redis", "redis>=5").install_hint() == "pip install 'redis>=5'"


def test_missing_requirements_lists_only_the_missing_ones() -> None:
    missing = Requirement("channels_engines_no_such_module", "gone")

    class Partial(BaseChannelEngine):
        requires = (Requirement("msgpack", "msgpack"), missing)

    assert Partial.missing_requirements() == [missing]
    assert BareEngine.missing_requirements() == []


def test_capacity_for_uses_the_first_matching_pattern_on_the_non_local_part() -> None:
    config = make_config(channel_capacity=((re.compile(r"chat\."), 3), (re.compile(r".*!\Z"), 7)))
    assert config.capacity_for("chat.room") == 3
    assert config.capacity_for("specific.abc!xyz") == 7
    assert config.capacity_for("other") == 10


def test_where_names_the_setting() -> None:
    assert make_config().where == "CHANNEL_LAYERS['default']"
    assert make_config(alias=None).where == "EngineChannelLayer"


def test_owns_only_this_instances_process_specific_channels() -> None:
    engine = BareEngine(make_config(), None, client_id="abc123")
    assert engine.owns("specific.abc123!x")
    assert engine.owns("chat.abc123!")
    assert not engine.owns("specific.other!x")
    assert not engine.owns("specific.abc123")
    assert not engine.owns("xabc123!x")


def test_create_shared_defaults_to_nothing() -> None:
    assert BareEngine.create_shared(make_config()) is None


@pytest.mark.parametrize(
    ("method", "args", "message"),
    [
        ("send", ("c", b""), "BareEngine must implement send()"),
        ("receive", ("c",), "BareEngine must implement receive()"),
        ("group_add", ("g", "c"), "BareEngine must implement group_add() (groups extension)"),
        (
            "group_discard",
            ("g", "c"),
            "BareEngine must implement group_discard() (groups extension)",
        ),
        ("group_send", ("g", b""), "BareEngine must implement group_send() (groups extension)"),
        ("flush", (), "BareEngine must implement flush() (flush extension)"),
    ],
)
def test_unimplemented_methods_name_themselves(
    method: str, args: tuple[object, ...], message: str
) -> None:
    engine = BareEngine(make_config(), None, client_id="abc")
    with pytest.raises(NotImplementedError) as caught:
        asyncio.run(getattr(engine, method)(*args))
    assert str(caught.value) == message


def test_close_is_optional() -> None:
    asyncio.run(BareEngine(make_config(), None, client_id="abc").close())
