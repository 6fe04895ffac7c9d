"""Hooks: plugins that watch a layer's events and may wrap its messages.

A hook is a :class:`Hook` subclass named in ``CONFIG["hooks"]`` (a registered name, an
entry point of the group ``channels_engines.hooks``, a dotted path, a class, or an
instance). The layer calls it:

- :meth:`Hook.handle` with each :class:`Event` it subscribes to (``Hook.events``);
- :meth:`Hook.outgoing` with every message before it is encoded (``send()`` and
  ``group_send()``), and :meth:`Hook.incoming` with every message ``receive()`` returns,
  for hooks that override them (to carry trace context, to audit).

Hooks run in the order listed, synchronously, in the thread and event loop where the
event happened: keep them short and hand slow work elsewhere. A hook that raises is
logged with its name (at most once a minute per hook) and skipped: delivery goes on,
with the message as it was before that hook. Events carry names, sizes and durations,
never message bodies or credentials. With no hook configured, the layer creates no
event object and takes no timestamp.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .exceptions import InvalidConfigError
from .plugins import Registry
from .requirements import Requirement, not_installed

__all__ = [
    "ConnectionsChanged",
    "Counted",
    "CredentialsChanged",
    "CredentialsRefreshFailed",
    "Event",
    "GroupSent",
    "Hook",
    "HookRunner",
    "LayerInfo",
    "ListenerLost",
    "ListenerRecovered",
    "LoopClosed",
    "LoopOpened",
    "MessageReceived",
    "MessageSent",
    "SendFailed",
    "hooks",
    "register_hook",
    "unregister_hook",
]

logger = logging.getLogger("channels_engines.hooks")

# Seconds between two log records about one failing hook.
_FAILURE_LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """Which layer an event comes from (one object per layer, shared by its events)."""

    alias: str | None
    engine: str
    encrypted: bool


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened in a layer; every event names its layer."""

    layer: LayerInfo


@dataclass(frozen=True, slots=True)
class LoopOpened(Event):
    """The layer started working on an event loop (its engine for that loop was made)."""


@dataclass(frozen=True, slots=True)
class LoopClosed(Event):
    """The layer released an event loop's engine (``close()``, or the loop ended)."""


@dataclass(frozen=True, slots=True)
class MessageSent(Event):
    """``send()`` stored a message. ``size``: encoded bytes before encryption;
    ``seconds``: how long the call took."""

    channel: str
    size: int
    seconds: float


@dataclass(frozen=True, slots=True)
class GroupSent(Event):
    """``group_send()`` stored a message. ``receivers``: how many receiving queues the
    engine wrote it for, when it knows (memory: members; postgres: queues of members on
    normal channels plus one group stream for all process-specific members)."""

    group: str
    size: int
    seconds: float
    receivers: int | None


@dataclass(frozen=True, slots=True)
class SendFailed(Event):
    """``send()`` (``kind="send"``, ``target`` a channel) or ``group_send()``
    (``kind="group_send"``, ``target`` a group) raised after the message was encoded:
    ``error`` is the exception's class name (``ChannelFull``, ``SendNotConfirmed``...)."""

    target: str
    kind: str
    error: str


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """``receive()`` returned a message. ``waited``: seconds the call waited."""

    channel: str
    size: int
    waited: float


@dataclass(frozen=True, slots=True)
class Counted(Event):
    """A count of ``layer.events`` went up: something was refused, dropped or repaired
    (``send.channel_full``, ``group_send.dropped``, ``receive.expired``,
    ``receive.undecodable``, ``receive.unopenable``, ...)."""

    name: str
    count: int


@dataclass(frozen=True, slots=True)
class ListenerLost(Event):
    """The engine lost the connection that brings messages to this process; it is
    reconnecting, and ``receive()`` calls keep waiting."""

    reason: str


@dataclass(frozen=True, slots=True)
class ListenerRecovered(Event):
    """The connection is back after ``away`` seconds. ``may_have_missed``: messages sent
    meanwhile may be gone (the server restarted and kept no unlogged data); otherwise
    everything sent meanwhile is delivered."""

    away: float
    may_have_missed: bool


@dataclass(frozen=True, slots=True)
class ConnectionsChanged(Event):
    """The layer now holds ``held`` server connections of kind ``purpose`` in this
    process (postgres: ``"pool"``, counting those being opened, and ``"listen"``; redis:
    ``"commands"``, the pools and the writer's, and ``"pubsub"``)."""

    purpose: str
    held: int


@dataclass(frozen=True, slots=True)
class CredentialsChanged(Event):
    """The credential provider gave new credentials; new connections use them."""

    provider: str


@dataclass(frozen=True, slots=True)
class CredentialsRefreshFailed(Event):
    """Asking the credential provider for credentials failed (the layer goes on with the
    current ones while they last)."""

    provider: str
    reason: str


E = TypeVar("E", bound=Event)
Message = dict[str, Any]


class Hook:
    """Base class of hooks. Override :meth:`handle` (and list the event classes it wants
    in ``events``), :meth:`outgoing`, :meth:`incoming`, or several."""

    #: Event classes :meth:`handle` receives (subclasses included); empty: none.
    events: ClassVar[tuple[type[Event], ...]] = ()
    #: Optional packages the hook needs; a missing one is reported when the layer is made.
    requires: ClassVar[tuple[Requirement, ...]] = ()

    def handle(self, event: Event) -> None:
        """React to ``event`` (one of the classes in ``events``)."""

    def outgoing(self, kind: str, target: str, message: Message) -> Message:
        """The message to send instead of ``message``, called before it is validated and
        encoded: by ``send()`` (``kind="send"``, ``target`` a channel) or by
        ``group_send()`` (``kind="group_send"``, ``target`` a group)."""
        return message

    def incoming(self, channel: str, message: Message) -> Message:
        """The message ``receive()`` returns instead of ``message``."""
        return message

    @property
    def hook_name(self) -> str:
        """How logs name this hook."""
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def missing_requirements(cls) -> list[Requirement]:
        """Declared requirements that are not installed (see
        :meth:`channels_engines.BaseChannelEngine.missing_requirements`)."""
        return [requirement.of(cls) for requirement in cls.requires if not requirement.installed()]


