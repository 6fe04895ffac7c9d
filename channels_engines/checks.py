"""Django system checks of every CHANNEL_LAYERS entry that uses this package's layer.

``manage.py check`` (and every server start) builds each layer the way Channels will,
without connecting, so that a mistake surfaces before the first message:

- ``channels_engines.E001``: ENGINE names no usable engine;
- ``channels_engines.E002``: the engine needs a package that is not installed;
- ``channels_engines.E003``: a CONFIG key is unknown or its value is not allowed
  (credential providers and hooks included);
- ``channels_engines.E004``: the entry could not be checked at all (the layer raised
  something unexpected while being built);
- ``channels_engines.W...``: what the engine finds doubtful in working settings
  (:meth:`~channels_engines.BaseChannelEngine.setting_warnings`).

Checks that connect run only when Django asks for database checks (``manage.py check
--database default``, and ``migrate``), as Django's own do:

- ``channels_engines.W100``: the worker processes (``WEB_CONCURRENCY``) may need more
  connections than the server has left;
- ``channels_engines.W101``: the server needs attention (autovacuum off or behind);
- ``channels_engines.W102``: the server could not be inspected.

The messages are the layer's own errors, which name the alias and the setting and never
show a secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from django.core import checks

from .exceptions import EngineUnavailableError, InvalidConfigError, InvalidEngineError
from .inspection import worker_processes
from .settings import LAYER_BACKEND

__all__ = ["check_channel_layers", "check_servers"]

_BACKENDS = {LAYER_BACKEND, "channels_engines.layer.EngineChannelLayer"}


def check_channel_layers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The checks of every alias (its CONFIG, and its TEST_CONFIG when it has one)."""
    from django.conf import settings

    found: list[checks.CheckMessage] = []
    layers = getattr(settings, "CHANNEL_LAYERS", None)
    if not isinstance(layers, Mapping):
        return found
    for alias, entry in layers.items():
        if not isinstance(entry, Mapping) or entry.get("BACKEND") not in _BACKENDS:
            continue
        for key in ("CONFIG", "TEST_CONFIG"):
            if key in entry:
                found += _check(str(alias), key, entry[key] or {})
    return found


def check_servers(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """The connection budget and the server's health of every alias whose settings are
    valid, only when database checks were asked for."""
    from django.conf import settings

    if not databases:
        return []
    layers = getattr(settings, "CHANNEL_LAYERS", None)
    if not isinstance(layers, Mapping):
        return []
    workers = worker_processes()
    found: list[checks.CheckMessage] = []
    for alias, entry in layers.items():
        if isinstance(entry, Mapping) and entry.get("BACKEND") in _BACKENDS:
            found += asyncio.run(_check_server(str(alias), entry.get("CONFIG") or {}, workers))
    return found


async def _check_server(alias: str, config: Any, workers: int | None) -> list[checks.CheckMessage]:
    from .layer import EngineChannelLayer

    where = f"CHANNEL_LAYERS[{alias!r}]"
    try:
        layer = EngineChannelLayer(**config)
    except Exception:
        return []  # check_channel_layers reports it
    try:
        inspection = layer.inspection()
        if inspection is None:
            return []
        report = await inspection.server()
    except Exception as exc:
        return [
            checks.Warning(
                f"{where}: the server could not be inspected ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no details'}).",
                hint="Run `manage.py channels_engines check` for a full round trip.",
                id="channels_engines.W102",
            )
        ]
    finally:
        await layer.close()
    found: list[checks.CheckMessage] = [
        checks.Warning(f"{where}: {warning}", id="channels_engines.W101")
        for warning in report.warnings
    ]
    budget = report.budget_warning(workers) if workers is not None else None
    if budget is not None:
        found.insert(
            0,
            checks.Warning(
                f"{where}: {budget}",
                hint="WEB_CONCURRENCY gives the number of worker processes; see "
                "'Connections' on the Operations page.",
                id="channels_engines.W100",
            ),
        )
    return found


def _check(alias: str, key: str, config: Any) -> list[checks.CheckMessage]:
    from .layer import EngineChannelLayer

    where = f"CHANNEL_LAYERS[{alias!r}][{key!r}]"
    try:
        layer = EngineChannelLayer(**config)
    except EngineUnavailableError as exc:
        return [_error("002", exc, where)]
    except InvalidEngineError as exc:
        return [_error("001", exc, where)]
    except InvalidConfigError as exc:
        return [_error("003", exc, where)]
    except Exception as exc:  # the check must report, not crash manage.py
        return [
            checks.Error(
                f"{where} could not be checked: building the layer raised {type(exc).__name__}.",
                hint="Build it in a shell (channels.layers.get_channel_layer()) to see why.",
                id="channels_engines.E004",
            )
        ]
    return [
        checks.Warning(
            f"{where}: {warning.message}", hint=warning.hint, id=f"channels_engines.W{warning.code}"
        )
        for warning in layer.setting_warnings()
    ]


def _error(code: str, exc: BaseException, where: str) -> checks.CheckMessage:
    text = str(exc)
    # The layer names the alias it found (CHANNEL_LAYERS['x']); a TEST_CONFIG is named here.
    if where.endswith("['TEST_CONFIG']"):
        text = f"{where}: {text}"
    return checks.Error(text, id=f"channels_engines.E{code}")
