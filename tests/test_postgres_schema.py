"""Tables of the PostgreSQL engine: the Django migration, the SQL script, least privileges."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import random
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from hypothesis import given, settings
from hypothesis import strategies as st

from channels_engines import EngineChannelLayer, InvalidConfigError
from channels_engines.layer_options import MAX_EXPIRY, MAX_GROUP_EXPIRY
from channels_engines.postgres.schema import Statements, Tables, listen_identifier
from tests.support.pgtools import (
    REPO,
    Admin,
    Child,
    config,
    dropped_afterwards,
    make_layer,
    run,
    server_dsn,
    unique,
)

pytestmark = pytest.mark.postgres

initial = importlib.import_module("channels_engines.migrations.0001_initial")
second = importlib.import_module("channels_engines.migrations.0002_second_layout")
third = importlib.import_module("channels_engines.migrations.0003_group_streams")


def _tables_exist(prefix: str = "channels_engines_") -> bool:
    with psycopg.connect(server_dsn()) as conn:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
            [f"{prefix}message", f"{prefix}group_member"],
        ).fetchone()
    return bool(row and row[0])


def test_migration_sql_is_what_the_engine_creates() -> None:
    tables = Tables(None, "channels_engines_", True)
    assert [s.as_string(None) for s in tables.first_layout()] == list(initial.CREATE)
    assert [s.as_string(None) for s in tables.second_layout()] == list(second.UPGRADE)
    assert [s.as_string(None) for s in tables.third_layout()] == list(third.UPGRADE)


def test_migrate_creates_and_unapplies_the_tables() -> None:
    call_command("migrate", "channels_engines", verbosity=0)
    call_command("migrate", "channels_engines", "zero", verbosity=0)
    assert not _tables_exist()
    call_command("migrate", "channels_engines", verbosity=0)
    assert _tables_exist()


def test_sqlmigrate_prints_the_statements(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("sqlmigrate", "channels_engines", "0001")
    printed = capsys.readouterr().out
    assert 'CREATE UNLOGGED TABLE IF NOT EXISTS "channels_engines_message"' in printed
    assert connection.vendor == "postgresql"


def test_schema_command_prints_ddl_and_grants() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "channels_engines.postgres",
            "schema",
            "--schema",
            "layer",
            "--table-prefix",
            "chat_",
            "--logged",
            "--grant",
            "app",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert 'CREATE TABLE IF NOT EXISTS "layer"."chat_message"' in result.stdout
    assert "UNLOGGED" not in result.stdout
    assert (
        'GRANT SELECT, INSERT, UPDATE, DELETE ON "layer"."chat_message", '
        '"layer"."chat_group_member", "layer"."chat_claimed", "layer"."chat_group_stream" '
        'TO "app";' in result.stdout
    )
    assert 'GRANT SELECT, UPDATE ON "layer"."chat_control" TO "app";' in result.stdout
    assert 'GRANT USAGE ON SEQUENCE "layer"."chat_message_id_seq" TO "app";' in result.stdout


def test_runtime_role_with_only_the_documented_grants_runs_everything() -> None:
    """DML on the two tables and the sequence is all a runtime role needs (no DDL)."""
    role = f"ce_app_{uuid.uuid4().hex[:8]}"
    prefix = f"lp{uuid.uuid4().hex[:6]}_"
    tables = Tables(None, prefix, True)
    with psycopg.connect(server_dsn(), autocommit=True) as admin:
        for statement in tables.create_statements():
            admin.execute(statement)
        admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw'")
        dbname = admin.info.dbname
        admin.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{role}"')
        admin.execute(tables.grant_script(role))
        admin.execute(f'REVOKE CREATE ON SCHEMA public FROM "{role}"')
    try:
        params = psycopg.conninfo.conninfo_to_dict(server_dsn())
        layer = EngineChannelLayer(
            ENGINE="postgres",
            connection={**params, "user": role, "password": "pw"},
            table_prefix=prefix,
            create_tables=False,
        )

        async def scenario() -> None:
            channel = await layer.new_channel()
            await layer.group_add("room", channel)
            await layer.send(channel, {"type": "direct"})
            await layer.group_send("room", {"type": "group"})
            assert await layer.receive(channel) == {"type": "direct"}
            assert await layer.receive(channel) == {"type": "group"}
            await layer.group_discard("room", channel)
            await layer.flush()
            await layer.close()

        asyncio.run(scenario())
    finally:
        with psycopg.connect(server_dsn(), autocommit=True) as admin:
            admin.execute(
                f'DROP TABLE IF EXISTS "{prefix}message", "{prefix}group_member",'
                f' "{prefix}claimed", "{prefix}control"'
            )
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def test_missing_tables_without_create_tables_is_a_clear_error() -> None:
    prefix = f"none{uuid.uuid4().hex[:6]}_"
    layer = EngineChannelLayer(
        ENGINE="postgres", dsn=server_dsn(), table_prefix=prefix, create_tables=False
    )

    async def scenario() -> None:
        try:
            await layer.send("anything", {"type": "x"})
        finally:
            await layer.close()

    with pytest.raises(InvalidConfigError) as raised:
        asyncio.run(scenario())
    assert str(raised.value) == (
        f'EngineChannelLayer: the tables "{prefix}message" and "{prefix}group_member" do not '
        "exist and CONFIG['create_tables'] is False. Run `manage.py migrate channels_engines`, "
        "or apply the SQL from `python -m channels_engines.postgres schema`."
    )


SCHEMA_COMMAND = [sys.executable, "-m", "channels_engines.postgres", "schema"]


def schema_script(*options: str) -> str:
    result = subprocess.run(
        [*SCHEMA_COMMAND, *options], check=True, capture_output=True, text=True, timeout=60
    )
    return result.stdout


def apply_with_psql(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``psql -f`` as a DBA would run it: without ON_ERROR_STOP, going on after errors."""
    path = tmp_path / "schema.sql"
    path.write_text(script)
    return subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", server_dsn(), "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("option", "key", "value"),
    [
        ("--table-prefix", "table_prefix", "p" * 70),
        ("--table-prefix", "table_prefix", "p" * 41),
        ("--table-prefix", "table_prefix", "Chat_"),
        ("--schema", "schema", "x; DROP TABLE y"),
        ("--schema", "schema", ""),
    ],
)
def test_schema_command_refuses_what_config_refuses(option: str, key: str, value: str) -> None:
    result = subprocess.run(
        [*SCHEMA_COMMAND, option, value], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        f"python -m channels_engines.postgres schema: error: argument {option}: {value!r} is "
        "not allowed: use a lower-case SQL identifier of at most 40 characters "
        f"([a-z_][a-z0-9_]*), as for CONFIG {key!r}."
    )