hooks: Registry[Hook] = Registry(
    kind="hook",
    base=Hook,
    entry_point_group="channels_engines.hooks",
    setting="CONFIG['hooks']",
    error=InvalidConfigError,
    unregister="channels_engines.unregister_hook",
)
hooks.register("prometheus", "channels_engines.contrib.prometheus.Metrics", origin="built in")
hooks.register("opentelemetry", "channels_engines.contrib.opentelemetry.Tracing", origin="built in")


def register_hook(name: str, hook: type[Hook] | str) -> None:
    """Make ``name`` usable in ``CONFIG["hooks"]`` for ``hook`` (a class or its dotted path).

    Raises :class:`~channels_engines.AlreadyRegisteredError` if the name is taken.
    """
    hooks.register(name, hook)


def unregister_hook(name: str) -> None:
    """Remove a hook name registered in code (or built in), so that it can be registered
    again. Raises ``LookupError`` for a name that is not registered in code."""
    hooks.unregister(name)


def load_hooks(values: Sequence[Any], where: str) -> list[Hook]:
    """The hook instances ``CONFIG["hooks"]`` names, in order."""
    loaded: list[Hook] = []
    for index, value in enumerate(values):
        place = f"{where}: CONFIG['hooks'][{index}]"
        if isinstance(value, Hook):
            hook = value
        else:
            cls = hooks.load(value, where=place)
            _require_installed(cls, place)
            try:
                hook = cls()
            except Exception as exc:
                raise InvalidConfigError(
                    f"{place}: cannot make hook {cls.__module__}.{cls.__qualname__} "
                    f"without arguments ({type(exc).__name__}: {exc}). Put an instance in "
                    "the list to give it arguments."
                ) from exc
        _require_installed(type(hook), place)
        loaded.append(hook)
    return loaded


def _require_installed(cls: type[Hook], place: str) -> None:
    missing = cls.missing_requirements()
    if missing:
        raise InvalidConfigError(
            f"{place}: hook {cls.__module__}.{cls.__qualname__} {not_installed(missing)}"
        )


class HookRunner:
    """Runs one layer's hooks: who wants which event, and the message wrappers."""

    def __init__(self, layer: LayerInfo, hooks: Iterable[Hook]) -> None:
        self.layer = layer
        self.hooks = tuple(hooks)
        self._by_event: dict[type[Event], tuple[Hook, ...]] = {}
        self._lock = threading.Lock()
        self._next_log: dict[int, float] = {}
        #: Hooks that override :meth:`Hook.outgoing` / :meth:`Hook.incoming`, in order.
        self.outgoing = tuple(h for h in self.hooks if type(h).outgoing is not Hook.outgoing)
        self.incoming = tuple(h for h in self.hooks if type(h).incoming is not Hook.incoming)
        #: Whether any hook wants events at all.
        self.watching = any(h.events for h in self.hooks)

    def wants(self, kind: type[Event]) -> tuple[Hook, ...]:
        """The hooks that subscribe to ``kind``, in order."""
        found = self._by_event.get(kind)
        if found is None:
            found = tuple(h for h in self.hooks if any(issubclass(kind, e) for e in h.events))
            self._by_event[kind] = found
        return found

    def emit(self, event_class: type[E], /, **fields: Any) -> None:
        """Make an ``event_class`` event and hand it to the hooks that want it."""
        wanted = self.wants(event_class)
        if not wanted:
            return
        event = event_class(layer=self.layer, **fields)
        for hook in wanted:
            try:
                hook.handle(event)
            except Exception as exc:
                self._failed(hook, f"handling {event_class.__name__}", exc)

    def wrap_outgoing(self, kind: str, target: str, message: Message) -> Message:
        """``message`` as the hooks' ``outgoing()`` leave it, in order."""
        return self._wrap(
            self.outgoing, "outgoing()", lambda hook, m: hook.outgoing(kind, target, m), message
        )

    def wrap_incoming(self, channel: str, message: Message) -> Message:
        """``message`` as the hooks' ``incoming()`` leave it, in order."""
        return self._wrap(
            self.incoming, "incoming()", lambda hook, m: hook.incoming(channel, m), message
        )

    def _wrap(
        self,
        chain: tuple[Hook, ...],
        what: str,
        call: Callable[[Hook, Message], Any],
        message: Message,
    ) -> Message:
        for hook in chain:
            try:
                changed = call(hook, message)
            except Exception as exc:
                self._failed(hook, what, exc)
                continue
            if isinstance(changed, dict):
                message = changed
            else:
                self._failed(hook, what, TypeError(_not_a_dict(changed)))
        return message

    def _failed(self, hook: Hook, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next_log.get(id(hook), 0.0):
                return
            self._next_log[id(hook)] = now + _FAILURE_LOG_INTERVAL
        try:
            name = hook.hook_name
        except Exception:
            name = type(hook).__qualname__
        logger.warning(
            "Hook %s failed in %s and was skipped (%s: %s); delivery goes on. This "
            "warning repeats at most once a minute per hook.",
            name,
            what,
            type(exc).__name__,
            exc,
        )


def _not_a_dict(value: object) -> str:
    return f"it returned {type(value).__name__}, not a dict; the message was left as it was"
