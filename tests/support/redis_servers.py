"""Real Redis servers for the Redis engine's tests: one server, a Sentinel group, a Cluster.

They run the machine's ``redis-server`` (Debian's ``redis-server`` package; Sentinels are
``redis-server <conf> --sentinel``, so the ``redis-sentinel`` package is not needed) and,
to create a Cluster, ``redis-cli`` (``redis-tools``, which ``redis-server`` depends on).
``CHANNELS_ENGINES_REDIS_SERVER`` and ``CHANNELS_ENGINES_REDIS_CLI`` name other binaries.
A missing binary is an error, never a skip: in CI a missing service is a failure.

Each server has its own temporary directory (its config file, log and data) and free
127.0.0.1 ports, so it never meets the machine's own Redis. Nothing is persisted unless
asked (``appendonly=True``). Every wait polls an observable server condition with a
deadline; nothing here synchronises with sleeps.

No server outlives the test process: each is stopped at exit, and on Linux each is started
with a parent-death signal, so a test process killed outright takes its servers with it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient
from redis.retry import Retry

from tests.support.polling import wait_for

if TYPE_CHECKING:
    from tests.support.tls import Certificates

HOST = "127.0.0.1"
#: Where the binaries come from, and which Debian package provides each.
SERVER_ENV, SERVER_PACKAGE = "CHANNELS_ENGINES_REDIS_SERVER", "redis-server"
CLI_ENV, CLI_PACKAGE = "CHANNELS_ENGINES_REDIS_CLI", "redis-tools"

CLUSTER_SLOTS = 16384
_PORT_ATTEMPTS = 5
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
_ADMIN_TIMEOUT = 5.0
_SETTLE_TIMEOUT = 30.0
_MIGRATE_BATCH = 100
_LOG_TAIL_LINES = 30
# sun_path holds 108 bytes on Linux; stay below it with room for the socket's name.
_MAX_SOCKET_DIR = 90


class RedisBinaryMissing(RuntimeError):
    """``redis-server`` or ``redis-cli`` cannot be found."""


class _PortTaken(RuntimeError):
    """Another process bound one of the server's ports between our probe and its bind."""


def redis_server_binary() -> str:
    """The ``redis-server`` to run: ``$CHANNELS_ENGINES_REDIS_SERVER`` or the one on PATH."""
    return _binary("redis-server", SERVER_ENV, SERVER_PACKAGE)


def redis_cli_binary() -> str:
    """The ``redis-cli`` to run: ``$CHANNELS_ENGINES_REDIS_CLI`` or the one on PATH."""
    return _binary("redis-cli", CLI_ENV, CLI_PACKAGE)


def _binary(name: str, env: str, package: str) -> str:
    configured = os.environ.get(env, "").strip()
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise RedisBinaryMissing(f"{env}={configured!r} is not an executable {name}")
        return found
    found = shutil.which(name)
    if found is None:
        raise RedisBinaryMissing(
            f"{name} is not on PATH: install Debian's {package} package"
            f" (apt-get install {package}), or set {env} to the binary"
        )
    return found


Address = tuple[str, int]


# -- starting processes ----------------------------------------------------------------


class _Spawner:
    """Starts the servers from one daemon thread that lives as long as this process.

    A parent-death signal fires when the *thread* that started the child ends, not the
    process: a server started (or restarted) from ``asyncio.to_thread`` would be killed
    as soon as the executor let that thread go.
    """

    def __init__(self) -> None:
        self._jobs: SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]], Future[Any]]] = (
            SimpleQueue()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            # A forked test process has none of its parent's threads.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._jobs = SimpleQueue()
                self._thread = threading.Thread(target=self._run, name="redis-spawner", daemon=True)
                self._pid = os.getpid()
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((lambda: subprocess.Popen(args, **kwargs), future))
        return future.result()

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            job, future = jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)


_SPAWNER = _Spawner()
_PR_SET_PDEATHSIG = 1