def test_script_for_the_longest_prefix_creates_every_table(tmp_path: Path, admin: Admin) -> None:
    prefix = f"l{uuid.uuid4().hex[:8]}_" + "p" * 30
    assert len(prefix) == 40
    with dropped_afterwards(prefix):
        result = apply_with_psql(schema_script("--table-prefix", prefix), tmp_path)
        assert result.stderr == ""
        assert admin.tables(prefix + "%") == [
            ("public", prefix + "claimed"),
            ("public", prefix + "control"),
            ("public", prefix + "group_member"),
            ("public", prefix + "group_stream"),
            ("public", prefix + "message"),
        ]


def test_script_is_applied_whole_or_not_at_all(tmp_path: Path, prefix: str, admin: Admin) -> None:
    """An object in the way of a later statement leaves nothing behind, not half the tables."""
    script = schema_script("--table-prefix", prefix)
    assert script.startswith("BEGIN;\n")
    assert script.endswith("COMMIT;\n")
    admin.conn.execute(f'CREATE VIEW "{prefix}group_member" AS SELECT 1 AS x')
    try:
        result = apply_with_psql(script, tmp_path)
        assert "ERROR:" in result.stderr
        assert admin.tables(prefix + "%") == [("public", prefix + "group_member")]  # the view
    finally:
        admin.conn.execute(f'DROP VIEW "{prefix}group_member"')
    result = apply_with_psql(script, tmp_path)
    assert result.stderr == ""
    assert admin.tables(prefix + "%") == [
        ("public", prefix + "claimed"),
        ("public", prefix + "control"),
        ("public", prefix + "group_member"),
        ("public", prefix + "group_stream"),
        ("public", prefix + "message"),
    ]


def test_tables_are_created_at_first_use_and_creation_is_idempotent(
    app: str, prefix: str, admin: Admin
) -> None:
    assert admin.tables(prefix + "%") == []

    async def scenario() -> None:
        first = make_layer(app, prefix=prefix)
        await first.send("tables.kept", {"type": "kept"})
        await first.close()
        assert [name for _, name in admin.tables(prefix + "%")] == [
            prefix + "claimed",
            prefix + "control",
            prefix + "group_member",
            prefix + "group_stream",
            prefix + "message",
        ]
        # The DDL itself runs again harmlessly, and a new process' layer starts on it.
        for statement in Statements(Tables(None, prefix, True)).create:
            admin.conn.execute(statement)
        second = make_layer(unique("ce_t"), prefix=prefix)
        assert await asyncio.wait_for(second.receive("tables.kept"), 10) == {"type": "kept"}
        await second.close()

    run(scenario())
    assert len(admin.tables(prefix + "%")) == 5


