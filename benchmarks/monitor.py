"""Orchestrator-side measurement of worker processes: server connections, CPU, memory.

A worker's server connections are its established TCP sockets to the server port
(psutil), confirmed on the server side: PostgreSQL rows in pg_stat_activity with the
same client_port, Redis CLIENT LIST entries with the same address. The monitor uses its
own admin connection, which never matches a worker's ports.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg
import redis

from benchmarks.config import Servers


class Monitor:
    """Server-side views used between phases; never called per message."""

    def __init__(self, servers: Servers) -> None:
        self._pg = psycopg.connect(servers.admin_dsn, autocommit=True)
        self._redis = redis.Redis.from_url(servers.redis_url)
        self.pg_db = servers.pg.get("dbname", "")
        self.ports = {
            "postgres": int(servers.pg.get("port") or 5432),
            "redis": urlsplit(servers.redis_url).port or 6379,
        }

    def client_ports(self, pid: int, server: str) -> set[int]:
        """Local ports of the process' established TCP connections to the server."""
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return set()
        port = self.ports[server]
        return {
            conn.laddr.port
            for conn in sockets
            if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
        }

    def server_connections(self, pid: int, server: str) -> int:
        """Connections the server itself attributes to this process."""
        ports = self.client_ports(pid, server)
        if not ports:
            return 0
        if server == "postgres":
            row = self._pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)",
                (list(ports),),
            ).fetchone()
            return int(row[0]) if row else 0
        clients = self._redis.client_list()
        return sum(1 for client in clients if int(client["addr"].rsplit(":", 1)[1]) in ports)

    def server_cpu(self, server: str) -> dict[int, float]:
        """CPU seconds so far of each server process working for the bench.

        PostgreSQL: every client backend on the bench database (a LISTEN connection's
        backend also does the work of delivering notifications to it). Redis: the server
        process, all threads. Both servers run on this host, so /proc is readable; the
        difference of two readings (`cpu_between`) is the server's CPU for a window.
        """
        if server == "postgres":
            rows = self._pg.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (self.pg_db,),
            ).fetchall()
            pids = [int(row[0]) for row in rows]
        else:
            pids = [int(self._redis.info("server")["process_id"])]
        readings = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error, OSError):
                readings[pid] = cpu_seconds(pid)
        return readings

    def wait_quiet(self, timeout: float = 10.0) -> int:
        """Wait until no client backend is left on the bench database; returns leftovers."""
        deadline = time.monotonic() + timeout
        while True:
            row = self._pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (self.pg_db,),
            ).fetchone()
            left = int(row[0]) if row else 0
            if left == 0 or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    def clean_redis(self, prefix: str) -> int:
        """Delete only the benchmark's own keys; returns how many."""
        keys = list(self._redis.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            self._redis.delete(*keys)
        return len(keys)

    def versions(self) -> dict[str, str]:
        """Server versions for the report header."""
        row = self._pg.execute("SHOW server_version").fetchone()
        info = self._redis.info("server")
        return {"postgresql": str(row[0]) if row else "?", "redis": str(info["redis_version"])}

    def close(self) -> None:
        """Release the admin connections."""
        self._pg.close()
        self._redis.close()


def cpu_between(start: dict[int, float], end: dict[int, float]) -> float:
    """Server CPU seconds spent between two `server_cpu` readings.

    A backend that started in between counts from zero (its start-up is work the window
    caused); one that ended in between is missing from `end`, so its last part is lost:
    the number is a lower bound for layers that open and close connections.
    """
    return sum(seconds - start.get(pid, 0.0) for pid, seconds in end.items())


def cpu_seconds(pid: int) -> float:
    """CPU time consumed so far by the process, all threads, in seconds.

    Linux' /proc/<pid>/task/*/schedstat counts nanoseconds, so a 0.5 % budget can be
    read over a few seconds; psutil's clock ticks (10 ms) are the fallback.
    """
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total_ns += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    return total_ns / 1e9


def rss_mib(pid: int) -> float:
    """Resident set size in MiB."""
    return float(psutil.Process(pid).memory_info().rss) / 2**20


class ConnectionSampler:
    """Background thread recording the peak number of a process' server sockets.

    Sampling reads /proc from this (orchestrator) process: it measures, it never
    synchronises or wakes the worker.
    """

    def __init__(self, monitor: Monitor, pid: int, server: str, interval: float = 0.02) -> None:
        self._monitor, self._pid, self._server, self._interval = monitor, pid, server, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            count = len(self._monitor.client_ports(self._pid, self._server))
            self.peak = max(self.peak, count)
