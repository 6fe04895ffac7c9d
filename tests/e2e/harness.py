"""Real server processes running the chat example, WebSocket clients, and server-side checks.

Every wait has a deadline and reports what it was waiting for. Servers write their output
to ``test-artifacts/e2e/logs/``; a failing test gets the end of each log in its report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import polling
from tests.support.pgtools import server_dsn

ROOT = Path(__file__).resolve().parents[2]
CHAT_DIR = ROOT / "examples" / "chat"
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
LOGS = ARTIFACTS / "logs"
APP = "chatsite.asgi:application"

START_TIMEOUT = 45.0
STOP_TIMEOUT = 15.0
MESSAGE_TIMEOUT = 10.0

#: What uvicorn (alone or as gunicorn's worker class) logs once a worker serves requests.
STARTUP_COMPLETE = "Application startup complete."

T = TypeVar("T")
S = TypeVar("S", bound="ServerProcess")

#: Tells this run's server processes and databases apart from any other run's.
RUN = secrets.token_hex(3)

#: Every server started in this session, for the failure report.
STARTED: list[ServerProcess] = []


def unique_room(label: str) -> str:
    """A room no other test (or run) uses."""
    return f"{label}-{secrets.token_hex(3)}"


def free_port() -> int:
    """A port nobody listens on now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], T], what: str, timeout: float = MESSAGE_TIMEOUT) -> T:
    """Poll ``check()`` (a server or process observation) until it returns something truthy."""
    return polling.wait_for(check, what, timeout, every=0.1)


