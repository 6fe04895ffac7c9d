"""``manage.py channels_engines``: list, check and flush, against a real PostgreSQL."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from channels_engines import register_engine, unregister_engine
from channels_engines.memory import MemoryEngine
from tests.support.pgtools import Admin, config, make_layer, run


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("channels_engines", *args, stdout=out)
    return out.getvalue()


def layers(app: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "default": {"ENGINE": "postgres", "CONFIG": config(app, prefix=prefix, **extra)},
        "local": {"ENGINE": "memory", "CONFIG": {"hooks": ["prometheus"]}},
        "theirs": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }


def test_list_shows_every_plugin_where_it_comes_from_and_who_uses_it(app: str, prefix: str) -> None:
    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        text = command("list")
        found = json.loads(command("list", "--json"))
    engines = {row["name"]: row for row in found["engines"]}
    assert engines["postgres"]["used_by"] == ["default"]
    assert engines["memory"]["used_by"] == ["local"]
    assert engines["postgres"]["origin"] == "built in"
    assert {row["name"] for row in found["credential_providers"]} >= {"env", "vault", "static"}
    hooks = {row["name"]: row for row in found["hooks"]}
    assert hooks["prometheus"]["used_by"] == ["local"]
    assert hooks["opentelemetry"]["missing"] == []
    lines = text.splitlines()
    assert lines[0] == "Engines:"
    header = lines[1].split()
    assert header == ["name", "origin", "status", "used", "by", "description"]
    assert any(line.startswith("postgres ") and " default " in line for line in lines)
    assert lines[-1].startswith('To use one, name it in CHANNEL_LAYERS: "ENGINE"')


@pytest.mark.postgres
def test_check_makes_a_round_trip_through_each_layer(app: str, prefix: str) -> None:
    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        found = json.loads(command("check", "--json"))
        text = command("check", "--alias", "default")
    assert [(r["alias"], r["engine"], r["ok"]) for r in found] == [
        ("default", "postgres", True),
        ("local", "memory", True),
    ]
    assert all(r["round_trip_ms"] > 0 for r in found)
    assert text.splitlines()[0].split() == ["alias", "engine", "round", "trip", "result"]
    assert text.splitlines()[2].split()[:2] == ["default", "postgres"]
    assert text.splitlines()[2].endswith("ok")


@pytest.mark.postgres
def test_check_fails_with_one_line_and_a_nonzero_exit_when_the_server_is_down(
    app: str, prefix: str
) -> None:
    broken = layers(
        app,
        prefix,
        dsn="postgresql://postgres@127.0.0.1:1/test",
        pool_timeout=1.0,
    )
    with override_settings(CHANNEL_LAYERS=broken), pytest.raises(CommandError) as caught:
        command("check", "--alias", "default")
    assert str(caught.value) == "the round trip failed for default"


def test_check_of_an_unknown_alias_names_the_ones_there_are(app: str, prefix: str) -> None:
    with (
        override_settings(CHANNEL_LAYERS=layers(app, prefix)),
        pytest.raises(CommandError) as caught,
    ):
        command("check", "--alias", "theirs")
    assert str(caught.value) == (
        "CHANNEL_LAYERS has no alias 'theirs' that uses channels_engines (aliases that do: "
        "'default', 'local')"
    )


@pytest.mark.postgres
def test_flush_asks_first_and_empties_the_layer(
    app: str, prefix: str, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def leave_a_message() -> None:
        layer = make_layer(app, prefix=prefix)
        await layer.send("flush.me", {"type": "x"})
        await layer.close()

    run(leave_a_message())
    assert admin.table_count(prefix + "message") == 1
    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        monkeypatch.setattr("builtins.input", lambda prompt: "no")
        with pytest.raises(CommandError, match="flush cancelled: nothing was removed"):
            command("flush")
        assert admin.table_count(prefix + "message") == 1
        assert command("flush", "--yes") == "Flushed CHANNEL_LAYERS['default'].\n"
    assert admin.table_count(prefix + "message") == 0


def test_a_subcommand_is_required() -> None:
    with pytest.raises(CommandError, match="command"):
        call_command("channels_engines")


class MisspelledExtensionEngine(MemoryEngine):
    extensions = ("groups", "flsuh")


def test_list_shows_an_engine_that_breaks_the_contract_as_an_error() -> None:
    # Registered by path, so only loading finds what is wrong with it.
    register_engine("ce_flawed", f"{__name__}.MisspelledExtensionEngine")
    try:
        with override_settings(CHANNEL_LAYERS={}):
            text = command("list")
            found = json.loads(command("list", "--json"))
    finally:
        unregister_engine("ce_flawed")
    row = {row["name"]: row for row in found["engines"]}["ce_flawed"]
    problem = (
        "extensions names the unknown extension 'flsuh' (did you mean 'flush'?); known "
        "extensions: 'flush', 'groups'"
    )
    assert row["problems"] == [problem]
    assert row["error"] is None
    line = next(line for line in text.splitlines() if line.startswith("ce_flawed "))
    assert f" error: breaks the engine contract: {problem} " in line
    assert {row["name"]: row for row in found["engines"]}["memory"]["problems"] == []
