"""The postgres engine as operators see it: ``manage.py channels_engines stats`` and the rest.

Each view opens one connection of its own with the layer's login (never the pool, which
would create tables and start the periodic cleanup as a side effect) and closes it
after. Every query has the layer's ``query_timeout``.

The tables churn: every message is a row inserted and deleted within milliseconds, so
they depend on autovacuum. With autovacuum off, a table of zero live rows grows by tens
of thousands of dead rows a minute; ``check`` and ``stats`` warn about that.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..inspection import Purged, ServerReport, Stats, StatsTable
from .deadlines import fetch, transaction
from .schema import Tables

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .engine import PostgresEngine

__all__ = ["PostgresInspection", "vacuum_warnings"]

#: Rows shown in the tables of queues and groups (the largest first).
TOP = 20
#: Dead rows beyond this multiple of a table's autovacuum threshold mean autovacuum is
#: not keeping up (it should have visited the table at 1x).
BEHIND = 10
#: ...provided it has not visited the table within this many seconds either.
BEHIND_FOR = 600.0
_TABLES = ("message", "group_member", "claimed", "group_stream", "control")

_SERVER = """
SELECT current_setting('server_version'),
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       r.rolsuper, r.rolconnlimit, d.datconnlimit,
       (SELECT count(*) FROM pg_stat_activity a
         WHERE a.backend_type = 'client backend'
           AND a.application_name IS DISTINCT FROM current_setting('application_name')),
       current_setting('autovacuum'), current_setting('track_counts')
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()
"""

# Per table: size, live and dead rows, vacuums, whether autovacuum may visit it, and the
# number of dead rows at which it should (threshold + scale factor x live rows).
_STORAGE = """
SELECT t.name, pg_total_relation_size(c.oid), s.n_live_tup, s.n_dead_tup,
       s.last_vacuum, s.last_autovacuum,
       coalesce(o.enabled, 'on') NOT IN ('off', 'false', 'no', '0'),
       coalesce(o.threshold, current_setting('autovacuum_vacuum_threshold')::float8)
       + coalesce(o.scale, current_setting('autovacuum_vacuum_scale_factor')::float8)
         * s.n_live_tup,
       extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum))
FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(regname, name, ord)
JOIN pg_class c ON c.oid = to_regclass(t.regname)
LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
LEFT JOIN LATERAL (
  SELECT max(option_value) FILTER (WHERE option_name = 'autovacuum_enabled') AS enabled,
         max(option_value::float8)
           FILTER (WHERE option_name = 'autovacuum_vacuum_threshold') AS threshold,
         max(option_value::float8)
           FILTER (WHERE option_name = 'autovacuum_vacuum_scale_factor') AS scale
  FROM pg_options_to_table(c.reloptions)) o ON true
