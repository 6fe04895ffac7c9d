"""The subjects: each a plain dict a worker can rebuild its layer from.

`ours()` is the single place that says how channels_engines is configured; the harness
reports it as "unavailable: <error>" until the package imports and works.
"""

from __future__ import annotations

import secrets
from typing import Any

from benchmarks.config import Servers

Payload = dict[str, Any]

OURS = "channels_engines"
#: Ours with encryption at the layer turned off: beside OURS it gives the cost of encryption.
OURS_PLAIN = "channels_engines_plain"
#: Ours with the built-in hooks: beside OURS they give the cost of each hook.
OURS_PROMETHEUS = "channels_engines_prometheus"
OURS_OTEL = "channels_engines_otel"
#: Ours with the redis engine, compared with the Redis subjects of the same run.
OURS_REDIS = "channels_engines_redis"
#: The configurations of ours on the postgres engine; OURS is the one compared with peers.
OURS_POSTGRES = (OURS, OURS_PLAIN, OURS_PROMETHEUS, OURS_OTEL)
#: Every configuration of ours the run measures, whatever the engine.
OURS_ALL = (*OURS_POSTGRES, OURS_REDIS)
#: Every worker process of every Django subject gets this same key, so a layer that derives
#: its encryption key from SECRET_KEY can open what another process sealed.
SECRET_KEY = "channels-engines-benchmarks-fixed-secret-key-for-every-worker-process"
#: Key prefix of the channels_redis layers, so cleaning never touches other keys. Our
#: redis engine's prefix starts with it too (see `ours_redis`).
REDIS_PREFIX = "benchce"
#: The spec's usual capacity (100 per channel, shared by all "!" channels of a process)
#: would turn throughput runs into drop tests: group messages over capacity are silently
#: discarded. Every layer that enforces a capacity gets this one; the others have none.
CAPACITY = 100_000


def ours(servers: Servers) -> Payload:
    """channels_engines with its default PostgreSQL engine."""
    return _ours(
        OURS, servers, {}, f"ours: EngineChannelLayer, ENGINE=postgres (capacity={CAPACITY})"
    )


def ours_plain(servers: Servers) -> Payload:
    """Ours with `encryption_keys: False`.

    A version of the layer without encryption rejects the key; the subject is then
    skipped (see prepare.py), so the harness runs on both sides of that change.
    """
    subject = _ours(
        OURS_PLAIN,
        servers,
        {"encryption_keys": False},
        f"ours without encryption: EngineChannelLayer, ENGINE=postgres, encryption_keys=False "
        f"(capacity={CAPACITY})",
    )
    return {**subject, "skip_if_rejected": "encryption_keys"}


def ours_prometheus(servers: Servers) -> Payload:
    """Ours with the Prometheus hook (the process's default registry)."""
    subject = _ours(
        OURS_PROMETHEUS,
        servers,
        {"hooks": ["prometheus"]},
        f"ours with the Prometheus hook: EngineChannelLayer, ENGINE=postgres, "
        f'hooks=["prometheus"] (capacity={CAPACITY})',
    )
    return {**subject, "skip_if_rejected": "hooks"}


def ours_otel(servers: Servers) -> Payload:
    """Ours with the OpenTelemetry hook, recording spans with the SDK (no exporter)."""
    subject = _ours(
        OURS_OTEL,
        servers,
        {"hooks": ["benchmarks.hooks.SdkTracing"]},
        "ours with the OpenTelemetry hook: EngineChannelLayer, ENGINE=postgres, the "
        f"opentelemetry hook on an SDK TracerProvider without exporter (capacity={CAPACITY})",
    )
    return {**subject, "skip_if_rejected": "hooks"}


def ours_redis(servers: Servers, run_token: str) -> Payload:
    """Ours with the redis engine, on the Redis server the channels_redis subjects use.

    Encrypted like `ours` (the default keys, derived from the shared SECRET_KEY), with the
    same capacity, and a key prefix of its own for this run (`benchce.ce.<token>`), so
    its keys never mix with channels_redis'; the cleaning between cells (every key
    starting with REDIS_PREFIX) finds them all.
    """
    prefix = f"{REDIS_PREFIX}.ce.{run_token}"
    layer = {
        "BACKEND": "channels_engines.EngineChannelLayer",
        "CONFIG": {
            "ENGINE": "redis",
            "url": servers.redis_url,
            "prefix": prefix,
            "capacity": CAPACITY,
        },
    }
    return _django(
        OURS_REDIS,
        "redis",
        layer,
        servers,
        apps=["channels_engines"],
        about=f"ours: EngineChannelLayer, ENGINE=redis (capacity={CAPACITY}, "
        "default pool_max_size, own key prefix per run)",
    )


def new_run_token() -> str:
    """Eight hex digits naming one run, in our redis engine's key prefix."""
    return secrets.token_hex(4)


