"""Rebuild a subject's channel layer inside a worker from its plain-dict spec.

Django-backed subjects go through `settings.configure()` + `get_channel_layer()`, exactly
the path a Channels project takes; raw floors get their thin adapters. Imports happen
here, lazily, so a subject whose package is missing fails only its own cells.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

Payload = dict[str, Any]

_REPO = Path(__file__).resolve().parent.parent


def build_layer(subject: Payload, *, per_call_connections: bool = False) -> Any:
    """Return a ready-to-use layer (or raw adapter) for this subject spec."""
    kind = subject["kind"]
    if kind == "raw_pg":
        from benchmarks.raw_pg import RawPgLayer

        return RawPgLayer(subject["dsn"], per_call_connections=per_call_connections)
    if kind == "raw_redis":
        from benchmarks.raw_redis import RawRedisLayer

        return RawRedisLayer(subject["redis_url"], per_call_connections=per_call_connections)
    if kind == "django":
        configure_django(subject["settings"])
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is None:
            raise RuntimeError("CHANNEL_LAYERS['default'] produced no layer")
        return layer
    raise ValueError(f"unknown subject kind {kind!r}")


def configure_django(settings_dict: Payload) -> None:
    """Configure Django once per process, with the repo importable (src/ or flat)."""
    for path in (_REPO / "src", _REPO):
        if path.is_dir() and str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(**settings_dict)
        django.setup()
