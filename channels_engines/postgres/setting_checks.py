"""What looks wrong in working postgres settings, found without connecting.

Reported by Django's system checks (:mod:`channels_engines.checks`) as
``channels_engines.W001`` (the listener goes through PgBouncer's port) and
``channels_engines.W002`` (connections to another host are not required to be encrypted).
"""

from __future__ import annotations

import ipaddress

from ..contract import EngineConfig, SettingWarning
from .connection import Login

__all__ = ["setting_warnings"]

#: PgBouncer's default port: in transaction or statement mode it cannot keep a LISTEN.
PGBOUNCER_PORT = 6432
_ENCRYPTED = {"require", "verify-ca", "verify-full"}


def setting_warnings(config: EngineConfig, login: Login) -> list[SettingWarning]:
    found = []
    host, port, _ = login.where_to("listen")
    if port == PGBOUNCER_PORT:
        found.append(
            SettingWarning(
                "001",
                f"the listener connects to port {port}, PgBouncer's default. LISTEN needs a "
                "session of its own; a pooler in transaction or statement mode hands each "
                "transaction to any server connection, so notifications never arrive.",
                "Give CONFIG['listen_dsn'] (or 'listen_connection') the server itself, or "
                "a pool in session mode. Sends may keep going through the pooler.",
            )
        )
    for purpose in ("pool", "listen"):
        host, port, sslmode = login.where_to(purpose)
        if not _local(host) and sslmode not in _ENCRYPTED:
            found.append(
                SettingWarning(
                    "002",
                    f"connections to {host}:{port} do not require encryption (sslmode "
                    f"{sslmode or 'prefer, the default'}): the login and the message "
                    "metadata may cross the network in clear text.",
                    "Set sslmode to 'verify-full' (with the server's CA in sslrootcert), or "
                    "at least 'require', in CONFIG['dsn'] / 'connection' or the "
                    "DATABASES alias' OPTIONS.",
                )
            )
            break
    return found


def _local(host: str) -> bool:
    """A Unix socket, libpq's default, or a loopback address or name."""
    if not host or host.startswith("/") or host.startswith("@") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split(",")[0]).is_loopback
    except ValueError:
        return False
