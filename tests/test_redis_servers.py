"""The Redis test servers are real: a client of redis-py sees each fixture do what it says."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support import redis_servers
from tests.support.polling import wait_for
from tests.support.redis_servers import (
    CLI_ENV,
    SERVER_ENV,
    RedisBinaryMissing,
    RedisCluster,
    RedisServer,
    SentinelGroup,
    redis_cli_binary,
)

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parents[1]
NO_RETRY = Retry(NoBackoff(), 0)


def gone(pid: int) -> bool:
    """The process ended (a zombie nobody reaped counts: it runs no more)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Writer:
    """Writes numbered keys from a thread until stopped, as traffic during a change;
    keeps the keys it wrote (acknowledged) and the errors it met."""

    def __init__(self, write: Callable[[str], Any], key: Callable[[int], str]) -> None:
        self.write, self.key = write, key
        self.acknowledged: list[str] = []
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis writer", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key = self.key(n)
            n += 1
            try:
                self.write(key)
            except redis.RedisError as exc:
                self.errors.append(exc)
            else:
                self.acknowledged.append(key)

    @contextlib.contextmanager
    def running(self, at_least: int = 20) -> Iterator[Writer]:
        """Run, after ``at_least`` writes went through, the body; stop after it."""
        self._thread.start()
        try:
            wait_for(lambda: len(self.acknowledged) >= at_least, "the first writes")
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)
        assert not self._thread.is_alive()


# -- one server ------------------------------------------------------------------------


def test_a_server_stores_and_reads_with_redis_py(redis_server: RedisServer) -> None:
    with contextlib.closing(redis.Redis.from_url(redis_server.url)) as client:
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    # Nothing is written to disk unless asked.
    assert redis_server.admin().config_get("save") == {"save": ""}
    assert redis_server.admin().config_get("appendonly") == {"appendonly": "no"}


