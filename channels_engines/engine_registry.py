"""The engine registry: built-in engines, engines registered in code, and entry points.

Third-party packages publish engines in the entry-point group ``channels_engines.engines``::

    [project.entry-points."channels_engines.engines"]
    myengine = "mypackage.engine:MyEngine"
"""

from __future__ import annotations

from dataclasses import dataclass

from .contract import BaseChannelEngine, contract_problems
from .exceptions import EngineContractError, InvalidEngineError
from .plugins import Registry
from .requirements import Requirement

__all__ = [
    "EngineInfo",
    "available_engines",
    "engines",
    "register_engine",
    "unregister_engine",
]

engines: Registry[BaseChannelEngine] = Registry(
    kind="engine",
    base=BaseChannelEngine,
    entry_point_group="channels_engines.engines",
    setting="ENGINE",
    error=InvalidEngineError,
    unregister="channels_engines.unregister_engine",
    problems=contract_problems,
    invalid=EngineContractError,
)
engines.register("memory", "channels_engines.memory.MemoryEngine", origin="built in")
engines.register("postgres", "channels_engines.postgres.PostgresEngine", origin="built in")
engines.register("redis", "channels_engines.redis.RedisEngine", origin="built in")


def register_engine(name: str, engine: type[BaseChannelEngine] | str) -> None:
    """Make ``ENGINE: name`` select ``engine`` (a class or its dotted path).

    Raises :class:`~channels_engines.AlreadyRegisteredError` if the name is taken, and
    :class:`~channels_engines.EngineContractError` if the class breaks the contract (a
    dotted path is checked when it is first used).
    """
    engines.register(name, engine)


def unregister_engine(name: str) -> None:
    """Remove an engine name registered in code (or built in), so that it can be
    registered again. Raises ``LookupError`` for a name that is not registered in code."""
    engines.unregister(name)


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
    #: What in the class breaks the engine contract (see ``contract_problems``).
    problems: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return not self.missing and self.error is None and not self.problems


def available_engines() -> list[EngineInfo]:
    """Every engine name with its metadata, and whether it can be used here."""
    found = []
    for entry in engines.entries():
        try:
            cls = engines.load(entry.name, where="available_engines()", check=False)
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
                problems=tuple(contract_problems(cls)),
            )
        )
    return found