def test_eight_processes_create_the_tables_at_the_same_instant(admin: Admin) -> None:
    schema = unique("ce_s")
    prefix = unique("ce_t") + "_"
    with dropped_afterwards(prefix, schema):
        layer_config = config(unique("ce_t"), prefix=prefix, schema=schema)
        children = [
            Child({"job": "create", "config": layer_config, "channel": f"create.{index}"})
            for index in range(8)
        ]
        try:
            for child in children:
                child.expect("ready")
            for child in children:
                child.tell()
            results = [child.expect("done")["error"] for child in children]
            codes = [child.finish() for child in children]
        finally:
            for child in children:
                child.kill()
        assert results == [None] * 8
        assert codes == [0] * 8
        assert admin.tables(prefix + "%") == [
            (schema, prefix + "claimed"),
            (schema, prefix + "control"),
            (schema, prefix + "group_member"),
            (schema, prefix + "group_stream"),
            (schema, prefix + "message"),
        ]
        assert admin.table_count(prefix + "message", schema) == 8


def test_missing_tables_with_create_tables_false_name_the_tables_and_the_fix(
    app: str, prefix: str, admin: Admin
) -> None:
    schema = unique("ce_s")

    async def scenario() -> None:
        layer = make_layer(app, prefix=prefix, create_tables=False)
        with pytest.raises(InvalidConfigError) as raised:
            await layer.send("missing.tables", {"type": "x"})
        assert str(raised.value) == (
            f'EngineChannelLayer: the tables "{prefix}message" and "{prefix}group_member" '
            "do not exist and CONFIG['create_tables'] is False. Run `manage.py migrate "
            "channels_engines`, or apply the SQL from `python -m channels_engines.postgres "
            "schema`."
        )
        in_schema = make_layer(app, prefix=prefix, schema=schema, create_tables=False)
        with pytest.raises(
            InvalidConfigError,
            match=re.escape(
                f'the tables "{schema}"."{prefix}message" and "{schema}"."{prefix}group_member" '
                "do not exist"
            ),
        ):
            await in_schema.group_add("missing", "missing.tables")
        await layer.close()
        await in_schema.close()

    run(scenario())
    assert admin.tables(prefix + "%") == []
    assert admin.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]) == 0


def test_the_schema_command_the_error_advises_creates_tables_a_layer_can_use(
    app: str, admin: Admin
) -> None:
    schema = unique("ce_s")
    prefix = unique("ce_p") + "_"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "channels_engines.postgres",
            "schema",
            "--schema",
            schema,
            "--table-prefix",
            prefix,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with dropped_afterwards(prefix, schema):
        admin.conn.execute(result.stdout.encode())
        assert admin.tables(prefix + "%") == [
            (schema, prefix + "claimed"),
            (schema, prefix + "control"),
            (schema, prefix + "group_member"),
            (schema, prefix + "group_stream"),
            (schema, prefix + "message"),
        ]

        async def scenario() -> None:
            layer = make_layer(app, prefix=prefix, schema=schema, create_tables=False)
            await layer.group_add("advised", "advised.channel")
            await layer.group_send("advised", {"type": "advised"})
            assert await asyncio.wait_for(layer.receive("advised.channel"), 10) == {
                "type": "advised"
            }
            await layer.close()

        run(scenario())
    assert importlib.util.find_spec("channels_engines.migrations") is not None


def test_schema_and_table_prefix_options_place_the_tables(app: str, admin: Admin) -> None:
    schema = unique("ce_s")
    prefix = unique("ce_p") + "_"
    with dropped_afterwards(prefix, schema):

        async def scenario() -> None:
            layer = make_layer(app, prefix=prefix, schema=schema)
            await layer.group_add("placed", "placed.channel")
            await layer.group_send("placed", {"type": "placed"})
            assert admin.tables(prefix + "%") == [
                (schema, prefix + "claimed"),
                (schema, prefix + "control"),
                (schema, prefix + "group_member"),
                (schema, prefix + "group_stream"),
                (schema, prefix + "message"),
            ]
            assert admin.table_count(prefix + "message", schema) == 1
            assert admin.table_count(prefix + "group_member", schema) == 1
            assert await asyncio.wait_for(layer.receive("placed.channel"), 10) == {"type": "placed"}
            await layer.close()

        run(scenario())


