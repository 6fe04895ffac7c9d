"""The postgres engine's CONFIG keys: importable without psycopg, so that settings can be
checked and documented where the driver is not installed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..credentials import CREDENTIALS_OPTION
from ..options import Option

__all__ = ["IDENTIFIER_RULE", "OPTIONS", "check_identifier"]

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*", re.ASCII)


#: The longest of the engine's intervals and timeouts: a day.
MAX_SECONDS = 86400


#: What ``schema`` and ``table_prefix`` may be. 40 characters leave room for the longest
#: suffix ("group_member_expires_at") within PostgreSQL's 63 bytes, so that no name is
#: truncated into another.
IDENTIFIER_RULE = "a lower-case SQL identifier of at most 40 characters ([a-z_][a-z0-9_]*)"


def check_identifier(value: Any) -> str | None:
    """Check a ``schema`` or ``table_prefix``: None when it is allowed, else what is."""
    if isinstance(value, str) and _IDENTIFIER.fullmatch(value) and len(value) <= 40:
        return None
    return IDENTIFIER_RULE


OPTIONS: Mapping[str, Option] = {
    "credentials": CREDENTIALS_OPTION,
    "database": Option(
        (str,),
        None,
        "DATABASES alias whose connection settings (through its own backend) are reused; "
        "'default' when neither 'dsn' nor 'connection' is given.",
        nullable=True,
    ),
    "dsn": Option(
        (str,),
        None,
        "libpq connection string or postgresql:// URL.",
        nullable=True,
        secret=True,
    ),
    "connection": Option(
        (dict,),
        None,
        "libpq keywords (host, port, dbname, user, sslmode, ...); added to or overriding 'dsn'.",
        nullable=True,
        secret=True,
    ),
    "listen_dsn": Option(
        (str,),
        None,
        "Separate target for the LISTEN connection, e.g. the primary "
        "directly when 'dsn' goes through PgBouncer in transaction mode.",
        nullable=True,
        secret=True,
    ),
    "listen_connection": Option(
        (dict,),
        None,
        "libpq keywords for the LISTEN connection.",
        nullable=True,
        secret=True,
    ),
    "pool_min_size": Option((int,), 1, "Connections the pool keeps open.", minimum=0),
    "pool_max_size": Option(
        (int,),
        2,
        "Most connections the pool opens (per process and event loop), "
        "besides the one LISTEN connection; also how many idle ones an ending "
        "event loop (async_to_sync) leaves open for the next.",
        minimum=1,
    ),
    "pool_timeout": Option(
        (float,),
        10.0,
        "Seconds an operation may take in all, waiting for a pool connection and "
        "retrying on a fresh one included, before it fails.",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "query_timeout": Option(
        (float,),
        5.0,
        "Seconds the server may take to answer one round trip (a send batch, a claim, a "
        "membership change); past it the connection is abandoned and the work retried "
        "on a fresh one or failed.",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "heartbeat_interval": Option(
        (float,),
        5.0,
        "Seconds of silence after which the listener checks its connection "
        "(keep it below any idle_session_timeout or proxy idle timeout).",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "heartbeat_timeout": Option(
        (float,),
        3.0,
        "Seconds the listener's check may take before the connection is replaced.",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "sweep_interval": Option(
        (float,),
        5.0,
        "Seconds between safety claims that deliver a message even if its notification was lost.",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "cleanup_interval": Option(
        (float,),
        30.0,
        "Seconds between removals of expired messages and memberships (one process at a time).",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "schema": Option(
        (str,),
        None,
        "Schema of the tables; None uses the search_path.",
        nullable=True,
        check=check_identifier,
    ),
    "table_prefix": Option(
        (str,),
        "channels_engines_",
        "Prefix of the table names.",
        check=check_identifier,
    ),
    "create_tables": Option(
        (bool,),
        True,
        "Create missing tables at first use (needs CREATE on the schema); "
        "set False when tables come from migrations or a DBA.",
    ),
    "unlogged": Option(
        (bool,),
        True,
        "Create the message table UNLOGGED: faster, survives clean restarts, "
        "emptied by a server crash. Group memberships are always logged.",
    ),
}
