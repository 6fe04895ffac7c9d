"""The contract an engine implements, and the settings it is given.

An engine moves opaque bytes between channels. The layer in front of it
(:class:`channels_engines.EngineChannelLayer`) has already validated names and messages,
encoded the message, and enforced the size limit; it creates one engine instance per
running event loop and closes it when that loop closes. State that must outlive a loop
(buffers of messages already taken from a server, in-process data) belongs in the object
returned by :meth:`BaseChannelEngine.create_shared`, which every instance of one layer in
one process receives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .events import Events
from .options import Option, closest
from .requirements import Requirement
from .validation import non_local_name

if TYPE_CHECKING:
    from .inspection import Inspection

__all__ = [
    "EXTENSIONS",
    "BaseChannelEngine",
    "EngineConfig",
    "Requirement",
    "SettingWarning",
    "contract_problems",
]

#: The extensions an engine may declare, with the methods each one needs.
EXTENSIONS: Mapping[str, tuple[str, ...]] = {
    "flush": ("flush",),
    "groups": ("group_add", "group_discard", "group_send"),
}


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine is told about the layer it serves.

    Times are in seconds. ``group_expiry`` is None when memberships never expire.
    ``options`` holds the engine's own CONFIG keys, validated, with defaults filled in.
    ``max_message_size`` is the largest message the engine is given: the layer's
    ``max_message_size`` plus :data:`~channels_engines.sealing.SEAL_OVERHEAD` when the
    layer encrypts. Assigning ``expiry``, ``capacity``, ``group_expiry`` or
    ``channel_capacity`` on the layer replaces the engine's ``config`` with a new one, so
    an engine reads these from ``self.config`` when it uses them.
    """

    alias: str | None
    engine: str
    expiry: float
    group_expiry: float | None
    capacity: int
    channel_capacity: Sequence[tuple[re.Pattern[str], int]] = ()
    max_message_size: int = 2 * 1024 * 1024
    options: Mapping[str, Any] = field(default_factory=dict)

    def capacity_for(self, channel: str) -> int:
        """Capacity of ``channel``: the first matching pattern on its non-local part."""
        name = non_local_name(channel)
        for pattern, capacity in self.channel_capacity:
            if pattern.match(name):
                return capacity
        return self.capacity

    @property
    def where(self) -> str:
        """The setting this layer came from, for messages."""
        return f"CHANNEL_LAYERS[{self.alias!r}]" if self.alias else "EngineChannelLayer"


@dataclass(frozen=True)
class SettingWarning:
    """A setting that works but probably not as meant: ``code`` is the number of the
    system check (``"001"`` is reported as ``channels_engines.W001``)."""

    code: str
    message: str
    hint: str