def test_the_largest_numbers_the_settings_allow_work_in_sql(app: str, prefix: str) -> None:
    """Every bound is one the server accepts: capacities fit its integer, expiries its
    intervals and timestamps."""

    async def scenario() -> None:
        layer = make_layer(
            app,
            prefix=prefix,
            capacity=2**31 - 1,
            channel_capacity={"big.*": 2**31 - 1},
            expiry=MAX_EXPIRY,
            group_expiry=MAX_GROUP_EXPIRY,
            pool_timeout=86400,
        )
        try:
            channel = await layer.new_channel()
            await layer.group_add("largest", channel)
            await layer.group_add("largest", "big.channel")
            await layer.send(channel, {"type": "direct"})
            await layer.group_send("largest", {"type": "group"})
            assert await layer.receive(channel) == {"type": "direct"}
            assert await layer.receive(channel) == {"type": "group"}
            assert await layer.receive("big.channel") == {"type": "group"}
        finally:
            await layer.close()

    run(scenario())


IDENTIFIER = re.compile(r"ce_[0-9a-f]{32}", re.ASCII)


@settings(max_examples=500, database=None)
@given(namespace=st.text(max_size=200), queue=st.text(max_size=300))
def test_listen_identifier_is_always_ce_and_32_hex_digits(namespace: str, queue: str) -> None:
    identifier = listen_identifier(namespace, queue)
    assert IDENTIFIER.fullmatch(identifier)
    assert len(identifier.encode()) == 35 < 64
    assert identifier == listen_identifier(namespace, queue)


@settings(max_examples=300, database=None)
@given(
    queue=st.from_regex(r"\A[a-zA-Z0-9._-]{1,90}!?\Z"),
    namespaces=st.tuples(st.text(max_size=50), st.text(max_size=50)).filter(lambda t: t[0] != t[1]),
)
def test_listen_identifiers_differ_between_layers_on_other_tables(
    queue: str, namespaces: tuple[str, str]
) -> None:
    assert listen_identifier(namespaces[0], queue) != listen_identifier(namespaces[1], queue)


def test_listen_identifiers_of_100_000_distinct_queues_are_distinct() -> None:
    rng = random.Random(11)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
    queues: set[str] = set()
    while len(queues) < 100_000:
        name = "".join(rng.choices(alphabet, k=rng.randint(1, 99)))
        queues.add(name + "!" if rng.random() < 0.5 and len(name) < 99 else name)
    identifiers = {listen_identifier(".channels_engines_", queue) for queue in queues}
    assert len(identifiers) == 100_000
    assert all(IDENTIFIER.fullmatch(identifier) for identifier in identifiers)


def test_queries_of_the_listener_session_are_not_jit_compiled(app: str, prefix: str) -> None:
    """The listener session disables plan types, which costs each plan 1e10 to the
    planner: far above jit_above_cost, so every claim would be compiled (a tenth of a
    second or more, during which its queue's senders fill it up)."""

    create_tables(app, prefix)
    statements = Statements(Tables(None, prefix, True))
    with psycopg.connect(server_dsn(), autocommit=True) as conn:
        conn.execute(statements.listener_session)
        for statement, parameters in [
            (statements.flush_epoch, None),
            (
                statements.catch_up,
                {
                    "queues": ["q!"],
                    "limits": [10],
                    "streams": ["#g"],
                    "after": [0],
                    "stream_limit": 10,
                    "idle_ms": "1000",
                    "max_size": 100,
                },
            ),
        ]:
            with conn.transaction(force_rollback=True):
                row = conn.execute(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
                ).fetchone()
            assert row is not None
            plan = row[0][0]
            if conn.info.server_version < 180000:
                # Before PostgreSQL 18, a disabled plan type adds 1e10 to the cost.
                assert plan["Plan"]["Total Cost"] >= 1e10
            assert "JIT" not in plan, plan["JIT"]


def test_deleting_delivered_rows_reads_only_the_own_queues(app: str, prefix: str) -> None:
    """With the plan a prepared statement ends up with (generic), the deletion of
    delivered notes' rows looks up the process's own queues in the (queue, id) index,
    never the whole table (whose other rows may be many)."""

    create_tables(app, prefix)
    statements = Statements(Tables(None, prefix, True))
    with psycopg.connect(server_dsn(), autocommit=True) as conn:
        conn.execute(statements.listener_session)
        conn.execute("SET plan_cache_mode = force_generic_plan")
        parameters = {"queues": ["q.1!"], "senders": [7, 7], "seqs": [1, 2]}
        with conn.transaction(force_rollback=True):
            rows = conn.execute(f"EXPLAIN {statements.reap}", parameters).fetchall()
    plan = "\n".join(row[0] for row in rows)
    assert "Index Cond: (queue = ANY (" in plan, plan


def create_tables(app: str, prefix: str) -> None:
    """The layer's tables, made the way the layer makes them."""

    async def create() -> None:
        layer = make_layer(app, prefix=prefix)
        await layer.flush()
        await layer.close()

    run(create())
