"""The redis engine's CONFIG keys: importable without redis-py, so that settings can be
checked and documented where the client is not installed."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ..credentials import CREDENTIALS_OPTION
from ..options import Option

__all__ = ["OPTIONS", "PREFIX_RULE", "check_prefix", "check_sentinels"]

#: The longest of the engine's intervals and timeouts: a day.
MAX_SECONDS = 86400

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,40}", re.ASCII)
#: What ``prefix`` may be: it starts every key and pub/sub channel name of the layer, so
#: it holds no brace (a Cluster hash tag) and no glob character.
PREFIX_RULE = "1 to 40 characters among letters, digits and _ . : -"


def check_prefix(value: Any) -> str | None:
    """Check a ``prefix``: None when it is allowed, else what is."""
    if isinstance(value, str) and _PREFIX.fullmatch(value):
        return None
    return PREFIX_RULE


#: What ``sentinels`` and ``cluster_nodes`` may be, in words (the option adds "or None").
SENTINELS_RULE = "a non-empty list of 'host:port' strings"


def check_sentinels(value: Any) -> str | None:
    """Check ``sentinels`` (or ``cluster_nodes``): None when allowed, else what is."""
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or not value
        or any(parse_address(item) is None for item in value)
    ):
        return f"{SENTINELS_RULE} or None"
    return None


def parse_address(value: Any) -> tuple[str, int] | None:
    """``'host:port'`` as a pair, or None."""
    if not isinstance(value, str):
        return None
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


OPTIONS: Mapping[str, Option] = {
    "credentials": dataclasses.replace(
        CREDENTIALS_OPTION,
        help="Credential provider asked for the login of every new connection: a "
        "registered name, a dotted path, a CredentialProvider instance, or "
        "{'provider': NAME, **options}. None: the login in 'url', if any.",
    ),
    "url": Option(
        (str,),
        "redis://127.0.0.1:6379/0",
        "redis://, rediss:// (TLS) or unix:// URL of the server (default "
        "redis://127.0.0.1:6379/0); a password in it is a fixed login (use 'credentials' "
        "for one that rotates).",
        secret=True,
    ),
    "sentinels": Option(
        (list, tuple),
        None,
        "Redis Sentinels to ask for the primary of 'service_name', as 'host:port' "
        "strings; 'url' then gives only the scheme, login and database (its host and "
        "port are not used).",
        nullable=True,
        check=check_sentinels,
        describe_as=SENTINELS_RULE,
    ),
    "service_name": Option(
        (str,),
        None,
        "The name the Sentinels monitor the primary under (with 'sentinels').",
        nullable=True,
    ),
    "cluster_nodes": Option(
        (list, tuple),
        None,
        "Nodes of a Redis Cluster (7.0 or later) to learn its layout from, as 'host:port' "
        "strings (one is enough; more are tried in turn); 'url' then gives only the "
        "scheme and login.",
        nullable=True,
        check=check_sentinels,
        describe_as=SENTINELS_RULE,
    ),
    "tls_ca_file": Option(
        (str,),
        None,
        "With a rediss:// URL: a PEM file of the certificate authorities to trust for the "
        "server's certificate (None: the system's).",
        nullable=True,
    ),
    "tls_cert_file": Option(
        (str,),
        None,
        "With a rediss:// URL: a PEM file of the client certificate, for a server that "
        "asks for one (with 'tls_key_file').",
        nullable=True,
    ),
    "tls_key_file": Option(
        (str,),
        None,
        "With a rediss:// URL: the PEM file of the client certificate's private key.",
        nullable=True,
    ),
    "sentinel_credentials": dataclasses.replace(
        CREDENTIALS_OPTION,
        help="Credential provider for the login of the Sentinels themselves (their "
        "requirepass or ACL user), in the same forms as 'credentials'. None: they ask "
        "for none.",
    ),
    "prefix": Option(
        (str,),
        "channels_engines",
        "First part of every key and pub/sub channel of the layer: layers with different "
        "prefixes share a server without seeing each other.",
        check=check_prefix,
    ),
    "pool_max_size": Option(
        (int,),
        2,
        "Most command connections per process and event loop (with 2 or more, one is kept "
        "by the writer that stores messages), besides the one pub/sub connection of a "
        "process that receives.",
        minimum=1,
    ),
    "pool_timeout": Option(
        (float,),
        10.0,
        "Seconds an operation may take in all, waiting for a connection and retrying on a "
        "fresh one included, before it fails.",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "query_timeout": Option(
        (float,),
        5.0,
        "Seconds the server may take to answer one round trip; past it the connection is "
        "dropped and the work retried on a fresh one or failed.",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "heartbeat_interval": Option(
        (float,),
        5.0,
        "Seconds of silence after which the pub/sub connection is checked with a PING.",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "heartbeat_timeout": Option(
        (float,),
        3.0,
        "Seconds that PING may take before the pub/sub connection is replaced.",
        above=0,
        maximum=MAX_SECONDS,
    ),
    "sweep_interval": Option(
        (float,),
        5.0,
        "Seconds between safety reads that deliver a message even if its notification was lost.",
        above=0,
        maximum=MAX_SECONDS,
    ),
}
