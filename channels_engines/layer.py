"""The channel layer Channels instantiates: validates, encodes, and delegates to an engine.

What every engine shares lives here: name and message validation, msgpack encoding, the
size limit, capacity patterns, the spec's expiry defaults, and one engine instance per
running event loop, closed just before that loop closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from channels.exceptions import ChannelFull, MessageTooLarge
from channels.layers import BaseChannelLayer

from .contract import BaseChannelEngine, EngineConfig
from .engine_registry import engines
from .events import Events
from .exceptions import InvalidEngineError
from .layer_options import (
    LAYER_OPTIONS,
    MAX_EXPIRY,
    MAX_GROUP_EXPIRY,
    MAX_MESSAGE_SIZE,
    compile_capacities,
    require_available,
)
from .loops import call_before_close, cancel_before_close
from .options import validate_options
from .redaction import HiddenSettings
from .serialization import UndecodableMessage, decode, encode
from .settings import LAYER_BACKEND
from .validation import (
    MAX_NAME_LENGTH,
    require_channel_name,
    require_group_name,
)

__all__ = [
    "LAYER_OPTIONS",
    "MAX_EXPIRY",
    "MAX_GROUP_EXPIRY",
    "MAX_MESSAGE_SIZE",
    "EngineChannelLayer",
]

logger = logging.getLogger("channels_engines")

# Seconds between two warnings about undecodable messages of one layer.
_UNDECODABLE_WARNING_INTERVAL = 60.0


_ALL_LAYERS: weakref.WeakSet[EngineChannelLayer] = weakref.WeakSet()


class EngineChannelLayer(BaseChannelLayer):
    """A Channels channel layer whose transport is the engine named by ``ENGINE``."""

    ChannelFull = ChannelFull
    MessageTooLarge = MessageTooLarge

    def __init__(self, **config: Any) -> None:
        # The settings may hold passwords anywhere, and error trackers record the local
        # variables of a raising frame, walking dicts: from here on they are opaque.
        given = HiddenSettings(config, shown=["ENGINE"])
        del config
        alias = _find_alias(given, type(self))
        where = f"CHANNEL_LAYERS[{alias!r}]" if alias else "EngineChannelLayer"
        if "ENGINE" not in given:
            raise InvalidEngineError(
                f"{where}: no ENGINE given. Name one in CONFIG (or next to CONFIG with "
                "'channels_engines' in INSTALLED_APPS); available engines: "
                f"{', '.join(repr(name) for name in engines.names())}."
            )
        engine_value = given["ENGINE"]
        engine_class = engines.load(engine_value, where=where)
        self.engine_name = engine_value if isinstance(engine_value, str) else engine_class.__name__
        require_available(engine_class, self.engine_name, where)
        owner = f"ENGINE {self.engine_name!r}"
        overlap = set(engine_class.options) & set(LAYER_OPTIONS)
        if overlap:
            raise InvalidEngineError(
                f"{where}: ENGINE {self.engine_name!r} declares CONFIG keys the layer owns: "
                f"{', '.join(sorted(overlap))}."
            )
        values = validate_options(
            given.without("ENGINE"),
            {**LAYER_OPTIONS, **engine_class.options},
            where=where,
            owner=owner,
        )
        layer_values = {key: values.pop(key) for key in LAYER_OPTIONS}

        super().__init__(expiry=layer_values["expiry"], capacity=layer_values["capacity"])
        self.alias = alias
        self.group_expiry = layer_values["group_expiry"]
        self.channel_capacity = dict(layer_values["channel_capacity"])
        self.extensions = list(engine_class.extensions)
        self._engine_class = engine_class
        self._config = EngineConfig(
            alias=alias,
            engine=self.engine_name,
            expiry=float(layer_values["expiry"]),
            group_expiry=float(self.group_expiry) if self.group_expiry else None,
            capacity=layer_values["capacity"],
            channel_capacity=tuple(compile_capacities(self.channel_capacity)),
            max_message_size=layer_values["max_message_size"],
            options=values,
        )
        self._start_process_state()
        _ALL_LAYERS.add(self)

    def _start_process_state(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[asyncio.AbstractEventLoop, BaseChannelEngine] = {}
        self._shared = self._engine_class.create_shared(self._config)
        self.client_id = secrets.token_hex(8)
        #: What this layer refused, dropped or repaired in this process, by event name.
        self.events = Events()
        self._next_undecodable_warning = 0.0

    def __repr__(self) -> str:
        # Also for an instance whose __init__ raised: tracebacks show it as ``self``.
        alias, engine = getattr(self, "alias", None), getattr(self, "engine_name", None)
        return f"<EngineChannelLayer alias={alias!r} engine={engine!r}>"

    @property
    def config(self) -> EngineConfig:
        """The validated settings every engine instance of this layer receives."""
        return self._config

    # Channel layer API --------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; raises ChannelFull or MessageTooLarge."""
        require_channel_name(channel)
        data = self._encode(message, f"channel {channel!r}")
        await self._engine().send(channel, data)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``, skipping any that cannot be decoded."""
        require_channel_name(channel)
        engine = self._engine()
        if "!" in channel and not engine.owns(channel):
            raise ValueError(
                f"receive(): {channel!r} is a process-specific channel of another process "
                "or channel layer instance; only the layer that made it with new_channel() "
                "can receive from it."
            )
        while True:
            data = await engine.receive(channel)
            try:
                return decode(data, self._config.max_message_size)
            except UndecodableMessage as exc:
                # Bytes no layer could have sent (another writer's bug, an attack): a
                # consumer must not die of them, so they are dropped, counted and logged.
                self._drop_undecodable(channel, exc.reason)

    async def new_channel(self, prefix: str = "specific") -> str:
        """Return a new process-specific channel name, unique to this layer and process."""
        require_group_name(prefix, "prefix")
        name = f"{prefix}.{self.client_id}!{secrets.token_hex(8)}"
        if len(name) > MAX_NAME_LENGTH:
            raise TypeError(
                f"prefix {prefix!r} is too long: channel names have at most "
                f"{MAX_NAME_LENGTH} characters and {len(name) - len(prefix)} are needed "
                "for the process and local parts."
            )
        return name

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` (again: renew the membership)."""
        self._require("groups", "group_add")
        require_group_name(group)
        require_channel_name(channel)
        await self._engine().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group`` if it is a member."""
        self._require("groups", "group_discard")
        require_group_name(group)
        require_channel_name(channel)
        await self._engine().group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every member of ``group``; members at capacity miss it."""
        self._require("groups", "group_send")
        require_group_name(group)
        data = self._encode(message, f"group {group!r}")
        await self._engine().group_send(group, data)

    async def flush(self) -> None:
        """Remove every message and group membership of this layer."""
        self._require("flush", "flush")
        await self._engine().flush()

    async def close(self) -> None:
        """Release this event loop's connections; the next call on this loop reopens them."""
        loop = asyncio.get_running_loop()
        cancel_before_close(loop, self)
        await self._release(loop)

    def get_capacity(self, channel: str) -> int:
        return self._config.capacity_for(channel)

    # Internals ----------------------------------------------------------------------

    def _engine(self) -> BaseChannelEngine:
        loop = asyncio.get_running_loop()
        engine = self._engines.get(loop)
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get(loop)
            if engine is None:
                engine = self._engine_class(self._config, self._shared, client_id=self.client_id)
                engine.events = self.events
                self._engines[loop] = engine
                call_before_close(loop, self, lambda: self._release(loop))
        return engine

    async def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            engine = self._engines.pop(loop, None)
        if engine is not None:
            await engine.close()

    def _require(self, extension: str, method: str) -> None:
        if extension not in self.extensions:
            raise NotImplementedError(
                f"{method}() is not available: ENGINE {self.engine_name!r} does not provide "
                f"the {extension!r} extension (it provides: "
                f"{', '.join(self.extensions) or 'none'})."
            )

    def _encode(self, message: Any, target: str) -> bytes:
        return encode(message, self._config.max_message_size, target=target)

    def _drop_undecodable(self, channel: str, reason: str) -> None:
        self.events.count("receive.undecodable")
        now = time.monotonic()
        if now < self._next_undecodable_warning:
            return
        self._next_undecodable_warning = now + _UNDECODABLE_WARNING_INTERVAL
        logger.warning(
            "%s: dropped a message on channel %r that cannot be decoded: %s. %d dropped so "
            "far (layer.events 'receive.undecodable'); this warning repeats at most once "
            "a minute.",
            self._config.where,
            channel,
            reason,
            self.events.get("receive.undecodable"),
        )

    def _after_fork(self) -> None:
        # The parent's connections are inherited as open sockets; keep those engines
        # referenced so that finalizers never close them from the child.
        _FORKED_AWAY.append((self._engines, self._shared))
        self._start_process_state()


_FORKED_AWAY: list[object] = []


def _after_fork_in_child() -> None:
    for layer in list(_ALL_LAYERS):
        layer._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _find_alias(config: HiddenSettings, layer_class: type) -> str | None:
    """The CHANNEL_LAYERS alias whose CONFIG (or TEST_CONFIG) this layer was built from.

    Channels passes only CONFIG (``{}`` when there is none) to the layer class; matching it
    against the settings is the one way to name the alias in error messages. Entries whose
    BACKEND names this layer are preferred, so that another backend with the same CONFIG is
    not blamed.
    """
    from django.conf import settings

    if not settings.configured:
        return None
    layers = getattr(settings, "CHANNEL_LAYERS", None)
    if not isinstance(layers, Mapping):
        return None
    ours = {LAYER_BACKEND, f"{layer_class.__module__}.{layer_class.__qualname__}"}
    found = [
        alias
        for alias, entry in layers.items()
        if isinstance(entry, Mapping)
        and config in (entry.get("CONFIG", {}), entry.get("TEST_CONFIG"))
    ]
    own = [alias for alias in found if layers[alias].get("BACKEND") in ours]
    return str((own or found)[0]) if found else None
