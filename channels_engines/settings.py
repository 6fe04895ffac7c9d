"""Let ``CHANNEL_LAYERS`` entries name an ENGINE next to CONFIG.

Channels reads only ``BACKEND`` and passes only ``CONFIG`` to the layer class, so an entry
written as ``{"ENGINE": "postgres", "CONFIG": {...}}`` is rewritten to name
:class:`~channels_engines.EngineChannelLayer` as its BACKEND and to carry ENGINE inside
CONFIG (and TEST_CONFIG). The app does this at start-up and whenever ``override_settings``
changes ``CHANNEL_LAYERS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .exceptions import InvalidEngineError

__all__ = ["LAYER_BACKEND", "normalize_channel_layers"]

#: The BACKEND path that selects this package's layer.
LAYER_BACKEND = "channels_engines.EngineChannelLayer"
_BACKENDS = {LAYER_BACKEND, "channels_engines.layer.EngineChannelLayer"}


def normalize_channel_layers(layers: Any) -> dict[str, Any] | None:
    """Return ``layers`` with top-level ENGINE entries rewritten, or None if none needs it."""
    if not isinstance(layers, Mapping):
        return None
    changed = False
    result: dict[str, Any] = {}
    for alias, entry in layers.items():
        if isinstance(entry, Mapping) and "ENGINE" in entry:
            new_entry = _normalize_entry(str(alias), entry)
            changed = changed or new_entry != entry
            result[alias] = new_entry
        else:
            result[alias] = entry
    return result if changed else None


def _normalize_entry(alias: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    where = f"CHANNEL_LAYERS[{alias!r}]"
    engine = entry["ENGINE"]
    backend = entry.get("BACKEND")
    if backend is not None and backend not in _BACKENDS:
        raise InvalidEngineError(
            f"{where} has both BACKEND {backend!r} and ENGINE {engine!r}. ENGINE selects a "
            f"channels_engines engine; leave BACKEND out or set it to {LAYER_BACKEND!r}."
        )
    new_entry = dict(entry)
    new_entry["BACKEND"] = backend or LAYER_BACKEND
    for key in ("CONFIG", "TEST_CONFIG"):
        if key == "TEST_CONFIG" and key not in entry:
            continue
        config = entry.get(key) or {}
        if not isinstance(config, Mapping):
            raise InvalidEngineError(
                f"{where}[{key!r}] must be a dict, not {type(config).__name__}."
            )
        if "ENGINE" in config and config["ENGINE"] != engine and key == "CONFIG":
            raise InvalidEngineError(
                f"{where} names two engines: ENGINE {engine!r} and CONFIG['ENGINE'] "
                f"{config['ENGINE']!r}. Keep one."
            )
        new_entry[key] = {"ENGINE": engine, **config}
    return new_entry