def _death_signal_setter() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child SIGKILLed when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    # Looked up here, not in the forked child, where dlopen could block on a lock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_death_signal() -> None:  # pragma: no cover - runs in the child
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return set_death_signal


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (another process may take one before we bind)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def _conf_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if len(str(path)) > _MAX_SOCKET_DIR:  # too long for a Unix socket path
        path.rmdir()
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    return path


def _ping(port: int) -> str:
    """The first line a server answers to an inline PING ('' if it does not answer)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return ""
    return data.decode(errors="replace").strip()


class _Problem(str):
    """What keeps a condition from holding: falsy, so that :func:`wait_for` keeps polling
    and reports the last one when it gives up."""

    def __bool__(self) -> bool:
        return False


def _settled(describe: Callable[[], str | None], what: str, timeout: float) -> None:
    """Wait until ``describe()`` finds nothing wrong (it returns the problem, or None)."""

    def check() -> bool | _Problem:
        try:
            problem = describe()
        except redis.RedisError as exc:  # a node that is restarting or just failed over
            problem = f"{type(exc).__name__}: {exc}"
        return True if problem is None else _Problem(problem)

    wait_for(check, what, timeout, every=0.05)


# -- one server ------------------------------------------------------------------------


class RedisServer:
    """One ``redis-server`` process in its own temporary directory, on a free port.

    ``config`` lines are added to its ``redis.conf`` (``user alice on >pw ~* +@all``);
    ``password`` sets ``requirepass`` (and ``masterauth``, for a replica of a server with
    the same password); ``unixsocket`` also listens on ``unix_socket_path``;
    ``appendonly`` keeps every acknowledged write across :meth:`kill` and :meth:`restart`.
    ``sentinel`` runs it as a Sentinel. ``tls`` also listens for TLS on ``tls_port``,
    with certificates of a private CA (:attr:`certificates`), and asks clients for theirs
    when ``tls`` is ``"required"``. The config file is written once, so a restart keeps
    what the server (or a Sentinel) rewrote in it.
    """

    def __init__(
        self,
        *,
        config: Sequence[str] = (),
        password: str | None = None,
        unixsocket: bool = False,
        appendonly: bool = False,
        sentinel: bool = False,
        cluster: bool = False,
        tls: Literal[False, "optional", "required"] = False,
        name: str = "redis",
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        self.extra_config = list(config)
        self.password = password
        self.unixsocket = unixsocket
        self.appendonly = appendonly
        self.sentinel = sentinel
        self.cluster = cluster
        self.tls = tls
        self.tls_port: int | None = None
        self.certificates: Certificates | None = None
        self.name = name
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.cluster_port: int | None = None
        self.dir: Path | None = None
        self.paused = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()

    # -- what tests use

    @property
    def address(self) -> Address:
        assert self.port is not None, f"{self!r} was not started"
        return (HOST, self.port)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``, with the password when there is one."""
        host, port = self.address
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{host}:{port}/0"

    @property
    def tls_url(self) -> str:
        """``rediss://127.0.0.1:<tls port>/0``."""
        assert self.tls_port is not None, f"{self!r} has no TLS port"
        return f"rediss://{HOST}:{self.tls_port}/0"

    @property
    def unix_socket_path(self) -> Path | None:
        return self.dir / "redis.sock" if self.unixsocket and self.dir else None

    @property
    def log_path(self) -> Path | None:
        return self.dir / "server.log" if self.dir else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new synchronous client of this server (the caller closes it)."""
        host, port = self.address
        kwargs.setdefault("password", self.password)
        return redis.Redis(host=host, port=port, **kwargs)

    def admin(self) -> redis.Redis:
        """A client for looking at or steering the server: decoded replies, short timeouts
        and no retries (a failure is reported, not hidden)."""
        return self.client(
            decode_responses=True,
            socket_timeout=_ADMIN_TIMEOUT,
            socket_connect_timeout=_ADMIN_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )

    def command(self, *args: Any) -> Any:
        """Run one command on a fresh admin connection."""
        with contextlib.closing(self.admin()) as admin:
            return admin.execute_command(*args)

    def info(self, section: str) -> dict[str, str]:
        """``INFO <section>``, every value as a string."""
        text = self.command("INFO", section)
        if isinstance(text, dict):  # redis-py parsed it
            return {key: str(value) for key, value in text.items()}
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def role(self) -> str:
        """``master``, ``slave`` or ``sentinel``, as ``ROLE`` answers."""
        return str(self.command("ROLE")[0])

    # -- life cycle

    def start(self) -> RedisServer:
        """Create the directory and config, start the server and wait until it answers."""
        assert self._proc is None, f"{self!r} was already started"
        assert self.dir is None, f"{self!r} was already started"
        self.dir = _temp_dir(f"channels-engines-{self.name}-")
        atexit.register(self._stop_at_exit)
        try:
            for attempt in range(_PORT_ATTEMPTS):
                # A cluster node also listens on its cluster bus port; TLS on a port too.
                ports = _free_ports(1 + bool(self.cluster) + bool(self.tls))
                self.port = ports.pop(0)
                self.cluster_port = ports.pop(0) if self.cluster else None
                self.tls_port = ports.pop(0) if self.tls else None
                self._write_config()
                try:
                    self._launch()
                    return self
                except _PortTaken:
                    if attempt == _PORT_ATTEMPTS - 1:
                        raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; remove its directory."""
        self._terminate()
        atexit.unregister(self._stop_at_exit)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def kill(self) -> None:
        """SIGKILL, as a crash; the directory stays, so :meth:`restart` can follow."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT)
        self.paused = False

    def restart(self) -> None:
        """Stop it (if it runs) and start it again on the same port, in the same directory
        and from the same config file; data survives only with ``appendonly``."""
        assert self.dir is not None, f"{self!r} was stopped for good"
        self._terminate()
        self._launch()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered until :meth:`resume`."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill_clients(self, skip_me: bool = True) -> int:
        """Close every normal and Pub/Sub client connection (replication links stay);
        with ``skip_me=False`` the admin connection that asks goes too. Returns how many."""
        killed = 0
        with contextlib.closing(self.admin()) as admin:
            # Pub/Sub first: with skip_me=False, the normal kill closes our own connection.
            for kind in ("pubsub", "normal"):
                killed += int(
                    admin.execute_command(
                        "CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes" if skip_me else "no"
                    )
                )
        return killed

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        return self if self._proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "not running"
        return f"<RedisServer {self.name} {HOST}:{self.port} {state}>"

    # -- inside

    def _write_config(self) -> None:
        assert self.dir is not None
        assert self.port is not None
        lines = [
            f"port {self.port}",
            f"bind {HOST}",
            f"dir {_conf_quote(str(self.dir))}",
            "daemonize no",
            f"logfile {_conf_quote(str(self.log_path))}",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            # Every acknowledged write is on disk before a kill.
            "appendfsync always",
            # A replica's first sync starts at once (the default waits 5 s for others).
            "repl-diskless-sync-delay 0",
            # SIGTERM stops it at once, without waiting up to 10 s for lagging replicas.
            "shutdown-on-sigterm now",
            # DEBUG SLEEP and friends, for tests of a slow server.
            "enable-debug-command local",
        ]
        if self.password is not None:
            lines += [f"requirepass {_conf_quote(self.password)}"]
            if not self.sentinel:
                lines += [f"masterauth {_conf_quote(self.password)}"]
        if self.unixsocket:
            lines += [f"unixsocket {_conf_quote(str(self.unix_socket_path))}", "unixsocketperm 700"]
        if self.tls:
            if self.certificates is None:
                from tests.support.tls import make_certificates

                self.certificates = make_certificates(self.dir / "tls")
            certificates = self.certificates
            lines += [
                f"tls-port {self.tls_port}",
                f"tls-cert-file {_conf_quote(str(certificates.server_cert))}",
                f"tls-key-file {_conf_quote(str(certificates.server_key))}",
                f"tls-ca-cert-file {_conf_quote(str(certificates.ca))}",
                f"tls-auth-clients {'yes' if self.tls == 'required' else 'optional'}",
            ]
        if self.cluster:
            lines += [
                "cluster-enabled yes",
                f"cluster-port {self.cluster_port}",
                f"cluster-config-file {_conf_quote(str(self.dir / 'nodes.conf'))}",
            ]
        lines += self.extra_config
        (self.dir / "redis.conf").write_text("\n".join(lines) + "\n")

    def _launch(self) -> None:
        assert self.dir is not None
        assert self.port is not None
        args = [redis_server_binary(), str(self.dir / "redis.conf")]
        if self.sentinel:
            args.append("--sentinel")
        log_path = self.log_path
        assert log_path is not None
        offset = log_path.stat().st_size if log_path.exists() else 0
        self._proc = _SPAWNER.popen(
            args,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal reaches the tests, not the server.
            start_new_session=True,
            preexec_fn=_death_signal_setter(),
        )
        self.paused = False
        self._wait_until_ready(offset)

    def _wait_until_ready(self, offset: int) -> None:
        proc = self._proc
        assert proc is not None
        assert self.port is not None
        deadline = time.monotonic() + self.start_timeout
        answer = ""
        while (code := proc.poll()) is None:
            answer = _ping(self.port)
            # NOAUTH: it answers, and wants a password. The answer may come from another
            # server that had the port first; ours then fails to bind and exits.
            if (answer == "+PONG" or answer.startswith("-NOAUTH")) and self._is_answering():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"{self!r} did not answer PING within {self.start_timeout:g} s"
                    f" (last answer {answer!r}); end of its log:\n{self.log_tail()}"
                )
            # The pause between attempts, cut short if the server exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.02)
        self._proc = None
        tail = self._log_since(offset)
        if "Address already in use" in tail:
            raise _PortTaken(f"a port of {self!r} is in use:\n{tail}")
        raise RuntimeError(f"redis-server exited with code {code} at start:\n{tail}")

    def _is_answering(self) -> bool:
        """Whether the server on our port is our process."""
        try:
            return int(self.info("server")["process_id"]) == self.pid
        except redis.RedisError:
            return False

    def _log_since(self, offset: int) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        with path.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    def _ask_to_stop(self) -> None:
        """SIGTERM, and SIGCONT if paused (a stopped process acts on SIGTERM once
        continued); :meth:`_terminate` waits."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            if self.paused:
                proc.send_signal(signal.SIGCONT)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._ask_to_stop()
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_STOP_TIMEOUT)
        self._proc = None
        self.paused = False

    def _stop_at_exit(self) -> None:
        # A forked child inherits atexit handlers: only the starting process may stop.
        if os.getpid() == self._owner_pid:
            self.stop()


