"""Django system checks of CHANNEL_LAYERS: the layer's own validation, reported as
checks with fixed ids, without connecting to anything."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from channels_engines import BaseChannelEngine, Requirement
from channels_engines.checks import check_channel_layers, check_servers
from channels_engines.memory import MemoryEngine
from tests.support.pgtools import config

BACKEND = "channels_engines.EngineChannelLayer"
# Nothing listens there: a check that tried to connect would fail or hang.
NOWHERE = "postgresql://someone@127.0.0.1:1/nothing"


def run_checks(layers: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    with override_settings(CHANNEL_LAYERS=layers):
        return [(m.id or "", m.msg, m.hint) for m in check_channel_layers()]


def test_good_settings_pass() -> None:
    layers = {
        "default": {"ENGINE": "memory"},
        "postgres": {"ENGINE": "postgres", "CONFIG": {"dsn": NOWHERE}},
        "other": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }
    assert run_checks(layers) == []


def test_an_unknown_engine_is_e001_with_the_closest_name() -> None:
    assert run_checks({"default": {"ENGINE": "postgress"}}) == [
        (
            "channels_engines.E001",
            "CHANNEL_LAYERS['default']: unknown ENGINE 'postgress'. Did you mean 'postgres'? "
            "Available engines: 'memory', 'postgres', 'redis'. ENGINE takes a registered name "
            "or the dotted path of a channels_engines.BaseChannelEngine subclass.",
            None,
        )
    ]


class NeedsTurbo(MemoryEngine):
    requires = (Requirement("turbo_not_installed", "turbo-not-installed"),)


class NoReceive(BaseChannelEngine):
    async def send(self, channel: str, message: bytes) -> None:
        raise AssertionError("not reached")


def test_an_engine_that_breaks_the_contract_is_e001_naming_what_is_wrong() -> None:
    assert run_checks({"default": {"ENGINE": "tests.test_checks.NoReceive"}}) == [
        (
            "channels_engines.E001",
            "CHANNEL_LAYERS['default']: ENGINE 'tests.test_checks.NoReceive' breaks the "
            "engine contract: it does not implement receive().",
            None,
        )
    ]


def test_an_engine_whose_package_is_missing_is_e002_with_the_install_command() -> None:
    layers = {"chat": {"ENGINE": "tests.test_checks.NeedsTurbo"}}
    assert run_checks(layers) == [
        (
            "channels_engines.E002",
            "CHANNEL_LAYERS['chat']: ENGINE 'tests.test_checks.NeedsTurbo' needs "
            "turbo-not-installed, which is not installed. Install it with: pip install "
            "'turbo-not-installed'",
            None,
        )
    ]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"capacty": 10},
            "CHANNEL_LAYERS['default']: unknown CONFIG key 'capacty' for ENGINE 'memory'. "
            "Did you mean 'capacity'? Allowed keys: capacity, channel_capacity, "
            "encryption_keys, expiry, group_expiry, hooks, max_message_size.",
        ),
        (
            {"expiry": -1},
            "CHANNEL_LAYERS['default']: CONFIG['expiry'] must be a number > 0 and <= 86400, "
            "not -1 (int).",
        ),
        (
            {"hooks": ["prometheos"]},
            "CHANNEL_LAYERS['default']: CONFIG['hooks'][0]: unknown CONFIG['hooks'] "
            "'prometheos'. Did you mean 'prometheus'? Available hooks: 'opentelemetry', "
            "'prometheus'. CONFIG['hooks'] takes a registered name or the dotted path of a "
            "channels_engines.Hook subclass.",
        ),
    ],
)
def test_bad_config_is_e003_with_the_layers_own_message(
    config: dict[str, Any], message: str
) -> None:
    layers = {"default": {"ENGINE": "memory", "CONFIG": config}}
    assert run_checks(layers) == [("channels_engines.E003", message, None)]


def test_an_unknown_credential_provider_is_e003() -> None:
    layers = {"default": {"ENGINE": "postgres", "CONFIG": {"dsn": NOWHERE, "credentials": "vualt"}}}
    ((check_id, message, _),) = run_checks(layers)
    assert check_id == "channels_engines.E003"
    # A plain string in 'credentials' may be a password: described, never repeated.
    assert "vualt" not in message
    assert "CONFIG['credentials'] is a plain string (hidden)" in message
    assert "Did you mean 'vault'?" in message


class Broken(BaseChannelEngine):
    @classmethod
    def create_shared(cls, config: Any) -> Any:
        raise RuntimeError("a bug of the engine")

    async def send(self, channel: str, message: bytes) -> None:
        raise AssertionError("not reached")

    async def receive(self, channel: str) -> bytes:
        raise AssertionError("not reached")


def test_an_engine_that_cannot_be_built_is_e004() -> None:
    assert run_checks({"default": {"ENGINE": "tests.test_checks.Broken"}}) == [
        (
            "channels_engines.E004",
            "CHANNEL_LAYERS['default']['CONFIG'] could not be checked: building the layer "
            "raised RuntimeError.",
            "Build it in a shell (channels.layers.get_channel_layer()) to see why.",
        )
    ]


def test_test_config_is_checked_too_and_named() -> None:
    layers = {
        "default": {"ENGINE": "memory", "CONFIG": {}, "TEST_CONFIG": {"capacity": 0}},
    }
    ((check_id, message, _),) = run_checks(layers)
    assert check_id == "channels_engines.E003"
    assert message.startswith("CHANNEL_LAYERS['default']['TEST_CONFIG']: ")
    assert "CONFIG['capacity'] must be an integer >= 1" in message


W001 = (
    "the listener connects to port 6432, PgBouncer's default. LISTEN needs a session of its "
    "own; a pooler in transaction or statement mode hands each transaction to any server "
    "connection, so notifications never arrive."
)


def test_a_listener_through_pgbouncers_port_is_w001_unless_listen_dsn_goes_around() -> None:
    through = {"dsn": "postgresql://app:hunter2-secret@127.0.0.1:6432/chat"}
    around = {**through, "listen_dsn": "postgresql://app:hunter2-secret@127.0.0.1:5432/chat"}
    found = run_checks({"default": {"ENGINE": "postgres", "CONFIG": through}})
    assert [(check_id, message) for check_id, message, _ in found] == [
        ("channels_engines.W001", f"CHANNEL_LAYERS['default']['CONFIG']: {W001}")
    ]
    assert "listen_dsn" in (found[0][2] or "")
    assert run_checks({"default": {"ENGINE": "postgres", "CONFIG": around}}) == []


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@override_settings(
    DATABASES={
        "default": {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1"},
        "bouncer": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "pgbouncer.internal",
            "PORT": "6432",
            "OPTIONS": {"sslmode": "verify-full"},
        },
    }
)
def test_a_databases_alias_is_read_from_the_settings() -> None:
    found = run_checks({"default": {"ENGINE": "postgres", "CONFIG": {"database": "bouncer"}}})
    assert [check_id for check_id, _, _ in found] == ["channels_engines.W001"]


@pytest.mark.parametrize(
    ("dsn", "warned"),
    [
        ("postgresql://app:hunter2-secret@db.example.com/chat", True),
        ("postgresql://app:hunter2-secret@db.example.com/chat?sslmode=prefer", True),
        ("postgresql://app:hunter2-secret@db.example.com/chat?sslmode=require", False),
        ("postgresql://app:hunter2-secret@db.example.com/chat?sslmode=verify-full", False),
        ("postgresql://app:hunter2-secret@127.0.0.1/chat", False),
        ("postgresql://app:hunter2-secret@[::1]/chat", False),
        ("host=/var/run/postgresql dbname=chat password=hunter2-secret", False),
    ],
)
def test_unencrypted_connections_to_another_host_are_w002(dsn: str, warned: bool) -> None:
    found = run_checks({"default": {"ENGINE": "postgres", "CONFIG": {"dsn": dsn}}})
    assert [check_id for check_id, _, _ in found] == (["channels_engines.W002"] if warned else [])
    assert all("hunter2" not in f"{message} {hint}" for _, message, hint in found)
    if warned:
        assert "connections to db.example.com:5432 do not require encryption" in found[0][1]


def test_manage_py_check_reports_them() -> None:
    layers = {"default": {"ENGINE": "postgress"}}
    with override_settings(CHANNEL_LAYERS=layers), pytest.raises(SystemCheckError) as caught:
        call_command("check", "--tag", "channels_engines")
    assert "channels_engines.E001" in str(caught.value)


def test_the_check_is_registered_under_its_tag() -> None:
    assert "channels_engines" in checks.registry.registry.tags_available()


def server_checks(layers: dict[str, Any], databases: Any) -> list[tuple[str, str]]:
    with override_settings(CHANNEL_LAYERS=layers):
        return [(m.id or "", m.msg) for m in check_servers(databases=databases)]


def test_checks_that_connect_run_only_when_database_checks_are_asked_for() -> None:
    layers = {"default": {"ENGINE": "postgres", "CONFIG": {"dsn": NOWHERE, "pool_timeout": 1}}}
    assert server_checks(layers, None) == []


@pytest.mark.postgres
def test_a_connection_budget_above_the_server_limit_is_w100(
    app: str, prefix: str, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = int(admin.scalar("SHOW max_connections"))
    monkeypatch.setenv("WEB_CONCURRENCY", str(limit))
    layers = {"default": {"ENGINE": "postgres", "CONFIG": config(app, prefix=prefix)}}
    found = server_checks(layers, ["default"])
    budget = [msg for check_id, msg in found if check_id == "channels_engines.W100"]
    assert len(budget) == 1
    assert budget[0].startswith(
        f"CHANNEL_LAYERS['default']: {limit} worker process(es) x 3 connections = "
        f"{limit * 3}, but only "
    )
    assert {check_id for check_id, _ in found} <= {
        "channels_engines.W100",
        "channels_engines.W101",
    }
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    assert [m for m in server_checks(layers, ["default"]) if m[0] == "channels_engines.W100"] == []


@pytest.mark.postgres
def test_a_server_that_cannot_be_inspected_is_w102() -> None:
    layers = {"default": {"ENGINE": "postgres", "CONFIG": {"dsn": NOWHERE, "pool_timeout": 1}}}
    ((check_id, msg),) = server_checks(layers, ["default"])
    assert check_id == "channels_engines.W102"
    assert msg.startswith("CHANNEL_LAYERS['default']: the server could not be inspected (")
    assert msg.endswith(").")
    assert "\n" not in msg


def test_manage_py_check_database_runs_them(monkeypatch: pytest.MonkeyPatch) -> None:
    layers = {"default": {"ENGINE": "postgres", "CONFIG": {"dsn": NOWHERE, "pool_timeout": 1}}}
    with override_settings(CHANNEL_LAYERS=layers):
        out, err = io.StringIO(), io.StringIO()
        call_command("check", "--database", "default", stdout=out, stderr=err)
        plain = io.StringIO()
        call_command("check", stdout=plain, stderr=io.StringIO())
    assert "channels_engines.W102" in err.getvalue() + out.getvalue()
    assert "channels_engines.W102" not in plain.getvalue()