def test_a_server_takes_a_password_acl_users_and_a_unix_socket() -> None:
    with RedisServer(
        password="s3cret", unixsocket=True, config=["user alice on >wonder ~alice:* +@all"]
    ) as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        with contextlib.closing(redis.Redis.from_url(server.url)) as client:
            assert client.ping()
        host, port = server.address
        with (
            contextlib.closing(redis.Redis(host=host, port=port, retry=NO_RETRY)) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()
        socket_path = str(server.unix_socket_path)
        with contextlib.closing(
            redis.Redis(unix_socket_path=socket_path, username="alice", password="wonder")
        ) as alice:
            alice.set("alice:cat", "cheshire")
            with pytest.raises(redis.exceptions.NoPermissionError):
                alice.set("queen:cat", "none")


def test_a_paused_server_times_out_commands_until_resumed(redis_server: RedisServer) -> None:
    with contextlib.closing(redis_server.client(socket_timeout=0.3, retry=NO_RETRY)) as client:
        assert client.ping()
        redis_server.pause()
        try:
            with pytest.raises(redis.TimeoutError):
                client.ping()
        finally:
            redis_server.resume()
        assert client.ping()


def test_a_restarted_server_keeps_its_port_and_forgets_its_data(
    redis_server: RedisServer,
) -> None:
    port, pid = redis_server.port, redis_server.pid
    with contextlib.closing(redis_server.client()) as client:
        client.set("before", 1)
        redis_server.restart()
        assert (redis_server.port, redis_server.running) == (port, True)
        assert redis_server.pid != pid
        # redis-py reconnects to the same address; the data went with the process.
        assert client.get("before") is None


def test_with_appendonly_a_killed_server_comes_back_with_every_write() -> None:
    with RedisServer(appendonly=True) as server:
        with contextlib.closing(server.client()) as client:
            for n in range(200):
                client.set(f"key:{n}", n)
        server.kill()
        assert not server.running
        server.restart()
        with contextlib.closing(server.client()) as client:
            assert client.dbsize() == 200
            assert client.get("key:199") == b"199"


def test_kill_clients_closes_every_normal_and_pubsub_connection_but_its_own(
    redis_server: RedisServer,
) -> None:
    with (
        contextlib.closing(redis_server.client()) as client,
        contextlib.closing(redis_server.client().pubsub()) as pubsub,
    ):
        before = client.client_id()
        pubsub.subscribe("news")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        assert redis_server.kill_clients() == 2
        with contextlib.closing(redis_server.admin()) as admin:
            assert [entry["cmd"] for entry in admin.client_list()] == ["client|list"]
        # redis-py finds its closed connection before using it and opens another.
        assert client.client_id() != before
        # Without skip_me, the connection that asks goes too.
        assert redis_server.kill_clients(skip_me=False) == 2


def test_stop_ends_the_process_and_removes_its_directory() -> None:
    server = RedisServer().start()
    pid, directory = server.pid, server.dir
    assert pid is not None
    assert directory is not None
    assert (directory / "redis.conf").exists()
    server.pause()  # a stopped process must still stop
    server.stop()
    assert gone(pid)
    assert not directory.exists()


def test_a_server_started_from_a_thread_outlives_the_thread() -> None:
    server = RedisServer()
    thread = threading.Thread(target=server.start)
    thread.start()
    thread.join()
    assert thread.native_id is not None
    # The parent-death signal follows the thread that forked: wait until it is gone.
    task = Path(f"/proc/self/task/{thread.native_id}")
    wait_for(lambda: not task.exists(), "the starting thread to end")
    try:
        assert server.command("PING") is True
    finally:
        server.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_servers_die_with_the_test_process_that_started_them() -> None:
    script = (
        "import sys\n"
        "from tests.support.redis_servers import RedisServer\n"
        "server = RedisServer().start()\n"
        "print(server.pid, server.dir, flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        pid_text, directory = child.stdout.readline().split()
        pid = int(pid_text)
        assert not gone(pid)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        wait_for(lambda: gone(pid), "the orphaned redis-server to die")
    finally:
        child.kill()
        child.wait(timeout=10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        # Nobody was left to remove it.
        subprocess.run(["rm", "-rf", "--", directory], check=True)


def test_a_port_taken_before_the_server_binds_it_is_given_up_for_another(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The port it is offered first is another server's, which answers PING there.
    offered = iter([[redis_server.port]])
    free_ports = redis_servers._free_ports
    monkeypatch.setattr(
        redis_servers, "_free_ports", lambda count: next(offered, None) or free_ports(count)
    )
    with RedisServer() as server:
        assert server.port != redis_server.port
        assert server.info("server")["process_id"] == str(server.pid)
        assert "Address already in use" in server.log_tail()


def test_a_missing_redis_server_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RedisBinaryMissing) as caught:
        RedisServer().start()
    assert str(caught.value) == (
        "redis-server is not on PATH: install Debian's redis-server package"
        " (apt-get install redis-server), or set CHANNELS_ENGINES_REDIS_SERVER to the binary"
    )
    monkeypatch.setenv(CLI_ENV, "/nonexistent/redis-cli")
    with pytest.raises(RedisBinaryMissing) as caught:
        redis_cli_binary()
    assert str(caught.value) == (
        "CHANNELS_ENGINES_REDIS_CLI='/nonexistent/redis-cli' is not an executable redis-cli"
    )


# -- Sentinel --------------------------------------------------------------------------


@contextlib.contextmanager
def sentinel_primary(group: SentinelGroup, **options: Any) -> Iterator[redis.Redis]:
    """A redis-py client of the group's primary, found through the Sentinels."""
    sentinel = group.sentinel_client(socket_timeout=2, **options)
    client = sentinel.master_for(group.service_name)
    try:
        yield client
    finally:
        client.close()
        for connection in sentinel.sentinels:
            connection.close()


def test_a_sentinel_client_writes_through_the_service_name(
    redis_sentinel: SentinelGroup,
) -> None:
    with sentinel_primary(redis_sentinel) as client:
        client.set("through-sentinel", "yes")
        host, port = redis_sentinel.primary()
        assert client.connection_pool.get_master_address() == (host, port)  # type: ignore[attr-defined]
    replica = redis_sentinel.replica_server()
    wait_for(lambda: replica.command("GET", "through-sentinel") == "yes", "the replica's copy")


def test_a_forced_failover_moves_the_primary_and_clients_follow(
    redis_sentinel: SentinelGroup,
) -> None:
    old = redis_sentinel.primary()
    with sentinel_primary(redis_sentinel) as client:
        with Writer(lambda key: client.set(key, 1), "before:{}".format).running():
            new = redis_sentinel.failover()
        assert new != old
        assert redis_sentinel.primary_server().role() == "master"
        # A new client goes to the new primary at once.
        with sentinel_primary(redis_sentinel) as fresh:
            fresh.set("after", 1)
        assert redis_sentinel.primary_server().command("GET", "after") == "1"
        # The long-lived one keeps writing to the old primary until the Sentinels demote
        # it (some 10 s) and close its clients; then it follows.
        new_server = redis_sentinel.primary_server()
        attempt = iter(range(10**9))

        def written_to_new_primary() -> bool:
            key = f"follow:{next(attempt)}"
            try:
                client.set(key, 1)
            except redis.ConnectionError:
                return False
            return bool(new_server.command("EXISTS", key) == 1)

        wait_for(written_to_new_primary, "the client to write to the new primary", 30, 0.05)
    redis_sentinel.wait_settled(new)


def test_a_killed_primary_is_replaced_and_clients_follow(redis_sentinel: SentinelGroup) -> None:
    old = redis_sentinel.primary_server()
    with sentinel_primary(redis_sentinel) as client:
        client.set("before", 1)
        new = redis_sentinel.kill_primary()
        assert new != old.address
        assert not old.running

        def written() -> bool:
            try:
                return bool(client.set("after", 1))
            except redis.ConnectionError:
                return False

        wait_for(written, "a write after the failover", 30, 0.05)
        assert redis_sentinel.primary_server().command("GET", "after") == "1"


# -- Cluster ---------------------------------------------------------------------------


def test_a_cluster_client_spreads_keys_over_every_primary(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.primaries()) == 3
    assert len(redis_cluster.replicas()) == 3
    with contextlib.closing(redis_cluster.client()) as client:
        keys = [f"spread:{n}" for n in range(300)]
        for key in keys:
            client.set(key, key)
        assert all(primary.command("DBSIZE") > 50 for primary in redis_cluster.primaries())
        assert client.mget_nonatomic(keys) == [key.encode() for key in keys]


def test_a_slot_moves_with_its_keys_while_clients_write(redis_cluster: RedisCluster) -> None:
    with contextlib.closing(redis_cluster.client()) as client:
        slot = client.keyslot("{moving}")
        for n in range(2000):
            client.set(f"{{moving}}:old:{n}", n)
        source = redis_cluster.slot_owner(slot)
        target = next(node for node in redis_cluster.primaries() if node is not source)
        # New keys in the moving slot, and in the others.
        writer = Writer(lambda key: client.set(key, 1), "{{moving}}:new:{}".format)
        other = Writer(lambda key: client.set(key, 1), "elsewhere:{}".format)
        with writer.running(), other.running():
            during = len(writer.acknowledged)
            moved = redis_cluster.migrate_slot(slot, target)
            assert len(writer.acknowledged) > during, "no write went on during the move"
        assert moved >= 2000
        assert redis_cluster.slot_owner(slot) is target
        assert (writer.errors, other.errors) == ([], [])
        assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        keys = [f"{{moving}}:old:{n}" for n in range(2000)]
        keys += writer.acknowledged + other.acknowledged
        assert all(client.mget_nonatomic(keys)), "a written key is missing"


def test_a_replica_takes_over_its_primary_while_clients_write(
    redis_cluster: RedisCluster,
) -> None:
    with contextlib.closing(redis_cluster.client()) as client:
        primary = redis_cluster.slot_owner(client.keyslot("{failing}"))
        writer = Writer(lambda key: client.set(key, 1), "{{failing}}:{}".format)
        with writer.running():
            during = len(writer.acknowledged)
            promoted = redis_cluster.failover(primary)
            assert len(writer.acknowledged) > during, "no write went on during the failover"
        assert promoted.role() == "master"
        assert primary.role() == "slave"
        assert redis_cluster.slot_owner(client.keyslot("{failing}")) is promoted
        # A manual failover waits for the replica to catch up: no acknowledged write is lost.
        assert writer.errors == []
        assert all(client.mget_nonatomic(writer.acknowledged)), "a written key is missing"
