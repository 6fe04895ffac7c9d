"""Rotation that loses nothing, against a PostgreSQL that really checks passwords.

The machine's server trusts every login, so this module starts its own cluster with
``scram-sha-256`` for TCP logins and ``log_connections = on`` (every refused login shows
in its log as "password authentication failed"). The layers log in as non-superuser roles
that inherit the privileges of the role owning the database and the tables, so privileges
can be revoked like a Vault lease.

* Passwords rotated with ``ALTER ROLE ... PASSWORD`` every few seconds while two processes
  exchange thousands of point-to-point and group messages (both orders: server first,
  and secret first relying on verify-before-swap).
* Tokens expiring every 15 s, minted by a provider that makes each one the role's
  password (``VALID UNTIL`` its expiry), in both processes.
* A provider outage with a server restart in the middle.
* A file secret swapped atomically (Kubernetes' ``..data`` symlink) and rewritten in place.
* Privileges revoked on live sessions (Vault lease revocation).
* A planted password never disclosed.

Every wait has a deadline; pauses are fault schedules or observation, not synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from channels_engines import EngineChannelLayer
from channels_engines.credentials import CredentialsError, Secret
from channels_engines.exceptions import InvalidConfigError
from channels_engines.postgres.connection import Login
from channels_engines.postgres.embedded import EmbeddedPostgres
from channels_engines.postgres.schema import Tables
from tests.support import rotation_peer
from tests.support.pgtools import (
    REPO,
    Admin,
    Child,
    LogCapture,
    engine_of,
    run,
    unique,
)
from tests.support.polling import await_for, wait_for

# They start their own password-checking server, so they run once, not per server version.
pytestmark = [pytest.mark.postgres, pytest.mark.own_server]

DATABASE = "ce_rotation"
OWNER = "ce_rotation_owner"
PEER_TIMEOUT = 120.0
CONTROLLED = "tests.support.rotation_peer.controlled_credentials"


def _original_options() -> Any:
    from channels_engines.postgres.engine import PostgresEngine

    return PostgresEngine.options


#: The engine's options as shipped (before this module declares 'credentials').
ORIGINAL_OPTIONS = _original_options()


# The cluster ---------------------------------------------------------------------------------


class Cluster:
    """A scram-sha-256 EmbeddedPostgres with a database owned by a NOLOGIN role."""

    def __init__(self, pg: EmbeddedPostgres) -> None:
        self.pg = pg
        self.admin_dsn = pg.dsn(DATABASE)
        #: Where the layers connect: no password (that comes from the providers).
        self.target = f"host={pg.host} port={pg.port} dbname={DATABASE}"
        assert pg.log_path is not None
        self.log_path = pg.log_path

    def create_role(self, password: str) -> str:
        role = unique("ce_rot")
        self.pg.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}")
            .format(sql.Identifier(role), sql.Literal(password), sql.Identifier(OWNER))
            .as_string(None)
        )
        return role

    def set_password(self, role: str, password: str) -> None:
        self.pg.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}")
            .format(sql.Identifier(role), sql.Literal(password))
            .as_string(None)
        )

    def create_tables(self, prefix: str) -> None:
        """The tables, owned by OWNER (the layers' roles never run DDL)."""
        script = Tables(None, prefix, unlogged=False).create_script()
        self.pg.execute(f"SET ROLE {OWNER};\n{script}\nRESET ROLE;", dbname=DATABASE)

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")

    def auth_failures(self, offset: int) -> list[str]:
        return [
            line
            for line in self.log_since(offset).splitlines()
            if "password authentication failed" in line
        ]

    def clock(self, admin: Admin) -> Any:
        return admin.scalar("SELECT clock_timestamp()")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    server = EmbeddedPostgres(
        auth="scram-sha-256",
        superuser_password="su-" + secrets.token_hex(12),
        settings={"log_connections": "on", "password_encryption": "scram-sha-256"},
    )
    with server as pg:
        pg.execute(f"CREATE ROLE {OWNER} NOLOGIN")
        pg.create_database(DATABASE)
        pg.execute(f"ALTER DATABASE {DATABASE} OWNER TO {OWNER}")
        yield Cluster(pg)


@pytest.fixture
def prefix(cluster: Cluster) -> str:
    name = unique("ce_rot") + "_"
    cluster.create_tables(name)
    return name


def layer_config(
    cluster: Cluster, app: str, prefix: str, credentials: Any, **options: Any
) -> dict[str, Any]:
    """CONFIG whose pool connections carry ``app`` and whose listener carries ``app_l``."""
    result: dict[str, Any] = {
        "ENGINE": "postgres",
        "dsn": cluster.target,
        "connection": {"application_name": app},
        "listen_dsn": cluster.target,
        "listen_connection": {"application_name": app + "_l"},
        "table_prefix": prefix,
        "create_tables": False,
        "credentials": credentials,
        "capacity": 100_000,
    }
    result.update(options)
    return result


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# Two peer processes ---------------------------------------------------------------------------


class Peer(Child):
    """A :class:`tests.support.pgtools.Child` running ``tests.support.rotation_peer``."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job, module="tests.support.rotation_peer")


class ActivitySampler:
    """Samples pg_stat_activity every ``every`` s from a thread: the backends per app."""

    def __init__(self, cluster: Cluster, apps: list[str], every: float = 0.05) -> None:
        self.admin = Admin(cluster.admin_dsn)
        self.apps = apps
        self.every = every
        self.samples: list[dict[str, list[int]]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activity sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.admin.rows(
                    "SELECT application_name, pid FROM pg_stat_activity"
                    " WHERE application_name = ANY(%s)",
                    [self.apps],
                )
            except BaseException as exc:  # reported by stop()
                self.errors.append(exc)
                return
            sample: dict[str, list[int]] = {app: [] for app in self.apps}
            for app, pid in rows:
                sample[app].append(pid)
            self.samples.append(sample)
            self._stop.wait(self.every)

    def start(self) -> ActivitySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(30)
        self.admin.close()
        if self.errors:
            raise self.errors[0]

    def fewest(self, app: str) -> int:
        return min(len(sample[app]) for sample in self.samples)

    def distinct(self, app: str) -> set[int]:
        return {pid for sample in self.samples for pid in sample[app]}


@dataclass
class Exchange:
    names: list[str]
    apps: dict[str, str]
    ready: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    sampler: ActivitySampler | None = None


def run_exchange(
    cluster: Cluster,
    configs: dict[str, dict[str, Any]],
    during: Callable[[Exchange], None],
    *,
    pause: float = 0.01,
) -> Exchange:
    """Two peers exchange messages while ``during()`` runs the fault schedule."""
    names = list(configs)
    assert len(names) == 2
    group = unique("rot.group").replace("_", "-")
    apps = {name: configs[name]["connection"]["application_name"] for name in names}
    exchange = Exchange(names, apps)
    peers = {
        name: Peer(
            {
                "config": configs[name],
                "name": name,
                "group": group,
                "pause": pause,
                "timeout": 90,
            }
        )
        for name in names
    }
    try:
        for name, peer in peers.items():
            exchange.ready[name] = peer.expect("ready", timeout=PEER_TIMEOUT)
        sampler = ActivitySampler(
            cluster, [app for name in names for app in (apps[name], apps[name] + "_l")]
        )
        exchange.sampler = sampler
        sampler.start()
        try:
            for name, other in zip(names, reversed(names), strict=True):
                ready = exchange.ready[other]
                peers[name].tell(
                    "go " + json.dumps({"normal": ready["normal"], "specific": ready["specific"]})
                )
            during(exchange)
        finally:
            sampler.stop()
        for peer in peers.values():
            peer.tell("stop")
        for name, peer in peers.items():
            exchange.sent[name] = peer.expect("sent", timeout=PEER_TIMEOUT)
        for name, other in zip(names, reversed(names), strict=True):
            ready = exchange.ready[name]
            groups = sum(exchange.sent[sender]["streams"]["group"]["sent"] for sender in names)
            streams = exchange.sent[other]["streams"]
            expect = {
                ready["normal"]: groups + streams["p2p-normal"]["sent"],
                ready["specific"]: groups + streams["p2p-specific"]["sent"],
            }
            peers[name].tell("expect " + json.dumps(expect))
        for name, peer in peers.items():
            exchange.received[name] = peer.expect("received", timeout=PEER_TIMEOUT)
        for name, peer in peers.items():
            assert peer.finish() == 0, "".join(peer.stderr)
            exchange.warnings[name] = peer.expect("log", timeout=10)["warnings"]
    finally:
        for peer in peers.values():
            peer.kill()
    return exchange


def check_exchange(exchange: Exchange) -> dict[str, int]:
    """0 failed sends, 0 lost, 0 duplicated, per-stream order kept; returns the totals."""
    names = exchange.names
    totals = {"sent": 0, "received": 0}
    for name in names:
        sent = exchange.sent[name]
        assert sent["errors"] == [], sent["errors"]
        for stream in sent["streams"].values():
            assert stream["failed"] == []
            totals["sent"] += stream["sent"]
    for name, other in zip(names, reversed(names), strict=True):
        ready = exchange.ready[name]
        received = exchange.received[name]
        assert received["errors"] == []
        mine = exchange.sent[name]["streams"]
        theirs = exchange.sent[other]["streams"]
        wanted = {
            ready["normal"]: {
                (other, "p2p"): theirs["p2p-normal"]["sent"],
                (name, "group"): mine["group"]["sent"],
                (other, "group"): theirs["group"]["sent"],
            },
            ready["specific"]: {
                (other, "p2p"): theirs["p2p-specific"]["sent"],
                (name, "group"): mine["group"]["sent"],
                (other, "group"): theirs["group"]["sent"],
            },
        }
        for channel, streams in wanted.items():
            history: dict[tuple[str, str], list[int]] = {}
            for src, kind, seq in received["channels"][channel]:
                history.setdefault((src, kind), []).append(seq)
            totals["received"] += len(received["channels"][channel])
            assert set(history) == set(streams), (channel, set(history))
            for key, count in streams.items():
                seqs = history[key]
                # Exactly once and in order: any loss, duplicate or reordering shows here.
                assert seqs == list(range(count)), (
                    channel,
                    key,
                    count,
                    len(seqs),
                    len(set(seqs)),
                    [s for a, s in enumerate(seqs) if s != a][:5],
                )
        # The listener never went without a connection (make-before-break) and never
        # had to reconnect after a failure.
        assert received["listener_gaps"] == 0
        assert received["reconnects"] == 0
    sampler = exchange.sampler
    assert sampler is not None
    assert sampler.samples
    for name in names:
        # A LISTEN backend of each process at every sample of pg_stat_activity.
        assert sampler.fewest(exchange.apps[name] + "_l") >= 1
    return totals


# R10. Passwords rotated under two-process load --------------------------------------------------


def rotation_schedule(
    cluster: Cluster,
    role: str,
    secret: Path,
    order: str,
    duration: float,
    every: float,
    report: dict[str, Any],
) -> Callable[[Exchange], None]:
    """Rotate the role's password every ``every`` s for ``duration`` s.

    ``server_first``: ALTER ROLE, then publish the secret (logins with the old password
    fail in between: the engine retries once with fresh credentials). ``secret_first``:
    publish, wait until the server has refused the unverified new password (the probe),
    check that nothing was swapped, then ALTER ROLE. After each rotation, wait until every
    backend of both processes is newer than the rotation (pool drained, listener moved).
    """

    def during(exchange: Exchange) -> None:
        apps = [
            app
            for name in exchange.names
            for app in (exchange.apps[name], exchange.apps[name] + "_l")
        ]
        report.update(rotations=0, probes_refused=0, auth_failures=0, slowest=0.0)
        with Admin(cluster.admin_dsn) as admin:
            started = time.monotonic()
            offset = cluster.log_offset()
            while time.monotonic() - started < duration:
                slot = time.monotonic()
                password = "pw-" + secrets.token_hex(16)
                if order == "server_first":
                    cluster.set_password(role, password)
                    write_atomically(secret, password)
                else:
                    listeners = {
                        app: set(admin.backends(app)) for app in apps if app.endswith("_l")
                    }
                    before = cluster.log_offset()
                    write_atomically(secret, password)
                    refused = wait_for(
                        lambda before=before: cluster.auth_failures(before),
                        "a probe with the not yet valid password",
                        timeout=20,
                    )
                    report["probes_refused"] += len(refused)
                    # Unverified credentials were not swapped in: same listeners.
                    for app, pids in listeners.items():
                        assert set(admin.backends(app)) == pids, app
                    cluster.set_password(role, password)
                changed = time.monotonic()
                rotated_at = cluster.clock(admin)

                def moved(rotated_at: Any = rotated_at) -> bool:
                    rows = admin.rows(
                        "SELECT application_name, backend_start FROM pg_stat_activity"
                        " WHERE application_name = ANY(%s)",
                        [apps],
                    )
                    listening = {app for app, _ in rows if app.endswith("_l")}
                    return len(listening) == len(apps) // 2 and all(
                        start > rotated_at for _, start in rows
                    )

                wait_for(moved, "every backend opened after the rotation", timeout=30)
                # Observed, not asserted: from the server change to the last old backend gone.
                report["slowest"] = max(report["slowest"], round(time.monotonic() - changed, 2))
                report["rotations"] += 1
                time.sleep(max(0.0, slot + every - time.monotonic()))  # the fault schedule
            report["auth_failures"] = len(cluster.auth_failures(offset))

    return during


@pytest.mark.timeout(600)
@pytest.mark.parametrize("order", ["server_first", "secret_first"])
@pytest.mark.parametrize(
    ("duration", "every"),
    [
        pytest.param(20.0, 2.5, id="20s"),
        pytest.param(180.0, 3.0, id="soak-3min", marks=pytest.mark.slow),
    ],
)
def test_passwords_rotated_every_few_seconds_under_two_process_load_lose_nothing(
    cluster: Cluster,
    prefix: str,
    tmp_path: Path,
    order: str,
    duration: float,
    every: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = "pw-" + secrets.token_hex(16)
    role = cluster.create_role(first)
    secret = tmp_path / "password"
    write_atomically(secret, first)
    credentials = {"provider": "file", "path": str(secret), "user": role, "settle": 0.2}
    configs = {
        name: layer_config(
            cluster, unique(f"ce_rot_{name}"), prefix, credentials, sweep_interval=0.5
        )
        for name in ("a", "b")
    }
    report: dict[str, Any] = {}
    exchange = run_exchange(
        cluster,
        configs,
        rotation_schedule(cluster, role, secret, order, duration, every, report),
    )
    totals = check_exchange(exchange)
    assert report["rotations"] >= duration // every - 1
    sampler = exchange.sampler
    assert sampler is not None
    for name in exchange.names:
        received = exchange.received[name]
        # One listener connection per rotation (and the first); pool connections replaced.
        assert len(received["listener_pids"]) >= report["rotations"] + 1
        assert len(sampler.distinct(exchange.apps[name])) >= report["rotations"]
        assert received["rotations"] >= report["rotations"]
    with capsys.disabled():
        print(
            f"\n[R10 {order} {duration:g}s] rotations={report['rotations']} "
            f"messages sent={totals['sent']} received={totals['received']} "
            f"slowest rotation={report['slowest']}s "
            f"refused logins={report['auth_failures']} (probes refused: "
            f"{report['probes_refused']}) samples={len(sampler.samples)} "
            + " ".join(
                f"{name}: fetches={exchange.received[name]['fetches']} "
                f"swaps={exchange.received[name]['rotations']} "
                f"listeners={len(exchange.received[name]['listener_pids'])} "
                f"warnings={len(exchange.warnings[name])}"
                for name in exchange.names
            )
        )


# R13a. Tokens that expire every 15 s ---------------------------------------------------------


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "duration",
    [
        pytest.param(46.0, id="46s"),
        pytest.param(300.0, id="soak-5min", marks=pytest.mark.slow),
    ],
)
def test_tokens_expiring_every_15s_cause_no_failed_login_and_one_fetch_per_window(
    cluster: Cluster, prefix: str, duration: float, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each process mints its own tokens (its own role: a token replaces the role's
    password, so the previous one stops working at once, and each expires after 15 s).
    With the advisory point a third of the lifetime before expiry, a token is refreshed
    10 s after it was minted: at most one fetch per 10 s per process, and never a login
    with a superseded or expired token."""
    lifetime = 15.0
    advisory_after = lifetime - lifetime / 3
    roles = {name: cluster.create_role("unused-" + secrets.token_hex(8)) for name in ("a", "b")}
    configs = {
        name: layer_config(
            cluster,
            unique(f"ce_rot_{name}"),
            prefix,
            {
                "provider": "tests.support.rotation_peer.MintingProvider",
                "admin_dsn": cluster.admin_dsn,
                "role": roles[name],
                "lifetime": lifetime,
            },
            sweep_interval=0.5,
        )
        for name in ("a", "b")
    }
    offset = cluster.log_offset()
    window: dict[str, float] = {}

    def during(exchange: Exchange) -> None:
        window["start"] = time.time()
        time.sleep(duration)  # the length of the run
        window["end"] = time.time()

    exchange = run_exchange(cluster, configs, during)
    totals = check_exchange(exchange)
    failures = cluster.auth_failures(offset)
    assert failures == []
    report = []
    for name in exchange.names:
        received = exchange.received[name]
        mints = received["mints"]
        assert received["fetches"] == len(mints)  # the provider is only asked through the cache
        # Every window of the run had its refresh (the run covers at least 3 windows).
        assert len(mints) >= (window["end"] - window["start"]) // lifetime + 1
        assert len(mints) >= 4
        gaps = [round(b - a, 1) for a, b in itertools.pairwise(mints)]
        assert min(gaps) >= advisory_after - 0.5, gaps  # never before the advisory point
        assert not [w for w in exchange.warnings[name] if "authentication" in w]
        # Each new token moved the listener (make-before-break), nothing else did.
        assert len(received["listener_pids"]) == len(mints)
        report.append(
            f"{name}: fetches={received['fetches']} gaps={gaps} "
            f"listeners={len(received['listener_pids'])} warnings={exchange.warnings[name]}"
        )
    with capsys.disabled():
        print(
            f"\n[R13a {duration:g}s] messages sent={totals['sent']} received={totals['received']}"
            f" refused logins={len(failures)} " + " ".join(report)
        )


# R12. A provider outage with a server restart in the middle ------------------------------------


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> rotation_peer.Control:
    state = rotation_peer.Control()
    monkeypatch.setattr(rotation_peer, "CONTROL", state)
    return state


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["token", "password"])
def test_a_provider_outage_spares_healthy_connections_and_service_recovers_after_a_restart(
    cluster: Cluster,
    prefix: str,
    control: rotation_peer.Control,
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The provider fails for a while. Healthy connections carry traffic all along, and
    none is closed (with a token, past its expiry: an established session does not need
    it). The server restarts during the outage. ``token``: the only token expired, so
    nothing can log in and sends fail fast (CredentialsError, not a wait). ``password``:
    the cached password is still valid and sends go on with it. Once the provider is
    back, the listener reconnects, sends succeed, the receive() that waited through it all
    gets its message, and messages committed before the restart are delivered."""
    lifetime = 4.0 if kind == "token" else None
    control.password = "pw-" + secrets.token_hex(16)
    control.user = cluster.create_role(control.password)
    control.lifetime = lifetime
    control.admin_dsn = cluster.admin_dsn
    app = unique("ce_rot_o")
    config = layer_config(
        cluster,
        app,
        prefix,
        {"provider": "callable", "path": CONTROLLED, "ttl": 1.0},
        pool_min_size=1,
        pool_max_size=1,
        pool_timeout=1.0,
        sweep_interval=0.2,
    )
    report: dict[str, Any] = {}

    async def scenario() -> None:
        layer = EngineChannelLayer(**config)
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"n": -1})
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": -1}
            listener = engine_of(layer)._listener
            with Admin(cluster.admin_dsn) as admin:
                pool_pids = admin.backends(app)
                listen_pids = admin.backends(app + "_l")
            assert len(pool_pids) == 1
            assert listen_pids == [listener.backend_pid]
            for n in range(5):
                await layer.send("outage.kept", {"n": n})

            control.fail = True
            calls_before = control.calls

            def long_enough() -> bool:
                if lifetime is not None:  # past the token's expiry, and a second more
                    return time.time() > control.mints[-1] + lifetime + 1.0
                return control.failures >= 3  # several refreshes failed

            n = 0
            deadline = time.monotonic() + 30
            while not long_enough():
                assert time.monotonic() < deadline, "the outage did not last"
                await layer.send(channel, {"n": n})
                assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": n}
                n += 1
                await asyncio.sleep(0.05)  # steady traffic
            report["during_outage"] = n
            report["provider_calls_in_outage"] = control.calls - calls_before
            assert control.failures >= 1
            with Admin(cluster.admin_dsn) as admin:  # no healthy connection was closed
                assert admin.backends(app) == pool_pids
                assert admin.backends(app + "_l") == listen_pids
            assert listener.reconnects == 0

            waiting = asyncio.ensure_future(layer.receive(channel))
            await asyncio.to_thread(cluster.pg.restart, "fast")
            failed: list[str] = []
            if kind == "token":
                # The only token expired and the provider is down: nothing can log in.
                for _ in range(3):
                    with pytest.raises(CredentialsError) as info:
                        await asyncio.wait_for(layer.send(channel, {"n": "never"}), 10)
                    failed.append(f"{type(info.value).__name__}: {info.value}")
            else:
                # The cached password still works: the service goes on with it (a
                # connection refused during the restart is no reason to drop it).
                await asyncio.wait_for(layer.send(channel, {"n": "during"}), 10)
                report["sent_with_cached_password"] = True
            report["failed_sends"] = failed
            control.fail = False

            recovered_at = time.monotonic()
            while True:
                try:
                    await asyncio.wait_for(layer.send(channel, {"n": "after"}), 10)
                    break
                except Exception:
                    assert time.monotonic() - recovered_at < 20, "no recovery"
                    await asyncio.sleep(0.2)  # polling for recovery
            report["recovered_after_s"] = round(time.monotonic() - recovered_at, 2)
            await await_for(
                lambda: listener.reconnects == 1 and listener.backend_pid is not None,
                "the listener back",
                30,
            )
            expected = [{"n": "after"}]
            if report.get("sent_with_cached_password"):
                expected.insert(0, {"n": "during"})
            got = [await asyncio.wait_for(waiting, 10)]
            got += [await asyncio.wait_for(layer.receive(channel), 10) for _ in expected[1:]]
            assert got == expected
            kept = [
                (await asyncio.wait_for(layer.receive("outage.kept"), 10))["n"] for _ in range(5)
            ]
            assert kept == list(range(5))  # committed before the restart
            with Admin(cluster.admin_dsn) as admin:
                assert admin.backends(app + "_l") == [listener.backend_pid]
        finally:
            await layer.close()

    with LogCapture("channels_engines", logging.WARNING) as log:
        run(scenario(), timeout=150)
    with capsys.disabled():
        print(
            f"\n[R12 {kind}] {report} warnings={len(log.records)} "
            f"first={log.at_least(logging.WARNING)[:3]}"
        )


# R13b. A file secret swapped atomically or rewritten in place -----------------------------------


def publish_atomically(directory: Path, password: str) -> None:
    """Like Kubernetes' AtomicWriter: a new timestamped directory, then ``..data`` swapped."""
    version = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{secrets.token_hex(4)}"
    version.mkdir()
    (version / "password").write_text(password)
    link = directory / "..data_tmp"
    os.symlink(version.name, link)
    os.replace(link, directory / "..data")
    if not (directory / "password").is_symlink():
        os.symlink("..data/password", directory / "password")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("swap", ["atomic", "in_place"])
def test_a_file_secret_is_picked_up_and_never_used_half_written(
    cluster: Cluster,
    prefix: str,
    tmp_path: Path,
    swap: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = "pw-" + secrets.token_hex(16), "pw-" + secrets.token_hex(16)
    role = cluster.create_role(old)
    directory = tmp_path / "secret"
    directory.mkdir()
    path = directory / "password"
    if swap == "atomic":
        publish_atomically(directory, old)
    else:
        path.write_text(old)
    app = unique("ce_rot_f")
    config = layer_config(
        cluster,
        app,
        prefix,
        {"provider": "file", "path": str(path), "user": role, "settle": 0.5},
        sweep_interval=0.2,
        pool_max_size=1,
    )
    report: dict[str, Any] = {}

    async def scenario() -> None:
        layer = EngineChannelLayer(**config)
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"n": -1})
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": -1}
            cache = engine_of(layer).shared.login.credentials
            with Admin(cluster.admin_dsn) as admin:
                before = set(admin.backends(app)) | set(admin.backends(app + "_l"))
            stop = asyncio.Event()
            outcome = {"ok": 0, "errors": []}

            async def traffic() -> None:
                n = 0
                while not stop.is_set():
                    try:
                        await layer.send(channel, {"n": n})
                        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": n}
                        outcome["ok"] += 1
                    except Exception as exc:
                        outcome["errors"].append(repr(exc))
                    n += 1
                    await asyncio.sleep(0.01)  # steady traffic

            running = asyncio.ensure_future(traffic())
            offset = cluster.log_offset()
            with LogCapture("channels_engines.credentials") as log:
                if swap == "atomic":
                    await asyncio.to_thread(cluster.set_password, role, new)
                    publish_atomically(directory, new)
                else:
                    with path.open("w") as handle:  # truncated: an empty secret
                        handle.flush()
                        await await_for(
                            lambda: any("is empty" in m for m in log.at_least(logging.DEBUG)),
                            "the empty secret refused",
                            20,
                        )
                        handle.write(new[: len(new) // 2])
                        handle.flush()
                        await asyncio.to_thread(cluster.set_password, role, new)
                        await asyncio.sleep(0.1)  # a slow writer (shorter than 'settle')
                        handle.write(new[len(new) // 2 :])
                await await_for(
                    lambda: cache.current is not None and cache.current.password == Secret(new),
                    "the new password in use",
                    20,
                )
                with Admin(cluster.admin_dsn) as admin:

                    def moved() -> bool:
                        now = set(admin.backends(app)) | set(admin.backends(app + "_l"))
                        return not (now & before) and bool(admin.backends(app + "_l"))

                    await asyncio.to_thread(wait_for, moved, "connections with the new password")
                stop.set()
                await asyncio.wait_for(running, 20)
            report["messages"] = outcome["ok"]
            report["log"] = [m[:90] for m in log.at_least(logging.DEBUG)]
            assert outcome["errors"] == []
            # Never a login with an empty, partial or old secret: none was refused.
            assert cluster.auth_failures(offset) == []
            assert cache.rotations == 1
            await layer.send(channel, {"n": "last"})
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": "last"}
        finally:
            await layer.close()

    run(scenario(), timeout=100)
    with capsys.disabled():
        print(f"\n[R13b {swap}] {report}")


# Retry once with fresh credentials: only for a refused login, and also after a concurrent swap --


def test_the_postgres_engine_accepts_a_credentials_key(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from channels_engines.postgres.engine import PostgresEngine

    monkeypatch.setattr(PostgresEngine, "options", ORIGINAL_OPTIONS)
    layer = EngineChannelLayer(
        ENGINE="postgres",
        dsn=cluster.target,
        credentials={"provider": "static", "user": "someone", "password": "pw"},
    )
    assert layer.config.options["credentials"]["provider"] == Secret("static")


def settings_for(target: str, credentials: Any) -> Login:
    return Login({"dsn": target, "credentials": credentials}, where="test")


def test_a_connection_failure_that_is_not_a_refused_login_keeps_the_cached_credentials(
    control: rotation_peer.Control,
) -> None:
    """The server is unreachable while the provider is down: the error says so, and the
    cached credentials (still valid) are kept for when the server is back."""
    control.user, control.password = "someone", "pw-" + secrets.token_hex(8)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    settings = settings_for(
        f"host=127.0.0.1 port={port} dbname=x", {"provider": "callable", "path": CONTROLLED}
    )
    cache = settings.credentials
    assert cache is not None

    async def scenario() -> None:
        await cache.get()
        control.fail = True
        with pytest.raises(psycopg.OperationalError) as info:
            await settings.connect()
        assert not isinstance(info.value, CredentialsError)
        assert cache.fetches == 1
        assert not cache.needs_refresh()
        assert (await cache.get()).password == Secret(control.password)

    run(scenario(), timeout=30)


def test_a_login_refused_after_a_concurrent_swap_is_retried_with_the_new_credentials(
    cluster: Cluster, control: rotation_peer.Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two connects start with the old password; the server has the new one. The first
    to be refused fetches and uses the new password; the second, refused a moment
    later, must retry with it too instead of failing."""
    from channels_engines.postgres import connection as connection_module

    old, new = "pw-" + secrets.token_hex(16), "pw-" + secrets.token_hex(16)
    control.user, control.password = cluster.create_role(old), old
    settings = settings_for(cluster.target, {"provider": "callable", "path": CONTROLLED})
    real_connect = connection_module._connect
    gate = asyncio.Event()
    held = asyncio.Event()
    calls = 0

    async def gated(params: dict[str, Any], purpose: str, timeout: float | None = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first attempt (connect B) is slow to reach the server
            held.set()
            await gate.wait()
        return await real_connect(params, purpose, timeout)

    monkeypatch.setattr(connection_module, "_connect", gated)

    async def scenario() -> None:
        await settings.credentials.get()  # type: ignore[union-attr]
        await asyncio.to_thread(cluster.set_password, control.user, new)
        control.password = new
        b = asyncio.ensure_future(settings.connect())
        await asyncio.wait_for(held.wait(), 10)
        a = await settings.connect()  # refused, retried with the new password
        await a.close()
        gate.set()
        conn = await asyncio.wait_for(b, 10)  # refused with the old one: must retry too
        await conn.close()

    run(scenario(), timeout=30)


# R11. Privileges revoked on live sessions (Vault lease revocation) -------------------------------


def vault_revocation(role: str) -> str:
    """Vault's default PostgreSQL revocation, plus the membership its creation granted."""
    name = sql.Identifier(role).as_string(None)
    return (
        f"REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM {name};"
        f" REVOKE ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public FROM {name};"
        f" REVOKE USAGE ON SCHEMA public FROM {name};"
        f" REVOKE CONNECT ON DATABASE {DATABASE} FROM {name};"
        f" REVOKE {OWNER} FROM {name};"
        f" DROP ROLE IF EXISTS {name};"
    )


@pytest.mark.timeout(120)
def test_a_revoked_lease_makes_the_layer_refresh_and_reconnect_as_the_new_role(
    cluster: Cluster,
    prefix: str,
    control: rotation_peer.Control,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first_password = "pw-" + secrets.token_hex(16)
    first = cluster.create_role(first_password)
    control.user, control.password = first, first_password
    app = unique("ce_rot_v")
    config = layer_config(
        cluster, app, prefix, {"provider": "callable", "path": CONTROLLED}, sweep_interval=0.5
    )
    report: dict[str, Any] = {}

    async def scenario() -> None:
        layer = EngineChannelLayer(**config)
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"n": -1})
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": -1}
            listener = engine_of(layer)._listener
            # A new lease: the provider now hands out another role; then the old one is
            # revoked on the server while its sessions stay open.
            second_password = "pw-" + secrets.token_hex(16)
            second = cluster.create_role(second_password)
            control.user, control.password = second, second_password
            await asyncio.to_thread(cluster.pg.execute, vault_revocation(first), DATABASE)

            ok: list[int] = []
            indeterminate: list[BaseException] = []
            n = 0
            deadline = time.monotonic() + 30
            while len(ok) < 20:
                assert time.monotonic() < deadline, (ok, indeterminate)
                try:
                    await asyncio.wait_for(layer.send(channel, {"n": n}), 10)
                    ok.append(n)
                except Exception as exc:  # in flight at the revocation: indeterminate
                    indeterminate.append(exc)
                n += 1
                await asyncio.sleep(0.02)  # steady traffic
            got = []
            while len(got) < len(ok):
                got.append((await asyncio.wait_for(layer.receive(channel), 15))["n"])
            # Every successful send delivered, once, in order; failed ones never appear.
            assert got == ok
            # Only sends caught by the revocation failed, for lack of privileges.
            assert {getattr(exc, "sqlstate", None) for exc in indeterminate} <= {"42501", "42704"}
            with Admin(cluster.admin_dsn) as admin:
                users = admin.rows(
                    "SELECT application_name, usename FROM pg_stat_activity"
                    " WHERE application_name IN (%s, %s)",
                    [app, app + "_l"],
                )
            assert {usename for _, usename in users} == {second}
            assert {name for name, _ in users} == {app, app + "_l"}
            assert listener.backend_pid is not None
            report.update(
                ok=len(ok), indeterminate=len(indeterminate), provider_calls=control.calls
            )
        finally:
            await layer.close()

    with LogCapture("channels_engines", logging.WARNING) as log:
        run(scenario(), timeout=100)
    report["warnings"] = [m[:100] for m in log.at_least(logging.WARNING)]
    assert any("lack of privileges" in m for m in report["warnings"])
    with capsys.disabled():
        print(f"\n[R11] {report}")


# S5. A planted password is never disclosed ------------------------------------------------------


class EveryRecord(logging.Handler):
    """Every log record of every logger, formatted with its traceback and stack."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record) + repr(record.args) + repr(record.__dict__))


@contextlib.contextmanager
def capture_every_log() -> Iterator[EveryRecord]:
    handler = EveryRecord()
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in ("psycopg", "psycopg.pool", "channels_engines")]
    levels = [(logger, logger.level) for logger in [root, *loggers]]
    root.addHandler(handler)
    for logger, _ in levels:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level in levels:
            logger.setLevel(level)


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable through __cause__ and __context__."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or any(item is known for known in seen):
            continue
        seen.append(item)
        stack += [item.__cause__, item.__context__]
    return seen


@dataclass
class Disclosure:
    """Failures provoked with a planted password, and everything they produced."""

    sentinel: str
    #: Errors of a running layer (logins, providers, revocation, the server down).
    raised: list[BaseException] = field(default_factory=list)
    #: Errors of bad settings that hold the sentinel.
    config_errors: list[BaseException] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)

    def expect_failure(self, what: str, coroutine: Any, timeout: float = 15.0) -> Any:
        async def attempt() -> None:
            try:
                await asyncio.wait_for(coroutine, timeout)
            except Exception as exc:
                self.raised.append(exc)
            else:
                raise AssertionError(f"{what}: no error")

        return attempt()

    def leaks(self, text: str) -> bool:
        return self.sentinel in text


def provoke_disclosures(
    cluster: Cluster, prefix: str, tmp_path: Path, control: rotation_peer.Control
) -> Disclosure:
    """Use the sentinel through the static, env, file and callable providers; fail with a
    wrong password, a server that is down, a provider that raises, a revoked role, broken
    secrets and bad settings; collect exceptions, log records and reprs."""
    sentinel = "S3NTINEL-pw-" + secrets.token_hex(6)
    found = Disclosure(sentinel)
    role = cluster.create_role(sentinel)  # the sentinel is the real password
    wrong_role = cluster.create_role("pw-" + secrets.token_hex(16))  # it is a wrong one here
    os.environ["CE_SENTINEL_PASSWORD"] = sentinel
    os.environ["CE_SENTINEL_USER"] = wrong_role
    secret = tmp_path / "sentinel"
    secret.write_text(sentinel)
    broken = tmp_path / "broken.json"
    broken.write_text('{"user": "x", "password": "' + sentinel)  # half-written JSON
    control.user, control.password = wrong_role, sentinel
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    closed_port = down.getsockname()[1]
    down.close()
    wrong = {
        "static": {"provider": "static", "user": wrong_role, "password": sentinel},
        "env": {
            "provider": "env",
            "password_variable": "CE_SENTINEL_PASSWORD",
            "user_variable": "CE_SENTINEL_USER",
        },
        "file": {"provider": "file", "path": str(secret), "user": wrong_role, "settle": 0.0},
        "callable": {"provider": "callable", "path": CONTROLLED},
    }
    right = {"provider": "static", "user": role, "password": sentinel}

    def config(app: str, credentials: Any, **options: Any) -> dict[str, Any]:
        return layer_config(cluster, app, prefix, credentials, pool_timeout=1.0, **options)

    async def scenario() -> None:
        layers: list[EngineChannelLayer] = []
        try:
            # A wrong password through each provider.
            for name, credentials in wrong.items():
                layer = EngineChannelLayer(**config(unique("ce_rot_s"), credentials))
                layers.append(layer)
                await found.expect_failure(name, layer.send("s5.wrong", {"n": 1}))
            # A half-written JSON secret.
            layer = EngineChannelLayer(
                **config(
                    unique("ce_rot_s"),
                    {"provider": "file", "path": str(broken), "format": "json", "settle": 0.0},
                )
            )
            layers.append(layer)
            await found.expect_failure("broken json", layer.send("s5.json", {"n": 1}))
            # The right password, and the server down.
            layer = EngineChannelLayer(
                **config(unique("ce_rot_s"), right, dsn=f"host=127.0.0.1 port={closed_port}")
            )
            layers.append(layer)
            await found.expect_failure("server down", layer.send("s5.down", {"n": 1}))
            # The right password: traffic, then a revoked role, a provider that fails,
            # and a drain in the middle of it.
            control.user, control.password = role, sentinel
            layer = EngineChannelLayer(
                **config(unique("ce_rot_s"), {"provider": "callable", "path": CONTROLLED})
            )
            layers.append(layer)
            channel = await layer.new_channel()
            await layer.send(channel, {"n": 1})
            assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 1}
            engine = engine_of(layer)
            cache = engine.shared.login.credentials
            found.texts.update(
                {
                    "repr(layer)": repr(layer),
                    "repr(engine)": repr(engine),
                    "repr(provider)": repr(cache.provider),
                    "repr(credentials)": repr(cache.current),
                    "str(credentials)": str(cache.current),
                    "repr(password)": repr(cache.current.password),
                    "repr(connection_params)": repr(cache.current.connection_params()),
                    "repr(cache)": repr(cache),
                    "repr(login)": repr(engine.shared.login),
                    "repr(pool)": repr(engine.pool),
                    "repr(listener)": repr(engine._listener),
                    "pool stats": repr(engine.pool.stats),
                }
            )
            await asyncio.to_thread(
                cluster.pg.execute,
                f"REVOKE {OWNER} FROM {sql.Identifier(role).as_string(None)}",
                DATABASE,
            )
            control.fail = True
            await found.expect_failure("revoked", layer.send(channel, {"n": 2}))
            await engine.pool.drain()
            for _ in range(3):
                await found.expect_failure("provider down", layer.send(channel, {"n": 3}))
            await asyncio.to_thread(
                cluster.pg.execute,
                f"GRANT {OWNER} TO {sql.Identifier(role).as_string(None)}",
                DATABASE,
            )
            control.fail = False
        finally:
            for layer in layers:
                await layer.close()

    try:
        run(scenario(), timeout=120)
        # Bad settings holding the sentinel.
        for name, options in {
            "password in dsn and credentials": {
                "dsn": f"postgresql://u:{sentinel}@127.0.0.1/db",
                "credentials": right,
            },
            "unparsable dsn": {"dsn": f"host=127.0.0.1 password={sentinel} ==="},
            "unknown provider option": {"credentials": {**right, "passwrd": sentinel}},
            "unknown provider": {"credentials": {"provider": "nope", "password": sentinel}},
            "wrong type": {"credentials": {"provider": "static", "password": [sentinel]}},
        }.items():
            try:
                EngineChannelLayer(ENGINE="postgres", **options)
            except Exception as exc:
                found.config_errors.append(exc)
            else:
                raise AssertionError(f"{name}: no error")
    finally:
        for variable in ("CE_SENTINEL_PASSWORD", "CE_SENTINEL_USER"):
            os.environ.pop(variable, None)
    return found


def django_output(tmp_path: Path, sentinel: str, code: str, *args: str) -> str:
    """Output of ``python -m django ARGS`` with a settings module holding the sentinel."""
    (tmp_path / "sentinel_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        "\n"
        "CHANNEL_LAYERS = {\n"
        "    'default': {\n"
        "        'ENGINE': 'postgres',\n"
        "        'CONFIG': {\n"
        "            'dsn': 'host=127.0.0.1 port=1 dbname=x',\n"
        f"            'credentials': {{'provider': 'static', 'password': {sentinel!r}}},\n"
        f"            {code}\n"
        "        },\n"
        "    },\n"
        "}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "sentinel_settings",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        },
    )
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest.mark.timeout(180)
def test_a_planted_password_never_appears_in_logs_errors_reprs_or_command_output(
    cluster: Cluster,
    prefix: str,
    tmp_path: Path,
    control: rotation_peer.Control,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with capture_every_log() as log:
        found = provoke_disclosures(cluster, prefix, tmp_path, control)
    sentinel = found.sentinel
    assert log.texts
    assert len(found.raised) >= 10
    assert len(found.config_errors) == 5
    assert [text for text in log.texts if found.leaks(text)] == []
    for exc in found.raised + found.config_errors:
        for item in chain(exc):
            assert not found.leaks(str(item)), repr(item)
            assert not found.leaks(repr(item)), repr(item)
        # As Python prints it (the displayed chain), without locals.
        assert not found.leaks("".join(traceback.format_exception(exc)))
    for name, text in found.texts.items():
        assert not found.leaks(text), name
    outputs = {
        "schema": subprocess.run(
            [sys.executable, "-m", "channels_engines.postgres", "schema", "--grant", "someone"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout,
        "check": django_output(tmp_path, sentinel, "", "check"),
        "check --deploy": django_output(tmp_path, sentinel, "", "check", "--deploy"),
        "repr of the layer": django_output(
            tmp_path,
            sentinel,
            "",
            "shell",
            "-c",
            "from channels.layers import get_channel_layer; print(repr(get_channel_layer()))",
        ),
        "a bad setting": django_output(
            tmp_path,
            sentinel,
            "'pool_max_size': 'two',",
            "shell",
            "-c",
            "from channels.layers import get_channel_layer; get_channel_layer()",
        ),
    }
    assert "no issues" in outputs["check"]
    assert "EngineChannelLayer" in outputs["repr of the layer"]
    assert "pool_max_size" in outputs["a bad setting"]
    for name, text in outputs.items():
        assert not found.leaks(text), (name, text)
    with capsys.disabled():
        print(
            f"\n[S5] {len(found.raised) + len(found.config_errors)} exceptions "
            f"({sorted({type(e).__name__ for e in found.raised + found.config_errors})}), "
            f"{len(log.texts)} log records, {len(found.texts)} reprs, {len(outputs)} commands: "
            "no sentinel"
        )


def displayed(summary: traceback.TracebackException) -> Iterator[traceback.TracebackException]:
    """The exceptions Python prints for ``summary``: itself, its cause, its unsuppressed
    context, and theirs."""
    stack = [summary]
    while stack:
        item = stack.pop()
        yield item
        if item.__cause__ is not None:
            stack.append(item.__cause__)
        elif item.__context__ is not None and not item.__suppress_context__:
            stack.append(item.__context__)


def leaks_in_locals(found: Disclosure, errors: list[BaseException]) -> list[str]:
    """Frames (outside this test suite) whose local variables show the sentinel when an
    error is printed with ``capture_locals=True``, as error trackers record them."""
    tests_dir = str(REPO / "tests")
    leaks: set[str] = set()
    for exc in errors:
        summary = traceback.TracebackException.from_exception(exc, capture_locals=True)
        for item in displayed(summary):
            for frame in item.stack:
                if frame.filename.startswith(tests_dir):
                    continue  # the test's own variables hold the sentinel
                for name, value in (frame.locals or {}).items():
                    if found.leaks(value):
                        where = frame.filename.rsplit("site-packages/", 1)[-1]
                        where = where.replace(str(REPO) + "/", "")
                        leaks.add(f"{item.exc_type.__name__}: {where} {frame.name}() {name}")
    return sorted(leaks)


@pytest.fixture
def disclosures(
    cluster: Cluster, prefix: str, tmp_path: Path, control: rotation_peer.Control
) -> Disclosure:
    with capture_every_log():
        return provoke_disclosures(cluster, prefix, tmp_path, control)


@pytest.mark.timeout(180)
def test_a_planted_password_never_appears_in_error_tracebacks_with_local_variables(
    disclosures: Disclosure, capsys: pytest.CaptureFixture[str]
) -> None:
    """Error trackers (Sentry's default) record the local variables of every frame."""
    leaks = leaks_in_locals(disclosures, disclosures.raised)
    with capsys.disabled():
        print("\n[S5 locals, runtime] " + "\n[S5 locals, runtime] ".join(leaks))
    assert leaks == [], "\n".join(leaks)


@pytest.mark.timeout(180)
def test_a_planted_password_never_appears_in_config_error_tracebacks_with_local_variables(
    disclosures: Disclosure, capsys: pytest.CaptureFixture[str]
) -> None:
    leaks = leaks_in_locals(disclosures, disclosures.config_errors)
    with capsys.disabled():
        print("\n[S5 locals, config] " + "\n[S5 locals, config] ".join(leaks))
    assert leaks == [], "\n".join(leaks)


def test_the_layer_config_repr_hides_secret_options(cluster: Cluster) -> None:
    sentinel = "S3NTINEL-pw-" + secrets.token_hex(6)
    layer = EngineChannelLayer(
        ENGINE="postgres",
        dsn=cluster.target,
        credentials={"provider": "static", "user": "someone", "password": sentinel},
    )
    assert sentinel not in repr(layer)
    assert sentinel not in repr(layer.config)


def test_a_password_written_in_place_of_a_provider_name_is_not_echoed() -> None:
    sentinel = "S3NTINEL-pw-" + secrets.token_hex(6)
    with pytest.raises(InvalidConfigError) as info:
        EngineChannelLayer(ENGINE="postgres", dsn="host=127.0.0.1 dbname=x", credentials=sentinel)
    assert sentinel not in str(info.value)


# A refused login is not a reason to keep trying ------------------------------------------------


@pytest.mark.timeout(60)
def test_a_wrong_password_fails_the_send_after_one_retry_with_fresh_credentials(
    cluster: Cluster, prefix: str
) -> None:
    role = cluster.create_role("pw-" + secrets.token_hex(16))
    wrong = {"provider": "static", "user": role, "password": "pw-" + secrets.token_hex(16)}
    config = layer_config(cluster, unique("ce_rot_w"), prefix, wrong, pool_timeout=5.0)
    offset = cluster.log_offset()

    async def scenario() -> None:
        layer = EngineChannelLayer(**config)
        try:
            with pytest.raises(psycopg.OperationalError):
                await layer.send("wrong.password", {"n": 1})
        finally:
            await layer.close()

    run(scenario(), timeout=30)
    refused = cluster.auth_failures(offset)
    # The login, and one retry with credentials fetched afresh.
    assert len(refused) <= 2, f"{len(refused)} failed logins for one send"
