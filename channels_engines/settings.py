"""Let ``CHANNEL_LAYERS`` entries name an ENGINE next to CONFIG, and hide their CONFIG.

Channels reads only ``BACKEND`` and passes only ``CONFIG`` to the layer class, so an entry
written as ``{"ENGINE": "postgres", "CONFIG": {...}}`` is rewritten to name
:class:`~channels_engines.EngineChannelLayer` as its BACKEND and to carry ENGINE inside
CONFIG (and TEST_CONFIG). The CONFIG and TEST_CONFIG of every entry that uses this
package's layer become :class:`~channels_engines.redaction.HiddenSettings`: Channels
holds them in local variables while it builds the layer, and error trackers record those,
walking dicts but not these. The app does this at start-up and whenever
``override_settings`` changes ``CHANNEL_LAYERS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .exceptions import InvalidEngineError
from .redaction import HiddenSettings

__all__ = ["LAYER_BACKEND", "normalize_channel_layers"]

#: The BACKEND path that selects this package's layer.
LAYER_BACKEND = "channels_engines.EngineChannelLayer"
_BACKENDS = {LAYER_BACKEND, "channels_engines.layer.EngineChannelLayer"}
_CONFIGS = ("CONFIG", "TEST_CONFIG")


def normalize_channel_layers(layers: Any) -> dict[str, Any] | None:
    """Return ``layers`` with top-level ENGINE entries rewritten and this package's
    CONFIGs hidden, or None if none needs it."""
    if not isinstance(layers, Mapping):
        return None
    changed = False
    result: dict[str, Any] = {}
    for alias, entry in layers.items():
        if isinstance(entry, Mapping):
            new_entry = _normalize_entry(str(alias), entry)
            changed = changed or _differs(new_entry, entry)
            result[alias] = new_entry
        else:
            result[alias] = entry
    return result if changed else None


def _normalize_entry(alias: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    new_entry = _with_engine_in_config(alias, entry) if "ENGINE" in entry else dict(entry)
    if new_entry.get("BACKEND") in _BACKENDS:
        for key in _CONFIGS:
            config = new_entry.get(key)
            if isinstance(config, Mapping):
                new_entry[key] = HiddenSettings(config, shown=["ENGINE"])
    return new_entry


def _with_engine_in_config(alias: str, entry: Mapping[str, Any]) -> dict[str, Any]:
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
    for key in _CONFIGS:
        if key == "TEST_CONFIG" and key not in entry:
            continue
        config = entry.get(key) or {}
        if not isinstance(config, (Mapping, HiddenSettings)):
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


def _differs(new_entry: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    """Whether the rewrite changed anything, hiding a CONFIG included (a hidden CONFIG
    equals the dict it was made from)."""
    return new_entry != entry or any(
        type(new_entry.get(key)) is not type(entry.get(key)) for key in _CONFIGS
    )
