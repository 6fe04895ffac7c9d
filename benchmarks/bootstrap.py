"""Create the benchmark's own role and database when missing. Never drops anything."""

from __future__ import annotations

import psycopg
from psycopg import sql

from benchmarks.config import BENCH_ROLE, BENCH_ROLE_CONNECTION_LIMIT, Servers


def ensure_database(servers: Servers) -> list[str]:
    """Make the subject DSN usable; returns what was created (for the log)."""
    created: list[str] = []
    user = servers.pg.get("user", "")
    dbname = servers.pg.get("dbname", "")
    with psycopg.connect(servers.admin_dsn, autocommit=True) as admin:
        if user == BENCH_ROLE and not _exists(admin, "pg_roles", "rolname", user):
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER CONNECTION LIMIT {}").format(
                    sql.Identifier(user), sql.Literal(BENCH_ROLE_CONNECTION_LIMIT)
                )
            )
            created.append(f"role {user} (CONNECTION LIMIT {BENCH_ROLE_CONNECTION_LIMIT})")
        if dbname and not _exists(admin, "pg_database", "datname", dbname):
            owner = sql.SQL(" OWNER {}").format(sql.Identifier(user)) if user else sql.SQL("")
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)) + owner)
            created.append(f"database {dbname}")
    return created


def _exists(conn: psycopg.Connection, table: str, column: str, value: str) -> bool:
    query = sql.SQL("SELECT 1 FROM {} WHERE {} = %s").format(
        sql.Identifier(table), sql.Identifier(column)
    )
    return conn.execute(query, (value,)).fetchone() is not None
