"""``manage.py channels_engines``: every subcommand, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from psycopg.conninfo import conninfo_to_dict as psycopg_conninfo

from channels_engines import (
    Hook,
    Requirement,
    register_engine,
    register_hook,
    unregister_engine,
    unregister_hook,
)
from channels_engines.memory import MemoryEngine
from channels_engines.postgres.__main__ import main as postgres_main
from channels_engines.postgres.inspection import vacuum_warnings
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
    postgres = found[0]
    assert postgres["server"].startswith("PostgreSQL ")
    assert postgres["connections"]["per_process"] == 3  # pool_max_size 2 + the listener
    assert postgres["connections"]["workers"] == 1
    assert postgres["connections"]["limit"] > 0
    assert "connections" not in found[1]  # the memory engine has no server
    lines = text.splitlines()
    assert lines[0].split() == [
        "alias",
        "engine",
        "round",
        "trip",
        "server",
        "connections",
        "result",
    ]
    assert lines[2].split()[:2] == ["default", "postgres"]
    assert " 1 x 3 = 3 of " in lines[2]
    assert lines[2].endswith("ok")


@pytest.mark.postgres
def test_check_warns_when_the_workers_need_more_connections_than_the_server_has(
    app: str, prefix: str, admin: Admin
) -> None:
    limit = int(admin.scalar("SHOW max_connections"))
    workers = limit  # 3 connections each: three times what any server allows
    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        out, err = io.StringIO(), io.StringIO()
        call_command(
            "channels_engines",
            "check",
            "--alias",
            "default",
            "--workers",
            str(workers),
            stdout=out,
            stderr=err,
        )
        found = json.loads(command("check", "--alias", "default", "--json", "--workers", "2"))
    budget = [line for line in err.getvalue().splitlines() if "worker process(es)" in line]
    assert len(budget) == 1
    assert budget[0].startswith(
        f"Warning: CHANNEL_LAYERS['default']: {workers} worker process(es) x 3 connections = "
        f"{workers * 3}, but only "
    )
    assert budget[0].endswith("Lower 'pool_max_size', run fewer workers, or raise max_connections.")
    assert found[0]["connections"]["needed"] == 6
    assert not any("worker process(es)" in w for w in found[0]["warnings"])


def test_check_takes_the_workers_from_web_concurrency_and_refuses_nonsense(
    app: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "four")
    with (
        override_settings(CHANNEL_LAYERS=layers(app, prefix)),
        pytest.raises(CommandError) as caught,
    ):
        command("check", "--alias", "local")
    assert str(caught.value) == (
        "WEB_CONCURRENCY='four' is not a whole number of worker processes; unset it or "
        "pass --workers."
    )
    with pytest.raises(CommandError, match="'0' is not a whole number of at least 1"):
        command("check", "--workers", "0")


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


def open_layer_with_traffic(app: str, prefix: str) -> Any:
    """A layer left open with a member in a group, a process-specific member, and
    messages waiting on two queues (3 and 1)."""

    async def fill() -> Any:
        layer = make_layer(app, prefix=prefix)
        own = await layer.new_channel()
        await layer.group_add("room", "shared.member")
        await layer.group_add("room", own)
        await layer.group_add("lobby", "shared.member")
        for _ in range(3):
            await layer.send("queue.one", {"type": "x"})
        await layer.send("queue.two", {"type": "x"})
        return layer

    return fill()


@pytest.mark.postgres
def test_stats_shows_queues_groups_sessions_and_tables(app: str, prefix: str) -> None:
    async def scenario() -> tuple[str, Any]:
        layer = await open_layer_with_traffic(app, prefix)
        try:
            with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
                text = await asyncio.to_thread(command, "stats", "--alias", "default")
                found = await asyncio.to_thread(command, "stats", "--alias", "default", "--json")
        finally:
            await layer.close()
        return text, json.loads(found)

    text, found = run(scenario())
    (report,) = found
    tables = report["tables"]
    assert report["alias"] == "default"
    assert tables["Summary"] == [
        {
            "messages waiting": 4,
            "queues": 2,
            "oldest (s)": tables["Summary"][0]["oldest (s)"],
            "expired": 0,
            "groups": 2,
            "members": 3,
        }
    ]
    assert 0 <= tables["Summary"][0]["oldest (s)"] < 60
    queues = tables["Queues (the 20 with most messages waiting)"]
    assert [(q["queue"], q["waiting"]) for q in queues] == [("queue.one", 3), ("queue.two", 1)]
    groups = tables["Groups (the 20 with most members)"]
    assert [(g["group"], g["members"], g["in processes"]) for g in groups] == [
        ("room", 2, 1),
        ("lobby", 1, 0),
    ]
    sessions = tables["Sessions in this database"]
    ours = [s for s in sessions if s["application_name"] == app]
    assert ours
    assert all(s["this layer"] == "yes" for s in ours)
    assert sum(s["sessions"] for s in ours) >= 1  # the open layer's pool
    assert [t["table"] for t in tables["Tables"]] == [
        prefix + name for name in ("message", "group_member", "claimed", "group_stream", "control")
    ]
    lines = text.splitlines()
    assert lines[0] == "CHANNEL_LAYERS['default']"
    assert "Queues (the 20 with most messages waiting):" in lines
    start = lines.index("Queues (the 20 with most messages waiting):")
    assert lines[start + 1].split() == [
        "queue",
        "waiting",
        "oldest",
        "(s)",
        "next",
        "expiry",
        "in",
        "(s)",
    ]
    assert lines[start + 3].split()[:2] == ["queue.one", "3"]


@pytest.mark.postgres
def test_stats_warns_when_autovacuum_cannot_remove_the_dead_rows(
    app: str, prefix: str, admin: Admin
) -> None:
    run(make_layer(app, prefix=prefix).flush())  # creates the tables
    message = prefix + "message"
    admin.conn.execute(f'ALTER TABLE "{message}" SET (autovacuum_enabled = off)')
    admin.conn.execute(
        f'INSERT INTO "{message}" (queue, channels, expires_at, payload)'
        " SELECT 'q', ARRAY['q'], now() + interval '1 minute', '' FROM generate_series(1, 2500)"
    )
    admin.conn.execute(f'DELETE FROM "{message}"')
    admin.scalar("SELECT pg_stat_force_next_flush()")
    admin.scalar("SELECT 1")  # the flush happens as this session goes idle
    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        err = io.StringIO()
        out = io.StringIO()
        call_command("channels_engines", "stats", "--alias", "default", stdout=out, stderr=err)
        found = json.loads(command("stats", "--alias", "default", "--json"))
    tables = {t["table"]: t for t in found[0]["tables"]["Tables"]}
    assert tables[message]["dead rows"] == 2500
    warning = (
        f"autovacuum is off for table {message} (autovacuum_enabled = off): its dead rows "
        f"(2500 now) are never removed. Run ALTER TABLE {message} RESET (autovacuum_enabled)."
    )
    assert warning in found[0]["warnings"]
    assert f"Warning: CHANNEL_LAYERS['default']: {warning}" in err.getvalue().splitlines()


def test_vacuum_warnings_tell_off_from_behind() -> None:
    # (name, size, live, dead, last vacuum, last autovacuum, enabled, threshold, seconds since)
    keeping_up = ("t_message", 0, 0, 900, None, None, True, 1000.0, None)
    behind = ("t_claimed", 0, 5, 10_001, None, None, True, 1000.0, 3600.0)
    busy_but_visited = ("t_member", 0, 5, 50_000, None, None, True, 1000.0, 30.0)
    assert vacuum_warnings("on", "on", [keeping_up, busy_but_visited]) == []
    assert vacuum_warnings("on", "on", [behind]) == [
        "autovacuum is not keeping up with table t_claimed: 10001 dead rows beside 5 live "
        "ones, last vacuumed 60 min ago. Check for long transactions "
        "(pg_stat_activity.xact_start) and idle-in-transaction sessions, which keep dead "
        "rows from being removed; raise autovacuum_max_workers or lower "
        "autovacuum_vacuum_cost_delay if the workers are busy elsewhere."
    ]
    assert vacuum_warnings("off", "on", []) == [
        "autovacuum is off on the server: nothing removes the dead rows the layer's tables "
        "leave behind (every message leaves one), so they grow without bound. Turn "
        "autovacuum on, or run VACUUM on the tables every minute or so."
    ]
    assert vacuum_warnings("on", "off", [])[0].startswith("track_counts is off on the server")


def test_stats_of_an_engine_without_a_server_says_so(app: str, prefix: str) -> None:
    with (
        override_settings(CHANNEL_LAYERS=layers(app, prefix)),
        pytest.raises(CommandError) as caught,
    ):
        command("stats", "--alias", "local")
    assert str(caught.value) == (
        "stats is not available for CHANNEL_LAYERS['local']: its ENGINE 'memory' keeps no "
        "state outside the process."
    )


@pytest.mark.postgres
def test_stats_before_the_tables_exist_says_how_they_are_made(app: str, prefix: str) -> None:
    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        found = json.loads(command("stats", "--alias", "default", "--json"))
    assert found[0]["tables"] == {}
    assert found[0]["warnings"] == [
        f'the tables "{prefix}message" and "{prefix}group_member" do not exist yet: they are '
        "created at first use, by `manage.py migrate channels_engines`, or by `manage.py "
        "channels_engines schema --apply`."
    ]


@pytest.mark.postgres
def test_purge_expired_deletes_expired_messages_and_their_channels_memberships(
    app: str, prefix: str, admin: Admin
) -> None:
    async def fill() -> None:
        layer = make_layer(app, prefix=prefix)
        await layer.group_add("room", "gone.reader")
        await layer.group_add("room", "live.reader")
        await layer.send("gone.reader", {"type": "x"})
        await layer.send("gone.reader", {"type": "y"})
        await layer.send("live.reader", {"type": "z"})
        await layer.close()

    run(fill())
    message = prefix + "message"
    admin.conn.execute(
        f"UPDATE \"{message}\" SET expires_at = now() - interval '1 second'"
        " WHERE channels = ARRAY['gone.reader']"
    )
    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        text = command("purge-expired")
        again = json.loads(command("purge-expired", "--json"))
    assert text == (
        "Removed from CHANNEL_LAYERS['default']: 2 messages, 1 memberships, 0 claim records, "
        "0 idle group streams.\n"
    )
    assert again == {
        "alias": "default",
        "removed": {
            "messages": 0,
            "memberships": 0,
            "claim records": 0,
            "idle group streams": 0,
        },
        "skipped": False,
    }
    assert admin.table_count(message) == 1
    assert admin.rows(f'SELECT channel FROM "{prefix}group_member"') == [("live.reader",)]


@pytest.mark.postgres
def test_purge_expired_leaves_the_work_to_a_process_already_doing_it(
    app: str, prefix: str, admin: Admin
) -> None:
    run(make_layer(app, prefix=prefix).flush())
    layer = make_layer(app, prefix=prefix)
    lock = engine_statements(layer).cleanup_lock
    with Admin() as holder:
        holder.conn.execute("BEGIN")
        holder.scalar("SELECT pg_advisory_xact_lock(%s)", [lock])
        with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
            text = command("purge-expired")
        holder.conn.execute("ROLLBACK")
    assert text == (
        "Another process is deleting the expired rows of CHANNEL_LAYERS['default'] right "
        "now; nothing was done here.\n"
    )


def engine_statements(layer: Any) -> Any:
    return layer._shared.statements


@pytest.mark.postgres
def test_schema_prints_the_script_of_the_configured_tables(app: str, prefix: str) -> None:
    with override_settings(CHANNEL_LAYERS=layers(app, prefix, schema="ce_ops")):
        script = command("schema", "--grant", "runtime_role")
    expected = io.StringIO()
    with contextlib.redirect_stdout(expected):
        postgres_main(
            ["schema", "--schema", "ce_ops", "--table-prefix", prefix, "--grant", "runtime_role"]
        )
    assert script == expected.getvalue()
    assert script.startswith('BEGIN;\nCREATE SCHEMA IF NOT EXISTS "ce_ops";\n')
    assert f'GRANT USAGE ON SEQUENCE "ce_ops"."{prefix}message_id_seq" TO "runtime_role";' in script


@pytest.mark.postgres
def test_schema_apply_lets_a_role_without_ddl_rights_use_the_layer(
    outsider: str, app: str, prefix: str, admin: Admin
) -> None:
    role = admin.scalar("SELECT %s::text", [psycopg_conninfo(outsider)["user"]])
    with override_settings(CHANNEL_LAYERS=layers(app, prefix)):
        text = command("schema", "--apply", "--grant", role)
    assert text == (
        f"The tables of CHANNEL_LAYERS['default'] are up to date, and granted {role!r} its "
        "rights.\n"
    )

    async def use_it_as_the_role() -> Any:
        layer = make_layer(app, prefix=prefix, dsn=outsider, create_tables=False)
        try:
            channel = await layer.new_channel()
            await layer.group_add("room", channel)
            await layer.group_send("room", {"type": "hello"})
            return await asyncio.wait_for(layer.receive(channel), 10)
        finally:
            await layer.close()

    assert run(use_it_as_the_role()) == {"type": "hello"}


def test_schema_refuses_a_role_name_that_config_would_refuse(app: str, prefix: str) -> None:
    with (
        override_settings(CHANNEL_LAYERS=layers(app, prefix)),
        pytest.raises(CommandError) as caught,
    ):
        command("schema", "--grant", 'app"; DROP TABLE x; --')
    assert str(caught.value).startswith(
        "--grant 'app\"; DROP TABLE x; --' is not allowed: use a lower-case SQL identifier"
    )


@pytest.mark.postgres
def test_a_server_that_cannot_be_reached_fails_stats_with_one_line(app: str, prefix: str) -> None:
    broken = layers(app, prefix, dsn="postgresql://postgres@127.0.0.1:1/test", pool_timeout=1.0)
    with override_settings(CHANNEL_LAYERS=broken), pytest.raises(CommandError) as caught:
        command("stats", "--alias", "default")
    assert str(caught.value).startswith("stats of 'default' failed: OperationalError: ")
    assert "\n" not in str(caught.value)


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


class NeedsTurboHook(Hook):
    """A third party's hook whose extra belongs to its own package."""

    requires = (Requirement("turbo_not_installed", "turbo-not-installed", "turbo"),)


def test_list_names_the_right_package_for_a_third_party_hooks_extra() -> None:
    register_hook("needs_turbo", NeedsTurboHook)
    try:
        found = json.loads(command("list", "--json"))
    finally:
        unregister_hook("needs_turbo")
    (row,) = [row for row in found["hooks"] if row["name"] == "needs_turbo"]
    # tests/ belongs to no installed distribution: the extra cannot be named, so the
    # hint installs the package itself, never channels-engines[turbo].
    assert row["missing"] == ["pip install 'turbo-not-installed'"]
