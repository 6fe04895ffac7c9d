"""The channel layer Channels instantiates: validates, encodes, and delegates to an engine.

What every engine shares lives here: name and message validation, msgpack encoding, the
size limit, capacity patterns, the spec's expiry defaults, and one engine instance per
running event loop, closed just before that loop closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from channels.exceptions import ChannelFull, MessageTooLarge
from channels.layers import BaseChannelLayer

from .contract import BaseChannelEngine, EngineConfig, SettingWarning
from .engine_registry import engines
from .events import Events
from .exceptions import InvalidConfigError, InvalidEngineError
from .hooks import (
    GroupSent,
    HookRunner,
    LayerInfo,
    LoopClosed,
    LoopOpened,
    MessageReceived,
    MessageSent,
    SendFailed,
    load_hooks,
)
from .inspection import Inspection
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
from .redaction import HiddenSettings, Secret
from .sealing import MIN_KEY_LENGTH, SEAL_OVERHEAD, Sealer, Unopenable
from .serialization import UndecodableMessage, decode, decode_again, encode
from .settings import LAYER_BACKEND
from .sync import SyncCalls
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
    "SEAL_OVERHEAD",
    "EngineChannelLayer",
]

logger = logging.getLogger("channels_engines")

# Seconds between two warnings about undecodable (or unopenable) messages of one layer.
_UNDECODABLE_WARNING_INTERVAL = 60.0


#: The longest ``expiry``: a day. A message unread for that long has no reader left, and
#: until it expires it counts against its channel's capacity.

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

        # BaseChannelLayer.__init__ is not called: it only assigns expiry, capacity and
        # channel_capacity, which are properties here that need the config below.
        self.alias = alias
        self.extensions = list(engine_class.extensions)
        self._engine_class = engine_class
        self._layer_values = {
            key: layer_values[key]
            for key in LAYER_OPTIONS
            if key not in ("encryption_keys", "hooks")
        }
        self._sealer = _make_sealer(
            layer_values.pop("encryption_keys"), engine_class, where, self.engine_name
        )
        self._hooks = HookRunner(
            LayerInfo(alias, self.engine_name, self._sealer is not None),
            load_hooks(layer_values.pop("hooks"), where),
        )
        # Which events some hook wants, looked up once: the hot path tests a tuple.
        self._on_sent = self._hooks.wants(MessageSent)
        self._on_group_sent = self._hooks.wants(GroupSent)
        self._on_received = self._hooks.wants(MessageReceived)
        self._on_failed = self._hooks.wants(SendFailed)
        self._config = EngineConfig(
            alias=alias,
            engine=self.engine_name,
            expiry=float(layer_values["expiry"]),
            group_expiry=_group_expiry(layer_values["group_expiry"]),
            capacity=layer_values["capacity"],
            channel_capacity=tuple(compile_capacities(layer_values["channel_capacity"])),
            max_message_size=layer_values["max_message_size"]
            + (SEAL_OVERHEAD if self._sealer else 0),
            options=values,
        )
        self._opened = _Opened()
        self._start_process_state()
        _ALL_LAYERS.add(self)

    # Settings Channels code reads and assigns -----------------------------------------

    # The stubs of Channels type expiry as int; seconds may have a fraction here.
    @property  # type: ignore[override]
    def expiry(self) -> float:
        """Seconds a message may wait unread; assigning it applies to later sends."""
        return self._layer_values["expiry"]  # type: ignore[no-any-return]

    @expiry.setter
    def expiry(self, value: float) -> None:
        self._change("expiry", value, expiry=lambda v: float(v))

    @property
    def capacity(self) -> int:
        """Messages a channel may hold; assigning it applies to later sends."""
        return self._layer_values["capacity"]  # type: ignore[no-any-return]

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._change("capacity", value, capacity=lambda v: v)

    @property
    def group_expiry(self) -> float | None:
        """Seconds a membership lasts (0 or None: forever); applies to later group_add()."""
        return self._layer_values["group_expiry"]  # type: ignore[no-any-return]

    @group_expiry.setter
    def group_expiry(self, value: float | None) -> None:
        self._change("group_expiry", value, group_expiry=_group_expiry)

    @property
    def channel_capacity(self) -> dict[Any, int]:
        """Capacity per channel name pattern (a copy); assign a new dict to change it."""
        return dict(self._layer_values["channel_capacity"])

    @channel_capacity.setter
    def channel_capacity(self, value: dict[Any, int]) -> None:
        self._change(
            "channel_capacity", value, channel_capacity=lambda v: tuple(compile_capacities(v))
        )

    def _change(self, key: str, value: Any, **fields: Callable[[Any], Any]) -> None:
        """Validate ``value`` as CONFIG[key] and give the new config to every engine."""
        checked = validate_options(
            {key: value}, {key: LAYER_OPTIONS[key]}, where=self._config.where, owner="the layer"
        )[key]
        self._layer_values[key] = dict(checked) if isinstance(checked, Mapping) else checked
        self._config = dataclasses.replace(
            self._config, **{name: convert(checked) for name, convert in fields.items()}
        )
        with self._lock:
            for engine in self._engines.values():
                engine.config = self._config

    def _start_process_state(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[asyncio.AbstractEventLoop, BaseChannelEngine] = {}
        self._shared = self._engine_class.create_shared(self._config)
        self.client_id = secrets.token_hex(8)
        #: What this layer refused, dropped or repaired in this process, by event name.
        self.events = Events(self._hooks)
        self._next_undecodable_warning = 0.0
        self._next_unopenable_warning = 0.0

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
        if self._hooks.outgoing:
            message = self._hooks.wrap_outgoing("send", channel, message)
        data = self._encode(message, f"channel {channel!r}")
        size = len(data)
        start = time.perf_counter() if self._on_sent else 0.0
        if self._sealer is not None:
            data = self._sealer.seal_for_channel(channel, data)
        try:
            await self._engine().send(channel, data)
        except Exception as exc:
            if isinstance(exc, ChannelFull):
                self.events.count("send.channel_full")
            if self._on_failed:
                self._hooks.emit(SendFailed, target=channel, kind="send", error=type(exc).__name__)
            raise
        if self._on_sent:
            self._hooks.emit(
                MessageSent, channel=channel, size=size, seconds=time.perf_counter() - start
            )

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``, skipping any that cannot be opened
        or decoded."""
        require_channel_name(channel)
        engine = self._engine()
        if "!" in channel and not engine.owns(channel):
            raise ValueError(
                f"receive(): {channel!r} is a process-specific channel of another process "
                "or channel layer instance; only the layer that made it with new_channel() "
                "can receive from it."
            )
        start = time.perf_counter() if self._on_received else 0.0
        while True:
            stored = await engine.receive(channel)
            opened = self._opened.get(stored)
            if opened is not None:
                # The same message for another member of a group, in this process:
                # opened and checked once, decoded into a copy of its own.
                return self._received(channel, decode_again(opened), len(opened), start)
            data = stored
            if self._sealer is not None:
                try:
                    data = self._sealer.open(channel, stored)
                except Unopenable as exc:
                    # Sealed with a key this process lacks, forged, corrupted, or meant
                    # for another channel: never delivered, counted and logged.
                    self._drop_unopenable(channel, exc.reason)
                    continue
            try:
                message = decode(data, self.max_message_size)
            except UndecodableMessage as exc:
                # Bytes no layer could have sent (another writer's bug, an attack): a
                # consumer must not die of them, so they are dropped, counted and logged.
                self._drop_undecodable(channel, exc.reason)
                continue
            if self._sealer is None or self._sealer.for_any_member(stored):
                self._opened.add(stored, data)
            return self._received(channel, message, len(data), start)

    def _received(
        self, channel: str, message: dict[str, Any], size: int, start: float
    ) -> dict[str, Any]:
        if self._on_received:
            self._hooks.emit(
                MessageReceived, channel=channel, size=size, waited=time.perf_counter() - start
            )
        if self._hooks.incoming:
            message = self._hooks.wrap_incoming(channel, message)
        return message

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
        if self._hooks.outgoing:
            message = self._hooks.wrap_outgoing("group_send", group, message)
        data = self._encode(message, f"group {group!r}")
        size = len(data)
        start = time.perf_counter() if self._on_group_sent else 0.0
        if self._sealer is not None:
            data = self._sealer.seal_for_group(group, data)
        try:
            receivers = await self._engine().group_send(group, data)
        except Exception as exc:
            if self._on_failed:
                self._hooks.emit(
                    SendFailed, target=group, kind="group_send", error=type(exc).__name__
                )
            raise
        if self._on_group_sent:
            self._hooks.emit(
                GroupSent,
                group=group,
                size=size,
                seconds=time.perf_counter() - start,
                receivers=receivers,
            )

    async def flush(self) -> None:
        """Remove every message and group membership of this layer."""
        self._require("flush", "flush")
        await self._engine().flush()

    async def close(self) -> None:
        """Release this event loop's connections; the next call on this loop reopens them."""
        loop = asyncio.get_running_loop()
        cancel_before_close(loop, self)
        await self._release(loop)
        await self._engine_class.close_shared(self._shared)

    @property
    def sync(self) -> SyncCalls:
        """The layer's methods for synchronous code, run on one background event loop
        per process (see :mod:`channels_engines.sync`): ``layer.sync.group_send(...)``."""
        return SyncCalls(self)

    def setting_warnings(self) -> list[SettingWarning]:
        """What the engine finds doubtful in these settings, without connecting (the
        system checks report them)."""
        return self._engine_class.setting_warnings(self._config, self._shared)

    def inspection(self) -> Inspection | None:
        """The engine's views of its server on the running event loop, for operators
        (see :mod:`channels_engines.inspection`); None for an engine without any."""
        return self._engine().inspection()

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
            made = engine is None
            if engine is None:
                engine = self._engine_class(self._config, self._shared, client_id=self.client_id)
                engine.events = self.events
                engine.message_keys = (
                    self._sealer.subkeys("notification") if self._sealer is not None else ()
                )
                self._engines[loop] = engine
                call_before_close(loop, self, lambda: self._release(loop))
        if made:
            self.events.emit(LoopOpened)
        return engine

    async def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            engine = self._engines.pop(loop, None)
        if engine is not None:
            await engine.close()
            self.events.emit(LoopClosed)

    def _require(self, extension: str, method: str) -> None:
        if extension not in self.extensions:
            raise NotImplementedError(
                f"{method}() is not available: ENGINE {self.engine_name!r} does not provide "
                f"the {extension!r} extension (it provides: "
                f"{', '.join(self.extensions) or 'none'})."
            )

    @property
    def max_message_size(self) -> int:
        """Largest encoded message in bytes, before sealing."""
        return self._layer_values["max_message_size"]  # type: ignore[no-any-return]

    @property
    def messages_leave_process(self) -> bool:
        """Whether the engine carries messages between processes (memory: no)."""
        return self._engine_class.messages_leave_process

    @property
    def encrypted(self) -> bool:
        """Whether this layer seals message bodies (see ``encryption_keys``)."""
        return self._sealer is not None

    def _encode(self, message: Any, target: str) -> bytes:
        return encode(message, self.max_message_size, target=target)

    def _drop_unopenable(self, channel: str, reason: str) -> None:
        self.events.count("receive.unopenable")
        now = time.monotonic()
        if now < self._next_unopenable_warning:
            return
        self._next_unopenable_warning = now + _UNDECODABLE_WARNING_INTERVAL
        logger.warning(
            "%s: dropped a message on channel %r that cannot be opened: %s. Processes of "
            "this layer must share SECRET_KEY (and SECRET_KEY_FALLBACKS) or "
            "CONFIG['encryption_keys']; during a key rotation every process needs the new "
            "key in its list before any seals with it. %d dropped so far (layer.events "
            "'receive.unopenable'); this warning repeats at most once a minute.",
            self._config.where,
            channel,
            reason,
            self.events.get("receive.unopenable"),
        )

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