ORDER BY t.ord
"""


class PostgresInspection:
    """The :class:`~channels_engines.inspection.Inspection` of one postgres engine."""

    def __init__(self, engine: PostgresEngine) -> None:
        options = engine.config.options
        self._engine = engine
        self._login = engine.shared.login
        self._statements = engine.shared.statements
        self._tables = Tables(options["schema"], options["table_prefix"], options["unlogged"])
        self._timeout = float(options["query_timeout"])
        self._connect_timeout = float(options["pool_timeout"])
        #: A process holds at most its pool and one LISTEN connection.
        self._per_process = int(options["pool_max_size"]) + 1

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
        conn = await self._login.connect("pool", self._connect_timeout)
        try:
            yield conn
        finally:
            await conn.close()

    async def _fetch(
        self, conn: AsyncConnection[tuple[Any, ...]], statement: str, params: Any, what: str
    ) -> list[tuple[Any, ...]]:
        return await fetch(conn, statement, params, timeout=self._timeout, what=what)

    def _names(self) -> tuple[list[str], list[str]]:
        """The tables' qualified names (for to_regclass) and their plain names."""
        qualified = [self._tables.name(table).as_string(None) for table in _TABLES]
        return qualified, [self._tables.prefix + table for table in _TABLES]

    async def server(self) -> ServerReport:
        async with self._connection() as conn:
            (row,) = await self._fetch(conn, _SERVER, None, "reading the server's limits")
            storage = await self._fetch(conn, _STORAGE, self._names(), "reading table statistics")
        version, max_conn, su_reserved, reserved, superuser, role_limit, db_limit, others = row[:8]
        limit = max_conn if superuser else max_conn - su_reserved - reserved
        for extra in (role_limit, db_limit):
            if extra is not None and extra >= 0:
                limit = min(limit, extra)
        return ServerReport(
            version=f"PostgreSQL {version}",
            per_process=self._per_process,
            connection_limit=int(limit),
            in_use_by_others=int(others),
            warnings=tuple(vacuum_warnings(row[8], row[9], storage)),
        )

    async def stats(self) -> Stats:
        message = self._tables.name("message").as_string(None)
        member = self._tables.name("group_member").as_string(None)
        queries = _StatsQueries(self._tables)
        expiry = float(self._engine.config.expiry)
        async with self._connection() as conn:
            (server,) = await self._fetch(
                conn,
                "SELECT current_setting('autovacuum'), current_setting('track_counts'),"
                " current_setting('application_name')",
                None,
                "reading the server's settings",
            )
            present = await self._fetch(
                conn, "SELECT to_regclass(%s), to_regclass(%s)", [message, member], "the tables"
            )
            if not all(present[0]):
                return Stats(
                    tables=(),
                    warnings=(
                        f"the tables {message} and {member} do not exist yet: they are "
                        "created at first use, by `manage.py migrate channels_engines`, or "
                        "by `manage.py channels_engines schema --apply`.",
                    ),
                )
            # Both tables are read in one snapshot, so the summary adds up.
            async with transaction(conn, self._timeout, "reading the tables"):
                await self._fetch(
                    conn,
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                    None,
                    "starting a snapshot",
                )
                queues = await self._fetch(
                    conn, queries.queues, [expiry, TOP], "counting messages per queue"
                )
                groups = await self._fetch(conn, queries.groups, [TOP], "counting group members")
                (totals,) = await self._fetch(
                    conn, queries.totals, [expiry], "counting messages and groups"
                )
            sessions = await self._fetch(
                conn,
                "SELECT coalesce(application_name, ''), coalesce(state, ''), count(*),"
                " application_name = current_setting('application_name')"
                " FROM pg_stat_activity"
                " WHERE datname = current_database() AND backend_type = 'client backend'"
                " AND pid <> pg_backend_pid()"
                " GROUP BY 1, 2, 4 ORDER BY 4 DESC, 1, 2",
                None,
                "counting sessions",
            )
            storage = await self._fetch(conn, _STORAGE, self._names(), "reading table statistics")
        waiting, queue_count, oldest, expired, group_count, memberships = totals
        return Stats(
            tables=(
                StatsTable(
                    "Summary",
                    ("messages waiting", "queues", "oldest (s)", "expired", "groups", "members"),
                    ((waiting, queue_count, _seconds(oldest), expired, group_count, memberships),),
                ),
                StatsTable(
                    f"Queues (the {TOP} with most messages waiting)",
                    ("queue", "waiting", "oldest (s)", "next expiry in (s)"),
                    tuple((q, n, _seconds(age), _seconds(left)) for q, n, age, left in queues),
                ),
                StatsTable(
                    f"Groups (the {TOP} with most members)",
                    ("group", "members", "in processes", "next expiry in (s)"),
                    tuple((g, n, p, _seconds(left)) for g, n, p, left in groups),
                ),
                StatsTable(
                    "Sessions in this database",
                    ("application_name", "state", "sessions", "this layer"),
                    tuple((a, s, n, "yes" if ours else "") for a, s, n, ours in sessions),
                ),
                StatsTable(
                    "Tables",
                    (
                        "table",
                        "size (kB)",
                        "live rows",
                        "dead rows",
                        "last vacuum",
                        "last autovacuum",
                    ),
                    tuple(
                        (name, -(-int(size) // 1024), live, dead, _when(vacuum), _when(autovacuum))
                        for name, size, live, dead, vacuum, autovacuum, *_ in storage
                    ),
                ),
            ),
            warnings=tuple(vacuum_warnings(server[0], server[1], storage)),
        )

    async def purge_expired(self) -> Purged:
        from .maintenance import Maintenance

        @contextlib.asynccontextmanager
        async def connection(timeout: float | None = None) -> AsyncIterator[Any]:
            async with self._connection() as conn:
                yield conn

        async def nothing() -> None:
            return None

        cleanup = Maintenance(
            interval=0.0,
            cleanup_interval=0.0,
            housekeeping=nothing,
            connection=connection,
            statements=self._statements,
            expired_channels=tuple,
            query_timeout=self._timeout,
            pool_timeout=self._connect_timeout,
        )
        return await cleanup.cleanup()

    def schema_script(self, grant_to: str | None = None) -> str:
        grants = self._tables.grant_script(grant_to) if grant_to else ""
        # One transaction: `psql -f` applies all of it or, after any error, none of it.
        return f"BEGIN;\n{self._tables.create_script()}{grants}COMMIT;\n"

    async def apply_schema(self, grant_to: str | None = None) -> None:
        statements = self._statements
        grants = self._tables.grant_script(grant_to) if grant_to else ""
        async with (
            self._connection() as conn,
            transaction(conn, self._timeout, "creating the tables"),
        ):
            # The lock processes take to create tables at first use.
            await self._fetch(
                conn, "SELECT pg_advisory_xact_lock(%s)", [statements.ddl_lock], "the lock"
            )
            for statement in statements.create:
                await self._fetch(conn, statement, None, "creating the tables")
            for grant in filter(None, grants.split(";\n")):
                await self._fetch(conn, grant, None, "granting rights")
        # Processes of this layer check the tables again at their next first use.
        self._engine.shared.tables.ready = False


class _StatsQueries:
    """The statements of ``stats`` for one set of tables. Ages are estimated from the
    expiry time and this layer's ``expiry`` (rows keep no send time)."""

    def __init__(self, tables: Tables) -> None:
        def render(template: str) -> str:
            return (
                sql.SQL(template)
                .format(message=tables.name("message"), member=tables.name("group_member"))
                .as_string(None)
            )

        self.queues = render(
            "SELECT queue, count(*), %s - extract(epoch FROM min(expires_at) - now()),"
            " extract(epoch FROM min(expires_at) - now())"
            " FROM {message} GROUP BY queue ORDER BY 2 DESC, 1 LIMIT %s"
        )
        self.groups = render(
            "SELECT group_name, count(*), count(*) FILTER (WHERE strpos(queue, '!') > 0),"
            " extract(epoch FROM min(expires_at) - now())"
            " FROM {member} GROUP BY group_name ORDER BY 2 DESC, 1 LIMIT %s"
        )
        self.totals = render(
            "SELECT (SELECT count(*) FROM {message}),"
            " (SELECT count(DISTINCT queue) FROM {message}),"
            " (SELECT %s - extract(epoch FROM min(expires_at) - now()) FROM {message}),"
            " (SELECT count(*) FROM {message} WHERE expires_at <= now()),"
            " (SELECT count(DISTINCT group_name) FROM {member}),"
            " (SELECT count(*) FROM {member})"
        )


def vacuum_warnings(
    autovacuum: str, track_counts: str, storage: Sequence[Sequence[Any]]
) -> list[str]:
    """What ``check`` and ``stats`` say about vacuuming, from the server's settings and
    :data:`_STORAGE`'s rows."""
    found = []
    if autovacuum != "on" or track_counts != "on":
        setting = "autovacuum" if autovacuum != "on" else "track_counts"
        found.append(
            f"{setting} is off on the server: nothing removes the dead rows the layer's "
            "tables leave behind (every message leaves one), so they grow without bound. "
            f"Turn {setting} on, or run VACUUM on the tables every minute or so."
        )
    for name, _size, live, dead, _vacuum, _auto, enabled, threshold, since in storage:
        if not enabled:
            found.append(
                f"autovacuum is off for table {name} (autovacuum_enabled = off): its dead "
                f"rows ({dead or 0} now) are never removed. Run ALTER TABLE {name} "
                "RESET (autovacuum_enabled)."
            )
        elif (
            dead is not None
            and dead > BEHIND * max(threshold or 0.0, 1.0)
            and (since is None or since > BEHIND_FOR)
        ):
            last = "never" if since is None else f"{since / 60:.0f} min ago"
            found.append(
                f"autovacuum is not keeping up with table {name}: {dead} dead rows beside "
                f"{live} live ones, last vacuumed {last}. Check for long transactions "
                "(pg_stat_activity.xact_start) and idle-in-transaction sessions, which "
                "keep dead rows from being removed; raise autovacuum_max_workers or lower "
                "autovacuum_vacuum_cost_delay if the workers are busy elsewhere."
            )
    return found


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def _when(value: datetime.datetime | None) -> str | None:
    return (
        None
        if value is None
        else value.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")
    )