def run(coroutine: Any, timeout: float = 60.0) -> Any:
    """Run an async scenario in a new event loop, failing instead of hanging."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


@contextlib.contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """A new database ``NAME_RUN`` on the test server (``CHANNELS_ENGINES_TEST_DSN``),
    dropped afterwards; its URL."""
    base = server_dsn()
    name = f"{name}_{RUN}"
    created = False
    try:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created = True
        url = make_conninfo(base, dbname=name)
    except errors.InsufficientPrivilege:
        # A role that may not create databases: share the test database instead (rooms
        # and worker names are unique per run, so the tests still see only their own).
        url = base
    try:
        yield url
    finally:
        if created:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


# -- servers --------------------------------------------------------------------------


class ServerProcess:
    """A server process started as a deployment (or a reader of the docs) would start it,
    in its own process group, with its output in ``test-artifacts/e2e/logs/NAME.log``.

    Subclasses say what to run (``command()``), where (``cwd``) and with which
    environment (``environment()``); ``port`` is where it listens.
    """

    cwd: Path = ROOT

    def __init__(self, worker: str, *, port: int = 0) -> None:
        self.worker = worker
        self.port = port
        self.fixed_port = bool(port)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = LOGS / f"{worker}.log"
        self._log: IO[bytes] | None = None
        #: Where the output of the latest start begins in the log.
        self.log_start = 0
        self.active_since = 0.0

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ, PYTHONUNBUFFERED="1")

    def spawn(self: S) -> S:
        """Start the process (on a free port unless one was given); see ``ready()``."""
        if not self.fixed_port:
            self.port = free_port()
        self._spawn()
        return self

    def ready(self: S) -> S:
        """Wait until it answers HTTP; if its port was taken meanwhile, try another."""
        for attempt in range(3):
            try:
                self.wait_ready()
                return self
            except _PortTaken as exc:
                if self.fixed_port or attempt == 2:
                    raise AssertionError(
                        f"{self.worker}: port {self.port} is taken:\n{exc}"
                    ) from None
                self.port = free_port()
                self._spawn()
        raise AssertionError("unreachable")

    def start(self: S) -> S:
        return self.spawn().ready()

    def restart(self: S) -> S:
        """Start it again on the same port (after ``kill()`` or ``terminate()``)."""
        assert not self.running
        self.fixed_port = True
        self._spawn()
        return self.ready()

    def _spawn(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(self.command())}\n".encode())
        self._log.flush()
        self.log_start = self._log.tell()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.cwd,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group, so that nothing it forks can outlive the test.
            start_new_session=True,
        )
        self.active_since = time.monotonic()
        if self not in STARTED:
            STARTED.append(self)

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.proc = None
                if re.search(r"address already in use|errno 98", tail, re.IGNORECASE):
                    raise _PortTaken(tail)
                raise AssertionError(f"{self.worker} exited at start-up:\n{tail}")
            try:
                with urllib.request.urlopen(self.url("/"), timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.worker} did not answer within {START_TIMEOUT:g} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> int:
        """SIGTERM to the main process, as a process manager sends it; wait for the whole
        process group (workers included) to exit. Returns the main process' exit code."""
        assert self.proc is not None
        proc = self.proc
        self.active_since = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.worker} did not exit within {STOP_TIMEOUT:g} s of SIGTERM:\n"
                f"{self.log_tail()}"
            ) from None
        wait_for(lambda: not _group_alive(proc.pid), f"{self.worker}'s workers to exit")
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, no clean-up of any kind."""
        if self.proc is None:
            return
        self.active_since = time.monotonic()
        _kill_group(self.proc.pid)
        self.proc.wait(STOP_TIMEOUT)

    def close(self) -> None:
        """Whatever happened, leave nothing running and no file open."""
        if self.proc is not None:
            _kill_group(self.proc.pid)
            self.proc.wait(STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def output_since_start(self) -> str:
        """What the process has written since it was last started."""
        assert self._log is not None
        self._log.flush()
        with self.log_path.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


class ChatServer(ServerProcess):
    """``daphne``, ``uvicorn --workers N`` or ``gunicorn -k uvicorn_worker.UvicornWorker -w N``
    running the chat example, as a deployment would start them."""

    cwd = CHAT_DIR

    def __init__(
        self,
        kind: str,
        worker: str,
        database_url: str,
        *,
        workers: int = 1,
        port: int = 0,
        settings: str = "chatsite.settings",
        env: dict[str, str] | None = None,
    ) -> None:
        if kind not in ("daphne", "uvicorn", "gunicorn"):
            raise ValueError(kind)
        super().__init__(worker, port=port)
        self.kind, self.workers = kind, workers
        self.database_url = database_url
        #: The settings module, and further environment (another deployment's settings).
        self.settings, self.env = settings, dict(env or {})

    @property
    def application_name(self) -> str:
        """What the example's settings name this worker's connections."""
        return f"chat {self.worker}"

    def command(self) -> list[str]:
        port = str(self.port)
        if self.kind == "daphne":
            return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", port, APP]
        if self.kind == "uvicorn":
            return [
                sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", port,
                "--workers", str(self.workers), "--timeout-graceful-shutdown", "5", APP,
            ]  # fmt: skip
        return [
            sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker",
            "-w", str(self.workers), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", APP,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return dict(
            super().environment(),
            DATABASE_URL=self.database_url,
            DJANGO_SETTINGS_MODULE=self.settings,
            CHAT_WORKER=self.worker,
            PYTHONPATH=os.pathsep.join(filter(None, [str(CHAT_DIR), str(ROOT)])),
            **self.env,
        )

    def ws_url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/rooms/{room}/"

    def wait_ready(self) -> None:
        """It answers HTTP, and every worker has started: the first worker up answers the
        probe, while the others may still be importing Django."""
        super().wait_ready()
        if self.workers > 1:
            wait_for(
                lambda: self.output_since_start().count(STARTUP_COMPLETE) >= self.workers,
                f"all {self.workers} workers of {self.worker} to start",
                timeout=START_TIMEOUT,
            )


class _PortTaken(Exception):
    pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# -- clients --------------------------------------------------------------------------


class ChatClient:
    """A WebSocket client in one room, as the page's script is."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any], label: str) -> None:
        self.ws = ws
        self.label = label
        self.worker: str = welcome["worker"]
        self.pid = int(self.worker.rsplit("pid ", 1)[1])
        self.received: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, server: ChatServer, room: str, label: str = "") -> ChatClient:
        ws = await connect(
            server.ws_url(room), origin=f"http://127.0.0.1:{server.port}", open_timeout=10
        )
        try:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), MESSAGE_TIMEOUT))
        except BaseException:
            await ws.close()
            raise
        assert welcome["type"] == "welcome", welcome
        return cls(ws, welcome, label or f"{server.worker}/{room}")

    async def say(self, text: str, name: str = "tester") -> None:
        await self.ws.send(json.dumps({"name": name, "text": text}))

    async def expect(self, text: str, timeout: float = MESSAGE_TIMEOUT) -> dict[str, Any]:
        """The chat message with ``text``, received now or within ``timeout``."""
        for message in self.received:
            if message.get("text") == text:
                return message
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                message = await self._next(deadline)
                if message.get("text") == text:
                    return message
        except asyncio.TimeoutError:
            seen = [m.get("text") for m in self.received]
            raise AssertionError(
                f"{self.label} ({self.worker}) did not receive {text!r} within {timeout:g} s; "
                f"it received {seen}"
            ) from None

    async def expect_silence(self, seconds: float) -> None:
        """Nothing more arrives for ``seconds``."""
        before = len(self.received)
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            while True:
                await self._next(deadline)
        except asyncio.TimeoutError:
            pass
        extra = self.received[before:]
        assert not extra, f"{self.label} received {extra}, expected nothing"

    async def expect_closed(self, timeout: float = MESSAGE_TIMEOUT) -> None:
        """The server went away: the connection ends (cleanly or not) within ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                await self._next(deadline)
        except ConnectionClosed:
            return
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.label}'s connection stayed open") from None

    async def _next(self, deadline: float) -> dict[str, Any]:
        """The next message, or asyncio.TimeoutError at ``deadline`` (recv() is cancel-safe)."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise asyncio.TimeoutError
        message: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), remaining))
        self.received.append(message)
        return message

    async def close(self) -> None:
        await self.ws.close()