def _stop_all(servers: Sequence[RedisServer]) -> None:
    """Stop several servers, which then shut down side by side."""
    for server in servers:
        server._ask_to_stop()
    for server in servers:
        server.stop()


# -- Sentinel --------------------------------------------------------------------------


class SentinelGroup:
    """A primary, one replica and three Sentinels watching them as ``service_name``.

    The Sentinels decide which server is the primary: :meth:`primary` asks them, and
    ``servers`` holds the two data servers whatever their current roles.

    Sentinel is slow to tidy up after a failover, by design: it turns a demoted primary
    into a replica only some 10 s after it sees it again (its INFO period, 10 s, and its
    wait, 8 s, are compiled in). Until then the old primary is a writable master, and
    clients still connected to it write there. :meth:`failover` and :meth:`kill_primary`
    return as soon as the Sentinels name the new primary and it answers as master, which
    is when clients can find it; :meth:`wait_settled` waits for the rest.
    """

    def __init__(
        self,
        *,
        service_name: str = "channels-engines",
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.service_name = service_name
        self.sentinel_password = sentinel_password
        self.sentinel_count = sentinels
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password
        self.servers: list[RedisServer] = []
        self.sentinel_servers: list[RedisServer] = []

    @property
    def sentinels(self) -> list[Address]:
        """The Sentinels' addresses, as ``redis.sentinel.Sentinel`` takes them."""
        return [server.address for server in self.sentinel_servers]

    def start(self) -> SentinelGroup:
        try:
            primary = RedisServer(password=self.password, name="sentinel-primary").start()
            self.servers.append(primary)
            replica = RedisServer(
                config=[f"replicaof {HOST} {primary.port}"],
                password=self.password,
                name="sentinel-replica",
            )
            self.servers.append(replica.start())
            name = self.service_name
            watch = [
                f"sentinel monitor {name} {HOST} {primary.port} {self.quorum}",
                f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
            ]
            if self.password is not None:
                watch.append(f"sentinel auth-pass {name} {_conf_quote(self.password)}")
            for number in range(self.sentinel_count):
                sentinel = RedisServer(
                    config=watch,
                    sentinel=True,
                    password=self.sentinel_password,
                    name=f"sentinel-{number}",
                )
                self.sentinel_servers.append(sentinel.start())
            self.wait_settled(primary.address)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop_all([*self.sentinel_servers, *self.servers])
        self.sentinel_servers.clear()
        self.servers.clear()

    def sentinel_client(self, **kwargs: Any) -> redis.sentinel.Sentinel:
        """A synchronous ``redis.sentinel.Sentinel`` of the group; ``kwargs`` go to the
        connections it makes to the data servers (the caller closes those clients)."""
        from redis.sentinel import Sentinel

        kwargs.setdefault("password", self.password)
        return Sentinel(
            self.sentinels, sentinel_kwargs={"password": self.sentinel_password}, **kwargs
        )

    def primary(self) -> Address:
        """The primary's address, as the first Sentinel that answers names it."""
        errors = []
        for sentinel in self.sentinel_servers:
            if not sentinel.running or sentinel.paused:
                continue
            try:
                return self._named_by(sentinel)
            except redis.RedisError as exc:
                errors.append(f"{sentinel!r}: {exc}")
        raise RuntimeError(f"no Sentinel names the primary: {errors}")

    def primary_server(self) -> RedisServer:
        return self._server_at(self.primary())

    def replica_server(self) -> RedisServer:
        primary = self.primary()
        return next(server for server in self.servers if server.address != primary)

    def failover(self, timeout: float = _SETTLE_TIMEOUT) -> Address:
        """``SENTINEL FAILOVER``: promote the replica now, with no agreement asked from
        the other Sentinels. Returns the new primary's address once every Sentinel names
        it and it answers as master (the old primary is still a master then)."""
        old = self.primary()
        sentinel = next(s for s in self.sentinel_servers if s.running and not s.paused)

        def ordered() -> bool | _Problem:
            try:
                sentinel.command("SENTINEL", "FAILOVER", self.service_name)
            except redis.ResponseError as exc:
                # NOGOODSLAVE, INPROG: the replica is not acknowledged yet, or the last
                # failover is still being wound up; both pass.
                return _Problem(str(exc))
            return True

        wait_for(ordered, "a Sentinel to accept SENTINEL FAILOVER", timeout, every=0.05)
        return self.wait_settled(not_at=old, full=False, timeout=timeout)

    def kill_primary(self, timeout: float = _SETTLE_TIMEOUT) -> Address:
        """SIGKILL the primary, as a crash: the Sentinels find it down (after
        ``down_after_ms``), agree and promote the replica. Returns the new primary's
        address once every Sentinel names it and it answers as master. The old primary
        stays down; :meth:`revive` starts it again."""
        old = self.primary_server()
        old.kill()
        return self.wait_settled(not_at=old.address, full=False, timeout=timeout)

    def revive(self, timeout: float = _SETTLE_TIMEOUT) -> Address:
        """Restart the data servers that are down or paused (a restarted primary comes
        back empty, as a master, until the Sentinels demote it) and wait until the group
        is settled. Returns the primary's address."""
        for server in self.servers:
            if server.paused:
                server.resume()
            elif not server.running:
                server.restart()
        return self.wait_settled(timeout=timeout)

    def wait_settled(
        self,
        at: Address | None = None,
        *,
        not_at: Address | None = None,
        full: bool = True,
        timeout: float = _SETTLE_TIMEOUT,
    ) -> Address:
        """Wait until every Sentinel names one primary (``at``, or another than
        ``not_at``) which it sees up, that answers as master, and (``full``) every other
        data server replicates from it and the Sentinels list it as a replica. Returns
        the primary's address."""
        agreed: list[Address] = []

        def describe() -> str | None:
            problem = self.problem(at, not_at=not_at, full=full)
            if problem is None:
                agreed[:] = [self.primary()]
            return problem

        _settled(describe, f"the Sentinel group {self.service_name!r} to settle", timeout)
        return agreed[0]

    def problem(
        self, at: Address | None = None, *, not_at: Address | None = None, full: bool = True
    ) -> str | None:
        """What keeps the group from being settled now (see :meth:`wait_settled`), or None."""
        try:
            return self._problem(at, not_at, full)
        except redis.RedisError as exc:  # a server that is down or restarting
            return f"{type(exc).__name__}: {exc}"

    def _problem(self, at: Address | None, not_at: Address | None, full: bool) -> str | None:
        named = {self._named_by(sentinel) for sentinel in self.sentinel_servers}
        if len(named) != 1:
            return f"the Sentinels name different primaries: {sorted(named)}"
        primary = named.pop()
        if at is not None and primary != at:
            return f"the Sentinels name {primary}, not {at}"
        if primary == not_at:
            return f"the Sentinels still name {primary}"
        role = self._server_at(primary).role()
        if role != "master":
            return f"{primary} is a {role}"
        others = [server for server in self.servers if server.address != primary]
        for sentinel in self.sentinel_servers:
            state = _pairs(sentinel.command("SENTINEL", "MASTER", self.service_name))
            if state["flags"] != "master":
                return f"{sentinel!r} sees the primary as {state['flags']}"
            if int(state["num-other-sentinels"]) != self.sentinel_count - 1:
                return f"{sentinel!r} knows {state['num-other-sentinels']} other Sentinels"
            if full:
                # Its view of a replica's link lags (INFO every 10 s): the replica's own
                # view is checked below.
                replicas = sentinel.command("SENTINEL", "REPLICAS", self.service_name)
                listed = sorted((entry["name"], entry["flags"]) for entry in map(_pairs, replicas))
                expected = sorted((f"{s.address[0]}:{s.address[1]}", "slave") for s in others)
                if listed != expected:
                    return f"{sentinel!r} lists the replicas {listed}"
        if full:
            for server in others:
                link = server.info("replication")
                if str(link.get("master_port")) != str(primary[1]):
                    return f"{server!r} replicates from port {link.get('master_port')}"
                if link.get("master_link_status") != "up":
                    return f"{server!r} has its link to the primary down"
        return None

    def _named_by(self, sentinel: RedisServer) -> Address:
        host, port = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        return (str(host), int(port))

    def _server_at(self, address: Address) -> RedisServer:
        for server in self.servers:
            if server.address == address:
                return server
        raise LookupError(f"no server of the group is at {address}")

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pairs(flat: Any) -> dict[str, str]:
    """A ``SENTINEL MASTER``-style flat list of names and values as a dict."""
    if isinstance(flat, dict):
        return {str(key): str(value) for key, value in flat.items()}
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


# -- Cluster ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNodeState:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    address: Address
    flags: frozenset[str]
    primary_id: str | None
    link: str
    slots: frozenset[int]
    #: Slots this node is importing or migrating (shown only for the node itself).
    moving: bool

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags


def parse_cluster_nodes(text: str) -> list[ClusterNodeState]:
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        host_port = fields[1].split("@", 1)[0].split(",", 1)[0]
        host, _, port = host_port.rpartition(":")
        slots: set[int] = set()
        moving = False
        for token in fields[8:]:
            if token.startswith("["):
                moving = True
                continue
            first, _, last = token.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        nodes.append(
            ClusterNodeState(
                node_id=fields[0],
                address=(host, int(port)),
                flags=frozenset(fields[2].split(",")),
                primary_id=None if fields[3] == "-" else fields[3],
                link=fields[7],
                slots=frozenset(slots),
                moving=moving,
            )
        )
    return nodes


class RedisCluster:
    """A Redis Cluster of ``primaries`` primaries, each with ``replicas`` replicas,
    created with ``redis-cli --cluster create``.

    Every method that changes the cluster returns once every node agrees on it: each
    reports ``cluster_state:ok`` with all 16384 slots served, and each one's
    ``CLUSTER NODES`` shows the same primaries, slots and replicas with no failure flag.
    """

    def __init__(
        self, *, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 2000
    ) -> None:
        if primaries < 3:
            raise ValueError(f"a Redis Cluster needs 3 primaries or more, not {primaries}")
        self.primary_count = primaries
        self.replicas_per_primary = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []

    @property
    def startup_nodes(self) -> list[Address]:
        return [node.address for node in self.nodes]

    def start(self) -> RedisCluster:
        try:
            total = self.primary_count * (1 + self.replicas_per_primary)
            for number in range(total):
                node = RedisServer(
                    cluster=True,
                    config=[
                        f"cluster-node-timeout {self.node_timeout_ms}",
                        # A replica of a primary that lost all its slots stays where it is.
                        "cluster-allow-replica-migration no",
                    ],
                    name=f"cluster-{number}",
                )
                self.nodes.append(node.start())
            self._create()
            self.wait_settled()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop_all(self.nodes)
        self.nodes.clear()

    def client(self, **kwargs: Any) -> ClusterClient:
        """A new synchronous ``redis.cluster.RedisCluster`` client (the caller closes it)."""
        return ClusterClient(
            startup_nodes=[ClusterNode(host, port) for host, port in self.startup_nodes],
            **kwargs,
        )

    def state(self, node: RedisServer | None = None) -> list[ClusterNodeState]:
        """``CLUSTER NODES`` as ``node`` (by default the first node that runs) sees it."""
        asked = node or next(n for n in self.nodes if n.running and not n.paused)
        return parse_cluster_nodes(str(asked.command("CLUSTER", "NODES")))

    def primaries(self) -> list[RedisServer]:
        return [self._node_at(n.address) for n in self.state() if n.is_primary]

    def replicas(self) -> list[RedisServer]:
        return [self._node_at(n.address) for n in self.state() if not n.is_primary]

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        states = self.state()
        primary_id = next(n.node_id for n in states if n.address == primary.address)
        return [self._node_at(n.address) for n in states if n.primary_id == primary_id]

    def slot_owner(self, slot: int) -> RedisServer:
        for node in self.state():
            if node.is_primary and slot in node.slots:
                return self._node_at(node.address)
        raise LookupError(f"no primary serves slot {slot}")

    def migrate_slot(self, slot: int, to: RedisServer, *, batch: int = _MIGRATE_BATCH) -> int:
        """Move ``slot`` and its keys to the primary ``to`` while clients keep using it,
        as ``redis-cli --cluster reshard`` does: IMPORTING on the target, MIGRATING on the
        source, MIGRATE the keys in batches, then SETSLOT NODE on the target, the source
        and every other primary. Returns how many keys were moved."""
        source = self.slot_owner(slot)
        if source is to:
            raise ValueError(f"slot {slot} is already served by {to!r}")
        source_id = str(source.command("CLUSTER", "MYID"))
        target_id = str(to.command("CLUSTER", "MYID"))
        to.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        host, port = to.address
        with contextlib.closing(source.admin()) as admin:
            while True:
                keys = admin.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                # REPLACE: a key a client created on the target (ASK) meanwhile is older.
                answer = admin.execute_command(
                    "MIGRATE", host, port, "", 0, int(_ADMIN_TIMEOUT * 1000), "REPLACE",
                    "KEYS", *keys,
                )  # fmt: skip
                if answer not in ("OK", "NOKEY"):  # NOKEY: they expired or were deleted
                    raise RuntimeError(f"MIGRATE of slot {slot} answered {answer!r}")
                moved += len(keys)
        primaries = [node for node in self.primaries() if node not in (to, source)]
        for node in [to, source, *primaries]:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_settled(lambda: self.slot_owner(slot) is to or f"slot {slot} is not on {to!r}")
        return moved

    def failover(self, node: RedisServer | None = None) -> RedisServer:
        """``CLUSTER FAILOVER`` on a replica (``node``, a replica of the primary ``node``,
        or by default the first replica): it takes over its primary's slots, with the
        primary's consent, and the old primary becomes its replica. Returns it."""
        if not self.replicas_per_primary:
            raise RuntimeError("this cluster has no replicas to fail over to")
        if node is None:
            replica = self.replicas()[0]
        elif node in self.primaries():
            replica = self.replicas_of(node)[0]
        else:
            replica = node
        replica.command("CLUSTER", "FAILOVER")
        self.wait_settled(lambda: replica in self.primaries() or f"{replica!r} is a replica")
        return replica

    def wait_settled(
        self, condition: Callable[[], bool | str] | None = None, timeout: float = _SETTLE_TIMEOUT
    ) -> None:
        """Wait until :meth:`problem` finds nothing wrong, and ``condition()`` holds
        (True; otherwise it returns what is missing)."""

        def describe() -> str | None:
            problem = self.problem()
            if problem is None and condition is not None:
                verdict = condition()
                if verdict is not True:
                    return str(verdict)
            return problem

        _settled(describe, "the Redis Cluster to settle", timeout)

    def problem(self) -> str | None:
        """What keeps the cluster from being settled now, or None: every node reports
        ``cluster_state:ok`` with all slots served, knows every node, sees none failing
        and no slot moving, all agree on primaries, slots and replicas, and every replica
        has its link to its primary up."""
        try:
            views = set()
            for node in self.nodes:
                info = _info_text(node, "CLUSTER", "INFO")
                if info.get("cluster_state") != "ok":
                    return f"{node!r} reports cluster_state {info.get('cluster_state')}"
                if info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
                    return f"{node!r} has {info.get('cluster_slots_ok')} slots ok"
                if info.get("cluster_known_nodes") != str(len(self.nodes)):
                    return f"{node!r} knows {info.get('cluster_known_nodes')} nodes"
                states = self.state(node)
                for state in states:
                    if state.flags & {"fail", "fail?", "handshake", "noaddr"} or state.moving:
                        return f"{node!r} sees {state.address} as {sorted(state.flags)}"
                views.add(
                    frozenset((s.address, s.is_primary, s.slots, s.primary_id) for s in states)
                )
            if len(views) != 1:
                return "the nodes do not agree on the cluster's shape"
            states = self.state()
            primaries = sum(state.is_primary for state in states)
            if primaries != self.primary_count:
                return f"{primaries} primaries, not {self.primary_count}"
            for state in states:
                if not state.is_primary:
                    link = self._node_at(state.address).info("replication")
                    if link.get("master_link_status") != "up":
                        return f"the replica {state.address} has its link down"
        except redis.RedisError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _create(self) -> None:
        args = [
            redis_cli_binary(),
            "--cluster",
            "create",
            *(f"{host}:{port}" for host, port in self.startup_nodes),
            "--cluster-replicas",
            str(self.replicas_per_primary),
            "--cluster-yes",
        ]
        done = subprocess.run(  # our binary, fixed arguments
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}"
            )

    def _node_at(self, address: Address) -> RedisServer:
        for node in self.nodes:
            if node.address == address:
                return node
        raise LookupError(f"no node of the cluster is at {address}")

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _info_text(node: RedisServer, *command: str) -> dict[str, str]:
    text = str(node.command(*command))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