def _ours(name: str, servers: Servers, extra: Payload, about: str) -> Payload:
    layer = {
        "BACKEND": "channels_engines.EngineChannelLayer",
        "CONFIG": {"ENGINE": "postgres", "dsn": servers.dsn, "capacity": CAPACITY, **extra},
    }
    return _django(
        name,
        "postgres",
        layer,
        servers,
        apps=["channels_engines"],
        migrate=[("channels_engines", "default")],
        about=about,
    )


def channels_postgres(servers: Servers) -> Payload:
    """channels_postgres 1.1.4: DATABASES alias plus the same values in CONFIG.

    CONFIG is handed to a raw Django DatabaseWrapper, which skips the defaults Django fills
    into DATABASES entries; without TIME_ZONE it raises KeyError, which Channels' manager
    turns into "no layer". Its pool keeps the package default (4 connections).
    """
    config = {**_db(servers), "TIME_ZONE": None, "OPTIONS": {}}
    layer = {"BACKEND": "channels_postgres.core.PostgresChannelLayer", "CONFIG": config}
    return _django(
        "channels_postgres",
        "postgres",
        layer,
        servers,
        apps=["channels_postgres"],
        migrate=[("channels_postgres", "channels_postgres")],
        extra_db="channels_postgres",
        about="channels_postgres.core.PostgresChannelLayer (default pool)",
    )


def redis_core(servers: Servers) -> Payload:
    """channels_redis' sorted-set layer.

    redis-py 8 made socket_timeout default to 5 s, so an idle receive() (a 5 s BZPOPMIN)
    raises TimeoutError every 5 s (django/channels_redis#422); the documented workaround,
    an explicit socket_timeout=None in the host dict, is applied.
    """
    host = {"address": servers.redis_url, "socket_timeout": None}
    layer = {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [host], "prefix": REDIS_PREFIX, "capacity": CAPACITY},
    }
    return _django(
        "redis_core",
        "redis",
        layer,
        servers,
        about=f"channels_redis.core.RedisChannelLayer (capacity={CAPACITY}, "
        "socket_timeout=None for redis-py 8, see channels_redis#422)",
    )


def redis_pubsub(servers: Servers) -> Payload:
    """channels_redis' pub/sub layer."""
    layer = {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [servers.redis_url], "prefix": REDIS_PREFIX},
    }
    return _django(
        "redis_pubsub",
        "redis",
        layer,
        servers,
        about="channels_redis.pubsub.RedisPubSubChannelLayer",
    )


def raw_pg(servers: Servers) -> Payload:
    """Floor: psycopg LISTEN/NOTIFY, payload inline."""
    return {
        "name": "raw_pg",
        "kind": "raw_pg",
        "server": "postgres",
        "dsn": servers.dsn,
        "about": "floor: psycopg async LISTEN + awaited SELECT pg_notify, no table",
    }


def raw_redis(servers: Servers) -> Payload:
    """Floor: redis.asyncio PUBLISH/SUBSCRIBE."""
    return {
        "name": "raw_redis",
        "kind": "raw_redis",
        "server": "redis",
        "redis_url": servers.redis_url,
        "about": "floor: redis.asyncio PUBLISH / SUBSCRIBE",
    }


def all_subjects(servers: Servers, run_token: str | None = None) -> list[Payload]:
    """Every subject, ours first; `run_token` names the run in our redis engine's keys."""
    token = run_token or new_run_token()
    builders = (
        ours,
        ours_plain,
        ours_prometheus,
        ours_otel,
        lambda servers: ours_redis(servers, token),
        channels_postgres,
        redis_core,
        redis_pubsub,
        raw_pg,
        raw_redis,
    )
    return [build(servers) for build in builders]


def _db(servers: Servers) -> Payload:
    pg = servers.pg
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": pg.get("dbname", ""),
        "USER": pg.get("user", ""),
        "PASSWORD": pg.get("password", ""),
        "HOST": pg.get("host", ""),
        "PORT": pg.get("port", ""),
    }


def _django(
    name: str,
    server: str,
    layer: Payload,
    servers: Servers,
    *,
    about: str,
    apps: list[str] | None = None,
    migrate: list[tuple[str, str]] | None = None,
    extra_db: str | None = None,
) -> Payload:
    databases = {"default": _db(servers)}
    if extra_db:
        databases[extra_db] = _db(servers)
    settings = {
        "INSTALLED_APPS": apps or [],
        "DATABASES": databases,
        "CHANNEL_LAYERS": {"default": layer},
        "USE_TZ": True,
        "SECRET_KEY": SECRET_KEY,
    }
    return {
        "name": name,
        "kind": "django",
        "server": server,
        "settings": settings,
        "migrate": migrate or [],
        "about": about,
    }
