"""The redis engine as operators see it: ``manage.py channels_engines check|stats|purge-expired``.

Each view uses one connection of its own per server (per primary, in a cluster), with
the layer's login and deadlines, and closes them after. What needs attention on a Redis
server that carries channel layers:

- an eviction policy other than ``noeviction``: under memory pressure Redis would delete
  streams and memberships, which loses messages and group members silently;
- no persistence: a restart empties the server (the engine reports it to hooks as
  ``may_have_missed``), which may be what you want for transient messages.

The layer needs no schema: its keys are made as they are used.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..inspection import Purged, ServerReport, Stats, StatsTable

if TYPE_CHECKING:
    from .engine import RedisEngine

__all__ = ["RedisInspection"]

#: Rows shown in the tables of queues and groups (the largest first).
TOP = 20
#: Keys read per SCAN, and per pipeline of sizes.
_SCAN = 1000
_NO_SCHEMA = "the redis engine needs no schema: its keys are made as they are used"


class RedisInspection:
    """The :class:`~channels_engines.inspection.Inspection` of one redis engine."""

    def __init__(self, engine: RedisEngine) -> None:
        options = engine.config.options
        self._engine = engine
        self._keys = engine.shared.keys
        self._timeout = float(options["query_timeout"])
        #: A process holds at most its command connections and one pub/sub connection.
        self._per_process = int(options["pool_max_size"]) + 1

    @contextlib.asynccontextmanager
    async def _clients(self) -> AsyncIterator[list[Any]]:
        """A client for each server that holds keys: the server, or every primary."""
        servers = self._engine.shared.login.servers(
            connections=1,
            wait=float(self._engine.config.options["pool_timeout"]),
            timeout=self._timeout,
        )
        try:
            yield await servers.every()
        finally:
            await servers.close()

    async def server(self) -> ServerReport:
        """The server, or the primary of a cluster with the fewest connections to spare
        (every process may connect to every primary)."""
        reports: list[ServerReport] = []
        warnings: list[str] = []
        async with self._clients() as clients:
            for client in clients:
                report, found = await self._server(client)
                reports.append(report)
                warnings += [_on(client, clients, text) for text in found]
        tightest = min(
            reports, key=lambda r: (r.connection_limit or 1 << 62) - (r.in_use_by_others or 0)
        )
        return ServerReport(
            version=tightest.version,
            per_process=self._per_process,
            connection_limit=tightest.connection_limit,
            in_use_by_others=tightest.in_use_by_others,
            warnings=tuple(warnings),
        )

    async def _server(self, client: Any) -> tuple[ServerReport, list[str]]:
        server = await client.info("server")
        clients = await client.info("clients")
        limit = _setting(await client.config_get("maxclients"), "maxclients") or "0"
        ours = await client.client_list()
        warnings = await _server_warnings(client)
        in_use = int(clients.get("connected_clients", 0))
        mine = sum(1 for entry in ours if entry.get("name") == "channels_engines")
        report = ServerReport(
            version=f"Redis {server.get('redis_version', '?')}",
            per_process=self._per_process,
            connection_limit=int(limit),
            in_use_by_others=max(0, in_use - mine - 1),  # less this inspection's own
            warnings=(),
        )
        return report, warnings

    async def stats(self) -> Stats:
        keys = self._keys
        streams: list[tuple[str, str, int]] = []
        groups: list[tuple[str, int]] = []
        memory: list[str] = []
        ours: list[dict[str, Any]] = []
        warnings: list[str] = []
        async with self._clients() as clients:
            for client in clients:
                found: list[str] = []
                async for key in client.scan_iter(match=keys.pattern, count=_SCAN):
                    found.append(_text(key))
                pipe = client.pipeline(transaction=False)
                described: list[tuple[str, str]] = []
                for key in found:
                    kind, name = _describe(keys.prefix, key)
                    if kind in ("in", "ch"):
                        pipe.xlen(key)
                        described.append((kind, name))
                    elif kind == "group":
                        pipe.zcard(key)
                        described.append((kind, name))
                sizes = await pipe.execute() if described else []
                for (kind, name), size in zip(described, sizes, strict=True):
                    if kind == "group":
                        groups.append((name, int(size)))
                    else:
                        kind_name = "process" if kind == "in" else "normal"
                        streams.append((name, kind_name, int(size)))
                memory.append(str((await client.info("memory")).get("used_memory_human", "?")))
                ours += await client.client_list()
                found_warnings = await _server_warnings(client)
                warnings += [_on(client, clients, text) for text in found_warnings]
        streams.sort(key=lambda row: (-row[2], row[0]))
        groups.sort(key=lambda row: (-row[1], row[0]))
        sessions: dict[str, int] = {}
        for entry in ours:
            name = entry.get("name") or ""
            kind = "pub/sub" if int(entry.get("sub", 0) or 0) else "commands"
            sessions[f"{name} ({kind})"] = sessions.get(f"{name} ({kind})", 0) + 1
        return Stats(
            tables=(
                StatsTable(
                    "Summary",
                    ("messages waiting", "queues", "groups", "members", "memory used"),
                    (
                        (
                            sum(size for *_, size in streams),
                            len(streams),
                            len(groups),
                            sum(size for _, size in groups),
                            " + ".join(memory),
                        ),
                    ),
                ),
                StatsTable(
                    f"Queues (the {TOP} with most messages waiting)",
                    ("queue", "kind", "waiting"),
                    tuple(streams[:TOP]),
                ),
                StatsTable(
                    f"Groups (the {TOP} with most members)",
                    ("group", "members"),
                    tuple(groups[:TOP]),
                ),
                StatsTable(
                    "Connections by client name",
                    ("client", "connections"),
                    tuple(sorted(sessions.items())),
                ),
            ),
            warnings=tuple(warnings),
        )

    async def purge_expired(self) -> Purged:
        """Trim expired entries from every stream and expired memberships from every
        group now (the scripts do it as they go; keys expire with their last entry)."""
        keys = self._keys
        expiry_ms = int(self._engine.config.expiry * 1000)
        removed = {"messages": 0, "memberships": 0}
        async with self._clients() as clients:
            for client in clients:
                now_seconds, now_micros = await client.time()
                now_ms = int(now_seconds) * 1000 + int(now_micros) // 1000
                async for key in client.scan_iter(match=keys.pattern, count=_SCAN):
                    kind, _ = _describe(keys.prefix, _text(key))
                    if kind in ("in", "ch"):
                        removed["messages"] += int(
                            await client.xtrim(key, minid=now_ms - expiry_ms, approximate=False)
                        )
                    elif kind == "group":
                        removed["memberships"] += int(
                            await client.zremrangebyscore(key, "-inf", now_ms)
                        )
        return Purged(removed)

    def schema_script(self, grant_to: str | None = None) -> str:
        raise NotImplementedError(
            "the redis engine needs no schema: its keys are made as they are used"
        )

    async def apply_schema(self, grant_to: str | None = None) -> None:
        raise NotImplementedError(
            "the redis engine needs no schema: its keys are made as they are used"
        )


def _on(client: Any, clients: list[Any], text: str) -> str:
    """A warning about one server, naming it when there are several (a cluster)."""
    if len(clients) == 1:
        return text
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}: {text}"


async def _server_warnings(client: Any) -> list[str]:
    policy = _setting(await client.config_get("maxmemory-policy"), "maxmemory-policy")
    save = _setting(await client.config_get("save"), "save")
    persistence = await client.info("persistence")
    return _warnings(_text(policy), bool(int(persistence.get("aof_enabled", 0) or 0)), _text(save))


def _warnings(policy: str, aof: bool, save: str) -> list[str]:
    found = []
    if policy and policy != "noeviction":
        found.append(
            f"maxmemory-policy is {policy}: when the server runs out of memory it deletes "
            "keys, and with them messages and group memberships, without a word. Set "
            "maxmemory-policy noeviction (sends then fail with an error instead), or give "
            "the layer a server of its own."
        )
    if not aof and not save.strip():
        found.append(
            "the server keeps nothing on disk: a restart loses every message not yet "
            "received and every group membership."
        )
    return found


def _describe(prefix: str, key: str) -> tuple[str, str]:
    """The kind of one of the layer's keys ("in", "ch", "group", ...) and its name."""
    rest = key[len(prefix) + 1 :]
    kind, _, tagged = rest.partition(":")
    return kind, tagged.strip("{}")


def _setting(found: dict[Any, Any], name: str) -> str:
    """One value of CONFIG GET, whether the client decoded its answer or not."""
    return _text(found.get(name, found.get(name.encode(), b"")))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