async def open_clients_on_distinct_workers(
    server: ChatServer, room: str, count: int = 2
) -> list[ChatClient]:
    """Open ``count`` clients, each served by a different worker process of ``server``.

    The workers share one listening socket, and the kernel wakes them in a fixed order, so
    one worker can take every new connection. While a client connects, the workers that
    already hold one are paused (SIGSTOP): only a worker without a client can accept it.
    """
    clients: list[ChatClient] = []
    try:
        for n in range(count):
            paused = [client.pid for client in clients]
            for pid in paused:
                pause(pid)
            try:
                client = await ChatClient.open(server, room, label=f"{server.worker}#{n}")
            finally:
                for pid in paused:
                    os.kill(pid, signal.SIGCONT)
            clients.append(client)
            assert client.pid not in paused, f"a paused worker (pid {client.pid}) accepted"
    except BaseException:
        for client in clients:
            await client.close()
        raise
    return clients


def pause(pid: int) -> None:
    """SIGSTOP ``pid`` and return once it has stopped (the signal is delivered
    asynchronously; until then the process could still accept a connection)."""
    os.kill(pid, signal.SIGSTOP)
    stat = Path(f"/proc/{pid}/stat")
    # The state is the field after the parenthesised command name.
    polling.wait_for(
        lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "T",
        f"pid {pid} to stop",
        MESSAGE_TIMEOUT,
        every=0.001,
    )


def post_announcement(server: ChatServer, room: str, text: str) -> dict[str, Any]:
    """What the page's Announce button does: GET the page (CSRF cookie), POST the form."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(server.url(f"/rooms/{room}/"), timeout=10) as response:
        page = response.read().decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "the room page has no CSRF token"
    body = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": match.group(1), "text": text, "name": "view"}
    ).encode()
    request = urllib.request.Request(server.url(f"/rooms/{room}/announce/"), data=body)
    with opener.open(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def send_chat_command(database_url: str, room: str, text: str) -> str:
    """Run ``manage.py send_chat`` as an operator would, in its own process."""
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        CHAT_WORKER="send-chat",
        DJANGO_SETTINGS_MODULE="chatsite.settings",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(CHAT_DIR / "manage.py"), "send_chat", room, text, "--name", "ops"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"send_chat failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


# -- the server side ------------------------------------------------------------------


class Observer:
    """Looks at the chat database from outside: connections and group memberships."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(
            self.database_url, autocommit=True, application_name="chat e2e observer"
        ) as conn:
            return conn.execute(sql, params).fetchall()

    def connections(self, server: ChatServer) -> int:
        """Sessions on the PostgreSQL server that belong to ``server``'s processes."""
        rows = self._query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (server.application_name,),
        )
        return int(rows[0][0])

    def members(self, room: str) -> list[str]:
        """The channels in the room's group, as the layer's table holds them."""
        rows = self._query(
            "SELECT channel FROM channels_engines_group_member WHERE group_name = %s "
            "ORDER BY channel",
            (f"chat.{room}",),
        )
        return [row[0] for row in rows]
