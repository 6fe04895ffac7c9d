"""The engine registry: built-in engines, engines registered in code, and entry points.

Third-party packages publish engines in the entry-point group ``channels_engines.engines``::

    [project.entry-points."channels_engines.engines"]
    myengine = "mypackage.engine:MyEngine"
"""

from __future__ import annotations

from dataclasses import dataclass

from .contract import BaseChannelEngine
from .exceptions import InvalidEngineError
from .plugins import Registry
from .requirements import Requirement

__all__ = ["EngineInfo", "available_engines", "engines", "register_engine"]

engines: Registry[BaseChannelEngine] = Registry(
    kind="engine",
    base=BaseChannelEngine,
    entry_point_group="channels_engines.engines",
    setting="ENGINE",
    error=InvalidEngineError,
)
engines.register("memory", "channels_engines.memory.MemoryEngine", origin="built in")
engines.register("postgres", "channels_engines.postgres.PostgresEngine", origin="built in")


def register_engine(name: str, engine: type[BaseChannelEngine] | str) -> None:
    """Make ``ENGINE: name`` select ``engine`` (a class or its dotted path).

    Raises :class:`~channels_engines.AlreadyRegisteredError` if the name is taken.
    """
    engines.register(name, engine)


@dataclass(frozen=True)
class EngineInfo:
    """What tooling shows about one engine."""

    name: str
    target: str
    origin: str
    description: str
    version: str
    extensions: tuple[str, ...]
    missing: tuple[Requirement, ...]
    error: str | None = None

    @property
    def available(self) -> bool:
        return not self.missing and self.error is None


def available_engines() -> list[EngineInfo]:
    """Every engine name with its metadata, and whether it can be used here."""
    found = []
    for entry in engines.entries():
        try:
            cls = engines.load(entry.name, where="available_engines()")
        except InvalidEngineError as exc:
            found.append(
                EngineInfo(entry.name, entry.target, entry.origin, "", "", (), (), str(exc))
            )
            continue
        found.append(
            EngineInfo(
                name=entry.name,
                target=entry.target,
                origin=entry.origin,
                description=cls.description,
                version=cls.version,
                extensions=cls.extensions,
                missing=tuple(cls.missing_requirements()),
            )
        )
    return found
