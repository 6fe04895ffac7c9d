"""Name registries for engines and credential providers.

A registry maps short names to classes, or to dotted paths imported on first use. A name
that is not registered in code is looked up among the entry points other installed
packages publish. A value containing a dot is imported as a dotted path. Duplicates are
refused loudly, and a name that cannot be found is answered with the names that exist.
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from django.utils.module_loading import import_string

from .options import closest
from .redaction import Secret

__all__ = ["Registry", "RegistryEntry"]

T = TypeVar("T")

_NAME = re.compile(r"[a-z][a-z0-9_]*", re.ASCII)
_NAME_OR_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)


@dataclass(frozen=True)
class RegistryEntry:
    """Where a registered name points, and who put it there."""

    name: str
    target: str
    origin: str
    #: The distribution that publishes it as an entry point; None when registered in code.
    distribution: str | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"{self.target} ({self.origin})"


class Registry(Generic[T]):
    """Short names for subclasses of ``base``, with entry points as a fallback.

    ``error`` builds the exception raised when a value cannot be resolved; it receives the
    message and is raised ``from`` the underlying cause, if any. ``unregister`` names the
    public function that removes a name, for messages. ``problems`` finds what is wrong
    with a class that is the right type (a broken contract), checked when it is registered
    and whenever it is loaded; ``invalid`` builds the exception raised for those.
    ``takes`` says in words what the setting accepts; ``hidden_hint`` is added to the
    message about a value of a secret setting that names nothing.
    """

    def __init__(
        self,
        *,
        kind: str,
        base: type[T],
        entry_point_group: str,
        setting: str,
        error: Callable[[str], Exception],
        unregister: str,
        problems: Callable[[type[T]], list[str]] | None = None,
        invalid: Callable[[str], Exception] | None = None,
        takes: str | None = None,
        hidden_hint: str = "",
    ) -> None:
        self.kind = kind
        self.base = base
        self.entry_point_group = entry_point_group
        self.setting = setting
        self.unregister_function = unregister
        self._error = error
        self._problems = problems
        self._invalid = invalid or error
        self.takes = (
            takes or f"a registered name or the dotted path of a {_qualname(base)} subclass"
        )
        self._hidden_hint = hidden_hint
        self._lock = threading.RLock()
        self._entries: dict[str, RegistryEntry] = {}
        self._loaded: dict[str, type[T]] = {}
        self._entry_points: dict[str, list[importlib.metadata.EntryPoint]] | None = None

    # Registration -----------------------------------------------------------------

    def register(self, name: str, target: type[T] | str, *, origin: str = "code") -> None:
        """Register ``name`` for a class or a dotted path; refuse a name already taken."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"{self.kind} name {name!r} is not valid: use lower-case ASCII letters, "
                "digits and underscores, starting with a letter."
            )
        if isinstance(target, str):
            path = target
        elif isinstance(target, type) and issubclass(target, self.base):
            path = f"{target.__module__}.{target.__qualname__}"
            problems = self.problems(target)
            if problems:
                raise self._invalid(
                    f"Cannot register {self.kind} {name!r}: {path} {_broken(self.kind, problems)}"
                )
        else:
            raise TypeError(
                f"Cannot register {self.kind} {name!r}: {target!r} is neither a dotted "
                f"path nor a subclass of {_qualname(self.base)}."
            )
        entry = RegistryEntry(name, path, origin)
        with self._lock:
            existing = self._entries.get(name)
            if existing is not None:
                from .exceptions import AlreadyRegisteredError

                raise AlreadyRegisteredError(
                    f"{self.kind} name {name!r} is already registered to "
                    f"{existing.describe()}; refusing to register it again to "
                    f"{entry.describe()}. Choose another name, or remove the existing one "
                    f"first with {self.unregister_function}({name!r})."
                )
            self._entries[name] = entry
            if not isinstance(target, str):
                self._loaded[name] = target

    def unregister(self, name: str) -> None:
        """Remove a name registered in code or built in, so that it can be registered
        again (or, if a package publishes it, so that the package's entry point is used)."""
        with self._lock:
            if name not in self._entries:
                published = self._published().get(name)
                if published:
                    raise LookupError(
                        f"{self.kind} name {name!r} is not registered in code: it is "
                        f"published by {_distribution(published[0])}; uninstall that "
                        "package to remove it."
                    )
                raise LookupError(
                    f"{self.kind} name {name!r} is not registered. Registered in code or "
                    f"built in: {', '.join(repr(n) for n in sorted(self._entries)) or 'none'}."
                )
            del self._entries[name]
            self._loaded.pop(name, None)

    def problems(self, cls: type[T]) -> list[str]:
        """What is wrong with ``cls`` beyond its type (nothing when no check is set)."""
        return self._problems(cls) if self._problems is not None else []

    # Lookup -----------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every name that can be used: registered in code and published by packages."""
        with self._lock:
            return sorted(set(self._entries) | set(self._published()))

    def entries(self) -> list[RegistryEntry]:
        """One entry per usable name, with where it points."""
        with self._lock:
            found = dict(self._entries)
            for name, points in self._published().items():
                if name not in found:
                    found[name] = _entry_point_entry(name, points[0])
            return [found[name] for name in sorted(found)]

    def load(
        self, value: Any, *, where: str, check: bool = True, setting: str | None = None
    ) -> type[T]:
        """Resolve a registered name, an entry-point name or a dotted path to a class.

        With ``check`` (the default) a class that breaks its contract is refused; tooling
        that lists what is wrong passes False and asks :meth:`problems` itself.
        ``setting`` names where a hidden value came from, when not the registry's setting
        itself (a key inside it).
        """
        if isinstance(value, Secret):
            return self._load_hidden(value, where=where, check=check, setting=setting)
        if isinstance(value, type):
            return self._checked(value, value, where=where, check=check)
        if not isinstance(value, str) or not value:
            raise self._error(
                f"{where}: {self.setting} must be a registered name or a dotted path, "
                f"not {value!r}. Available {self.kind}s: {self._available()}."
            )
        with self._lock:
            entry = self._entries.get(value)
            published = self._published().get(value, [])
            cached = self._loaded.get(value)
        # Conflicts are checked before the cache: a class registered in code is cached at
        # registration, and must not silently win over a package publishing the same name.
        if entry is not None and published:
            raise self._conflict(
                value, [entry, *[_entry_point_entry(value, ep) for ep in published]], where
            )
        if len(published) > 1:
            raise self._conflict(value, [_entry_point_entry(value, ep) for ep in published], where)
        if cached is not None:
            return self._checked(cached, value, where=where, check=check)
        if entry is not None:
            cls = self._import(entry.target, value, where)
        elif published:
            cls = self._load_entry_point(published[0], value, where)
        elif not _NAME_OR_PATH.fullmatch(value):
            raise self._not_a_name(value, where)
        elif "." in value:
            cls = self._import(value, value, where)
        else:
            hint = closest(value, self.names())
            suggestion = f" Did you mean {hint!r}?" if hint else ""
            raise self._error(
                f"{where}: unknown {self.setting} {value!r}.{suggestion} "
                f"Available {self.kind}s: {self._available()}. {self.setting} takes "
                f"{self.takes}."
            )
        checked = self._checked(cls, value, where=where, check=False)
        if entry is not None or published:
            with self._lock:
                self._loaded[value] = checked
        return self._checked(checked, value, where=where, check=check)

    def _load_hidden(
        self, value: Secret, *, where: str, check: bool, setting: str | None
    ) -> type[T]:
        """A value from a secret setting: used, and shown, only if it names a registered
        or published class or imports as a dotted path. Anything else may be a password
        put in the wrong place, so the message says what it is without repeating it, and
        chains no cause (an ImportError would name part of it)."""
        with self._lock:
            known = value.reveal() in self._entries or value.reveal() in self._published()
        if known or _importable(value):
            return self.load(value.reveal(), where=where, check=check)
        hint = closest(value.reveal(), self.names())
        suggestion = f" Did you mean {hint!r}?" if hint else ""
        raise self._error(
            f"{where}: {setting or self.setting} is a plain string (hidden) that names no "
            f"{self.kind}: "
            f"not a registered name, nor the dotted path of a class that can be imported."
            f"{suggestion} {self.setting} must be {self.takes}. Available {self.kind}s: "
            f"{self._available()}.{self._hidden_hint}"
        )

    # Helpers ----------------------------------------------------------------------

    def _published(self) -> dict[str, list[importlib.metadata.EntryPoint]]:
        if self._entry_points is None:
            found: dict[str, list[importlib.metadata.EntryPoint]] = {}
            for point in importlib.metadata.entry_points(group=self.entry_point_group):
                found.setdefault(point.name, [])
                if all(point.value != seen.value for seen in found[point.name]):
                    found[point.name].append(point)
            self._entry_points = found
        return self._entry_points

    def refresh_entry_points(self) -> None:
        """Forget cached entry points, e.g. after installing a package at run time."""
        with self._lock:
            self._entry_points = None
            for name in list(self._loaded):
                if name not in self._entries:
                    del self._loaded[name]

    def _not_a_name(self, value: str, where: str) -> Exception:
        """Neither a name nor a path. Not a secret setting, so the value is repeated; the
        entry-point form ``pkg.module:Class`` gets the dotted spelling to use instead."""
        module, colon, attribute = value.partition(":")
        dotted = f"{module}.{attribute}"
        if colon and _NAME_OR_PATH.fullmatch(dotted):
            advice = (
                f" That is the entry-point form; {self.setting} takes a dotted path, written "
                f"with a dot: {dotted!r}."
            )
        else:
            advice = f" {self.setting} must be {self.takes}."
        return self._error(
            f"{where}: {self.setting} {value!r} is neither a registered name nor a dotted "
            f"path.{advice} Available {self.kind}s: {self._available()}."
        )

    def _available(self) -> str:
        return ", ".join(repr(name) for name in self.names()) or "none"

    def _import(self, path: str, value: str, where: str) -> Any:
        try:
            return import_string(path)
        except ImportError as exc:
            shown = repr(value) if value == path else f"{value!r} (registered as {path})"
            raise self._error(
                f"{where}: cannot import {self.setting} {shown}: {exc}. "
                f"Available {self.kind}s: {self._available()}."
            ) from exc

    def _load_entry_point(
        self, point: importlib.metadata.EntryPoint, value: str, where: str
    ) -> Any:
        try:
            return point.load()
        except Exception as exc:
            raise self._error(
                f"{where}: cannot load {self.setting} {value!r} from the entry point "
                f"{point.value!r} published by {_distribution(point)}: {exc}. Available "
                f"{self.kind}s: {self._available()}."
            ) from exc

    def _checked(self, cls: Any, value: Any, *, where: str, check: bool) -> type[T]:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise self._error(
                f"{where}: {self.setting} {value!r} resolves to {cls!r}, which is not a "
                f"subclass of {_qualname(self.base)}."
            )
        if check:
            problems = self.problems(cls)
            if problems:
                path = f"{cls.__module__}.{cls.__qualname__}"
                shown = repr(path)
                if isinstance(value, str) and value != path:
                    shown = f"{value!r} ({path})"
                raise self._invalid(
                    f"{where}: {self.setting} {shown} {_broken(self.kind, problems)}"
                )
        return cls

    def _conflict(self, name: str, entries: list[RegistryEntry], where: str) -> Exception:
        listed = "; ".join(entry.describe() for entry in entries)
        in_code = [entry for entry in entries if entry.distribution is None]
        packages = [entry.distribution for entry in entries if entry.distribution is not None]
        ways = []
        if any(entry.origin == "code" for entry in in_code):
            ways.append(
                f"register the one in code under another name (or remove it with "
                f"{self.unregister_function}({name!r}))"
            )
        if len(packages) > 1 and not in_code:
            ways.append(f"uninstall one of the packages ({', '.join(packages)})")
        elif packages:
            ways.append(f"uninstall {' or '.join(packages)}")
        ways.append("use a dotted path")
        return self._error(
            f"{where}: {self.setting} {name!r} is ambiguous: the {self.kind} name is "
            f"registered more than once ({listed}). To choose, "
            f"{', '.join(ways[:-1])} or {ways[-1]}."
        )


def _broken(kind: str, problems: list[str]) -> str:
    return f"breaks the {kind} contract: {'; '.join(problems)}."


def _importable(value: Secret) -> bool:
    """Whether a hidden value is a dotted path that imports (nothing of it is shown)."""
    if "." not in value.reveal() or not _NAME_OR_PATH.fullmatch(value.reveal()):
        return False
    try:
        import_string(value.reveal())
    except ImportError:
        return False
    return True


def _entry_point_entry(name: str, point: importlib.metadata.EntryPoint) -> RegistryEntry:
    return RegistryEntry(
        name,
        point.value.replace(":", "."),
        f"entry point of {_distribution(point)}",
        _distribution(point, version=False),
    )


def _distribution(point: importlib.metadata.EntryPoint, *, version: bool = True) -> str:
    dist = getattr(point, "dist", None)
    if dist is None:
        return "an installed package"
    name = str(dist.metadata["Name"])
    return f"{name} {dist.version}" if version else name


def _qualname(cls: type) -> str:
    module = cls.__module__
    if module.startswith("channels_engines."):
        module = "channels_engines"
    return f"{module}.{cls.__qualname__}"