def every_layer() -> list[EngineChannelLayer]:
    """Every layer of this package alive in this process."""
    return list(_ALL_LAYERS)


def _after_fork_in_child() -> None:
    for layer in list(_ALL_LAYERS):
        layer._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _group_expiry(value: float | None) -> float | None:
    """``group_expiry`` as engines get it: None when memberships never expire."""
    return float(value) if value else None


def _make_sealer(
    keys: Any, engine_class: type[BaseChannelEngine], where: str, engine: str
) -> Sealer | None:
    """The sealer ``encryption_keys`` asks for, or None when messages go unsealed.

    ``keys`` is the validated value: None, False, or a list of :class:`Secret`.
    """
    if keys is False:
        return None
    if keys is not None:
        return Sealer(list(keys))
    if not engine_class.messages_leave_process:
        return None
    from_settings = _django_secret_keys()
    if not from_settings:
        raise InvalidConfigError(
            f"{where}: ENGINE {engine!r} encrypts messages with keys derived from Django's "
            "SECRET_KEY unless CONFIG['encryption_keys'] says otherwise, and there is no "
            "SECRET_KEY (Django settings are not configured or SECRET_KEY is empty). Set "
            "SECRET_KEY; or give CONFIG['encryption_keys'] a list of keys (strings of at "
            f"least {MIN_KEY_LENGTH} characters, the same in every process); or set "
            "CONFIG['encryption_keys'] to False to send messages unencrypted."
        )
    return Sealer(from_settings)


