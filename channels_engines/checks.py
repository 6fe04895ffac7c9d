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

The messages are the layer's own errors, which name the alias and the setting and never
show a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core import checks

from .exceptions import EngineUnavailableError, InvalidConfigError, InvalidEngineError
from .settings import LAYER_BACKEND

__all__ = ["check_channel_layers"]

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