class BaseChannelEngine:
    """Subclass this to write an engine; see "Writing an engine" in the documentation.

    Required: :meth:`send`, :meth:`receive`. With the ``groups`` extension:
    :meth:`group_add`, :meth:`group_discard`, :meth:`group_send`. With ``flush``:
    :meth:`flush`. Names and messages arrive validated; messages are ``bytes``.
    """

    #: Name shown in listings and messages.
    name: ClassVar[str] = ""
    #: Version of the engine, shown by tooling.
    version: ClassVar[str] = "0"
    #: One sentence on what the engine is for.
    description: ClassVar[str] = ""
    #: Channel layer extensions provided: "groups", "flush".
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Optional packages the engine imports; a missing one makes the engine unavailable.
    requires: ClassVar[tuple[Requirement, ...]] = ()
    #: The engine's own CONFIG keys (see :class:`channels_engines.Option`).
    options: ClassVar[Mapping[str, Option]] = {}
    #: Whether messages leave the process (a server, a database): if so the layer
    #: encrypts them by default (CONFIG ``encryption_keys``).
    messages_leave_process: ClassVar[bool] = True
    #: 32-byte keys for authenticating what the engine sends beside messages, first current;
    #: derived from the layer's encryption keys, empty when encryption is off.
    message_keys: tuple[bytes, ...] = ()

    def __init__(self, config: EngineConfig, shared: Any, *, client_id: str) -> None:
        #: Settings of the layer, validated.
        self.config = config
        #: What :meth:`create_shared` returned for this layer in this process.
        self.shared = shared
        #: Random id of this layer in this process; process-specific channel names
        #: made by :meth:`channels_engines.EngineChannelLayer.new_channel` end in
        #: ``.<client_id>!<local part>``.
        self.client_id = client_id
        #: Counters of refused, dropped and repaired messages; the layer replaces this
        #: with the one it shares between its engine instances.
        self.events = Events()

    @classmethod
    def create_shared(cls, config: EngineConfig) -> Any:
        """Create state shared by this layer's engine instances across event loops."""
        return None

    @classmethod
    async def close_shared(cls, shared: Any) -> None:
        """Release what :meth:`create_shared` holds for the process (idle connections kept
        for the next event loop, say); ``layer.close()`` calls it on any loop."""

    @classmethod
    def setting_warnings(cls, config: EngineConfig, shared: Any) -> list[SettingWarning]:
        """What looks wrong in the settings, found without connecting (Django's system
        checks report each as ``channels_engines.W<code>``). ``shared`` is what
        :meth:`create_shared` made from ``config``."""
        return []

    @classmethod
    def missing_requirements(cls) -> list[Requirement]:
        """Declared requirements that are not installed, each naming the distribution
        whose extra installs it (inferred from this class's module when not given)."""
        return [requirement.of(cls) for requirement in cls.requires if not requirement.installed()]

    def owns(self, channel: str) -> bool:
        """Whether ``channel`` is process-specific to this layer in this process."""
        return non_local_name(channel).endswith(f".{self.client_id}!")

    async def send(self, channel: str, message: bytes) -> None:
        """Queue ``message`` on ``channel``; raise ``ChannelFull`` when it is at capacity."""
        raise NotImplementedError(f"{type(self).__name__} must implement send()")

    async def receive(self, channel: str) -> bytes:
        """Wait for and return the next message on ``channel``.

        Cancellation must not lose a message: one taken from the server but not returned
        stays available to the next ``receive()``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement receive()")

    async def group_add(self, group: str, channel: str) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement group_add() (groups extension)"
        )

    async def group_discard(self, group: str, channel: str) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement group_discard() (groups extension)"
        )

    async def group_send(self, group: str, message: bytes) -> int | None:
        """Send to every member; drop (never raise) for members at capacity, counting them
        as ``group_send.dropped``. Return how many receiving queues the message was
        written for (hooks report it as the fan-out), or None if unknown."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement group_send() (groups extension)"
        )

    async def flush(self) -> None:
        """Remove every message and group membership of this layer."""
        raise NotImplementedError(f"{type(self).__name__} must implement flush() (flush extension)")

    async def close(self) -> None:
        """Release what this instance holds on its event loop (connections, tasks)."""

    def inspection(self) -> Inspection | None:
        """What ``manage.py channels_engines check|stats|purge-expired|schema`` can ask
        of the engine's server (see :mod:`channels_engines.inspection`); None when the
        engine has nothing to show (its state lives in the process)."""
        return None


def contract_problems(cls: type[BaseChannelEngine]) -> list[str]:
    """What in ``cls`` breaks the engine contract, as phrases (empty: nothing).

    The layer would otherwise find these only when the method is called; the registry
    checks them when an engine is registered or selected, and tooling lists them.
    """
    problems = [
        f"it does not implement {method}()"
        for method in ("send", "receive")
        if getattr(cls, method) is getattr(BaseChannelEngine, method)
    ]
    extensions = cls.extensions
    if not isinstance(extensions, (tuple, list)) or not all(
        isinstance(name, str) for name in extensions
    ):
        problems.append(
            f"extensions must be a tuple of extension names, not {extensions!r}; known "
            f"extensions: {_known_extensions()}"
        )
        extensions = ()
    for extension in extensions:
        methods = EXTENSIONS.get(extension)
        if methods is None:
            hint = closest(extension, EXTENSIONS)
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            problems.append(
                f"extensions names the unknown extension {extension!r}{suggestion}; known "
                f"extensions: {_known_extensions()}"
            )
            continue
        missing = [
            f"{method}()"
            for method in methods
            if getattr(cls, method) is getattr(BaseChannelEngine, method)
        ]
        if missing:
            problems.append(
                f"it declares the {extension!r} extension but does not implement "
                f"{', '.join(missing)}"
            )
    problems += option_problems(cls.options)
    return problems


def option_problems(options: Any) -> list[str]:
    """Declared options that cannot work: not an :class:`Option`, or a default its own
    declaration refuses (a required option has no default to check)."""
    if not isinstance(options, Mapping):
        return [f"options must be a mapping of CONFIG keys to Option, not {options!r}"]
    problems = []
    for key, option in options.items():
        if not isinstance(key, str) or not isinstance(option, Option):
            problems.append(
                f"options[{key!r}] must map a CONFIG key (str) to an Option, not "
                f"{type(option).__name__}"
            )
            continue
        if option.required:
            continue
        try:
            allowed = option.problem(option.default)
        except Exception as exc:  # a check hook that cannot take its own default
            allowed = f"accepted by its check, which raised {type(exc).__name__}: {exc}"
        if allowed is not None:
            shown = "(hidden)" if option.secret else repr(option.default)
            problems.append(
                f"the default of option {key!r}, {shown}, is not allowed by its own "
                f"declaration: it must be {allowed}"
            )
    return problems


def _known_extensions() -> str:
    return ", ".join(repr(name) for name in sorted(EXTENSIONS))