def _django_secret_keys() -> list[Secret]:
    """SECRET_KEY then SECRET_KEY_FALLBACKS, concealed at once; empty without SECRET_KEY."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    if not settings.configured:
        return []
    try:
        if not settings.SECRET_KEY:
            return []
        # Django also accepts bytes; latin-1 turns any bytes into text, the same in
        # every process. Nothing here can raise while a key is in a local variable.
        return [
            Secret(key if isinstance(key, str) else key.decode("latin-1"))
            for key in [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
            if key and isinstance(key, (str, bytes))
        ]
    except ImproperlyConfigured:  # Django's own refusal of an empty SECRET_KEY
        return []


class _Opened:
    """Messages received lately that open alike on every channel (group messages), by
    identity, with their opened bytes. An engine hands a group message to all its members
    in a process as one bytes object: it is opened and checked once. Bounded in entries
    and bytes; entries hold their object, so an id is never reused while listed."""

    ENTRIES = 256
    BYTES = 4 << 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[bytes, bytes]] = {}
        self._bytes = 0

    def get(self, stored: bytes) -> bytes | None:
        entry = self._entries.get(id(stored))
        return entry[1] if entry is not None and entry[0] is stored else None

    def add(self, stored: bytes, opened: bytes) -> None:
        size = len(stored) + len(opened)
        if size * 16 > self.BYTES:
            return  # large messages would push out everything else
        with self._lock:
            old = self._entries.pop(id(stored), None)
            if old is not None:
                self._bytes -= len(old[0]) + len(old[1])
            self._entries[id(stored)] = (stored, opened)
            self._bytes += size
            while len(self._entries) > self.ENTRIES or self._bytes > self.BYTES:
                first, gone = next(iter(self._entries.items()))
                del self._entries[first]
                self._bytes -= len(gone[0]) + len(gone[1])


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
