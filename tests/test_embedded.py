"""Tests for channels_engines.postgres.embedded (also importable as channels_engines.embedded)."""

from __future__ import annotations

import glob
import os
import pwd
import re
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped]
import psycopg
import pytest

from channels_engines.postgres import embedded
from channels_engines.postgres.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
}


@pytest.fixture(scope="module")
def shared() -> Iterator[EmbeddedPostgres]:
    """One server for the tests that only read from it or create uniquely named things."""
    with EmbeddedPostgres(settings={"idle_session_timeout": "2s", "log_statement": "all"}) as pg:
        yield pg


def server_processes(pg: EmbeddedPostgres) -> list[psutil.Process]:
    assert pg.pid is not None
    postmaster = psutil.Process(pg.pid)
    return [postmaster, *postmaster.children(recursive=True)]


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


def read_line(stream: IO[str], timeout: float) -> str:
    """The next line from a subprocess pipe, failing instead of hanging."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
    return stream.readline()


def test_start_and_stop_with_a_temporary_dir_leave_nothing_behind() -> None:
    pg = EmbeddedPostgres()
    assert pg.port == 0
    assert not pg.running
    pg.start()
    assert pg.running
    assert pg.port not in (0, 5432)
    assert pg.data_dir is not None
    data_dir = pg.data_dir
    assert (data_dir / "PG_VERSION").read_text().strip() == "18"
    processes = server_processes(pg)
    assert len(processes) > 1  # postmaster plus its background workers

    pg.stop()

    assert not pg.running
    assert pg.pid is None
    assert not data_dir.exists()
    assert not [p for p in processes if p.is_running()]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn(), connect_timeout=2)
    pg.stop()  # idempotent


def test_dsn_connects_over_tcp_to_postgresql_18(shared: EmbeddedPostgres) -> None:
    assert shared.dsn() == f"postgresql://postgres@127.0.0.1:{shared.port}/postgres"
    assert shared.version == "18"
    with psycopg.connect(shared.dsn()) as conn:
        assert conn.info.server_version // 10000 == 18
        row = conn.execute("SELECT host(inet_server_addr()), inet_server_port()").fetchone()
    assert row == ("127.0.0.1", shared.port)


def test_settings_are_applied_on_top_of_the_defaults(shared: EmbeddedPostgres) -> None:
    dsn = shared.dsn()
    assert scalar(dsn, "SHOW idle_session_timeout") == "2s"
    assert scalar(dsn, "SHOW log_statement") == "all"
    assert scalar(dsn, "SHOW max_connections") == "200"
    assert scalar(dsn, "SHOW listen_addresses") == "127.0.0.1"
    assert scalar(dsn, "SHOW fsync") == "on"  # benchmarks use this server


def test_create_database_is_idempotent(shared: EmbeddedPostgres) -> None:
    shared.create_database("embedded test-db")
    shared.create_database("embedded test-db")
    query = "SELECT count(*) FROM pg_database WHERE datname = 'embedded test-db'"
    assert scalar(shared.dsn(), query) == 1
    assert scalar(shared.dsn("embedded test-db"), "SELECT current_database()") == "embedded test-db"


def test_execute_runs_several_statements_in_a_chosen_database(shared: EmbeddedPostgres) -> None:
    shared.create_database("embedded_exec")
    shared.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)", dbname="embedded_exec")
    assert scalar(shared.dsn("embedded_exec"), "SELECT sum(x) FROM t") == 3


@pytest.mark.skipif(not IS_ROOT, reason="only root has to hand the server to another account")
def test_server_runs_as_an_unprivileged_account_when_root(shared: EmbeddedPostgres) -> None:
    account = pwd.getpwnam(embedded.SYSTEM_USER)
    assert shared.pid is not None
    assert psutil.Process(shared.pid).uids().real == account.pw_uid
    assert shared.data_dir is not None
    assert shared.data_dir.stat().st_uid == account.pw_uid


def test_scram_auth_refuses_a_wrong_password_and_accepts_the_right_one() -> None:
    password = "s3cret:/@pw"
    pg = EmbeddedPostgres(
        auth="scram-sha-256", superuser_password=password, settings={"log_statement": "all"}
    )
    assert password not in repr(pg)
    with pg:
        assert password not in repr(pg)
        assert password not in str(pg)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg.dsn(password="wrong"))
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.dsn(password=""))
        assert scalar(pg.dsn(password=password), "SELECT current_user") == "postgres"
        # Without an explicit password the superuser's DSN carries its own.
        assert scalar(pg.dsn(), "SELECT 1") == 1
        stored = scalar(pg.dsn(), "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
        assert stored.startswith("SCRAM-SHA-256$")
        assert pg.log_path is not None
        assert password not in pg.log_path.read_text()


def test_restart_keeps_the_port_and_the_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    with EmbeddedPostgres(data_dir) as pg:
        pg.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        port, first_pid = pg.port, pg.pid

        pg.restart()
        assert pg.port == port
        assert pg.pid != first_pid
        assert scalar(pg.dsn(), "SELECT x FROM kept") == 42

        pg.restart("immediate")  # crash recovery
        assert pg.port == port
        assert scalar(pg.dsn(), "SELECT x FROM kept") == 42

    assert (data_dir / "PG_VERSION").exists()  # a given data_dir is kept
    with EmbeddedPostgres(data_dir) as again:
        assert scalar(again.dsn(), "SELECT x FROM kept") == 42


def test_a_long_data_dir_path_gets_a_short_socket_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 100)
    with EmbeddedPostgres(data_dir) as pg:
        socket_dir = scalar(pg.dsn(), "SHOW unix_socket_directories").strip('"')
        assert len(socket_dir) + len("/.s.PGSQL.65535") < 100
        assert Path(socket_dir, f".s.PGSQL.{pg.port}").is_socket()
        pg.create_database("over_the_socket")
    assert not Path(socket_dir).exists()
    assert data_dir.exists()


def test_a_failed_start_raises_with_the_log_tail_and_cleans_up() -> None:
    pg = EmbeddedPostgres(settings={"shared_buffers": "plenty"})
    with pytest.raises(RuntimeError, match='invalid value for parameter "shared_buffers"'):
        pg.start()
    assert not pg.running
    assert pg.data_dir is not None
    assert not pg.data_dir.exists()


def test_a_requested_port_in_use_is_reported() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} is in use"):
            EmbeddedPostgres(port=port).start()


def test_a_free_port_taken_before_the_server_binds_it_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken, embedded._free_port()])
        monkeypatch.setattr(embedded, "_free_port", lambda: next(ports))
        with EmbeddedPostgres() as pg:
            assert pg.port != taken
            assert scalar(pg.dsn(), "SELECT 1") == 1


def test_invalid_arguments_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="superuser_password"):
        EmbeddedPostgres(auth="scram-sha-256")
    with pytest.raises(ValueError, match="'port' is set by EmbeddedPostgres"):
        EmbeddedPostgres(settings={"port": "5432"})
    with pytest.raises(ValueError, match="line break"):
        EmbeddedPostgres(settings={"application_name": "a\nport = 5432"})
    with pytest.raises(FileNotFoundError, match="initdb"):
        EmbeddedPostgres(bin_dir="/nonexistent")
    with pytest.raises(RuntimeError, match="start"):
        EmbeddedPostgres().dsn()


OTHER_BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


@pytest.mark.skipif(not OTHER_BIN_DIRS, reason="no other PostgreSQL installed")
def test_bin_dir_runs_another_major_version() -> None:
    bin_dir = OTHER_BIN_DIRS[0]
    major = Path(bin_dir).parent.name
    with EmbeddedPostgres(bin_dir=bin_dir) as pg:
        assert pg.version == major
        assert scalar(pg.dsn(), "SELECT current_setting('server_version_num')::int / 10000") == int(
            major
        )


def test_the_process_that_started_it_stops_it_at_exit_but_a_fork_does_not() -> None:
    script = textwrap.dedent(
        """
        import os, sys, psycopg
        from channels_engines.postgres.embedded import EmbeddedPostgres
        pg = EmbeddedPostgres().start()
        child = os.fork()
        if child == 0:
            sys.exit(0)  # runs atexit handlers in the child
        os.waitpid(child, 0)
        psycopg.connect(pg.dsn()).close()  # still up after the child exited
        print(pg.pid, pg.data_dir, flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=CHILD_ENV,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    pid, data_dir = result.stdout.split()
    assert not psutil.pid_exists(int(pid))
    assert not Path(data_dir).exists()


CLI_USERS = [None, embedded.SYSTEM_USER] if IS_ROOT else [None]


@pytest.mark.parametrize("user", CLI_USERS, ids=lambda u: u or "current-user")
def test_cli_prints_a_dsn_and_stops_cleanly_on_sigterm(user: str | None) -> None:
    if user is not None:
        embedded._server_account()  # makes sure the account exists
        try:
            subprocess.run([sys.executable, "-c", ""], user=user, cwd="/", check=True, timeout=30)
        except (PermissionError, subprocess.CalledProcessError):
            pytest.skip(f"{user} cannot run {sys.executable}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "channels_engines.embedded"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        env=CHILD_ENV,
        user=user,
    )
    try:
        line = read_line(proc.stdout, timeout=60)  # type: ignore[arg-type]
        match = re.fullmatch(r"postgresql://postgres@127\.0\.0\.1:(\d+)/postgres\n", line)
        assert match, line
        with psycopg.connect(line.strip()) as conn:
            query = "SELECT pg_backend_pid(), current_setting('data_directory')"
            row = conn.execute(query).fetchone()
            assert row is not None
            postmaster = psutil.Process(psutil.Process(row[0]).ppid())
        data_dir = Path(row[1])
        if user is not None:
            assert postmaster.uids().real == pwd.getpwnam(user).pw_uid

        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert not postmaster.is_running()
    assert not data_dir.exists()


def test_the_documented_import_path_is_the_same_server() -> None:
    import channels_engines.embedded as public

    assert public.EmbeddedPostgres is EmbeddedPostgres
    assert public.main is embedded.main
