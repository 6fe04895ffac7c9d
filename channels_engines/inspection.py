"""What an engine can tell operators about its server, and the upkeep it can do on demand.

``manage.py channels_engines check|stats|purge-expired|schema`` asks the engine of a layer
for an :class:`Inspection` (:meth:`~channels_engines.BaseChannelEngine.inspection`); an
engine without one (the memory engine) supports only ``check`` and ``flush``. Everything
here is read on a connection of the layer, with its credentials and deadlines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Inspection", "Purged", "ServerReport", "Stats", "StatsTable", "worker_processes"]


@dataclass(frozen=True)
class StatsTable:
    """One table of ``stats``: a title, column names and rows of plain values."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]


@dataclass(frozen=True)
class Stats:
    """What ``stats`` shows for one layer, and what needs an operator's attention."""

    tables: tuple[StatsTable, ...]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerReport:
    """The server as ``check`` reports it.

    ``connection_limit`` is how many sessions the layer's role may have at once (the
    least of the server's, the database's and the role's limits, less reserved slots),
    ``in_use_by_others`` how many sessions other applications hold now, and
    ``per_process`` how many connections one process of this layer opens at most.
    """

    version: str
    per_process: int
    connection_limit: int | None
    in_use_by_others: int | None
    warnings: tuple[str, ...] = ()

    def budget_warning(self, workers: int) -> str | None:
        """Why ``workers`` processes may run out of connections, or None."""
        if self.connection_limit is None:
            return None
        need = workers * self.per_process
        room = self.connection_limit - (self.in_use_by_others or 0)
        if need <= room:
            return None
        return (
            f"{workers} worker process(es) x {self.per_process} connections = {need}, but "
            f"only {room} of the server's {self.connection_limit} are left for this layer "
            f"({self.in_use_by_others or 0} held by other applications). Lower "
            "'pool_max_size', run fewer workers, or raise max_connections."
        )


@dataclass(frozen=True)
class Purged:
    """What one ``purge-expired`` removed, by kind; ``skipped`` when another process
    was cleaning up at that moment (it removes the same rows)."""

    removed: dict[str, int] = field(default_factory=dict)
    skipped: bool = False


class Inspection(Protocol):
    """The operational views of one engine instance."""

    async def server(self) -> ServerReport:
        """Version, connection limits and health warnings of the server."""

    async def stats(self) -> Stats:
        """Queues, groups, sessions and storage of the layer."""

    async def purge_expired(self) -> Purged:
        """Delete expired messages and memberships now, instead of at the next cleanup."""

    def schema_script(self, grant_to: str | None = None) -> str:
        """The DDL of the layer's storage (and the grants ``grant_to`` needs) as a script."""

    async def apply_schema(self, grant_to: str | None = None) -> None:
        """Create or upgrade the layer's storage (and grant ``grant_to`` its rights)."""


def worker_processes() -> int | None:
    """Worker processes of this deployment as uvicorn and gunicorn read them
    (``WEB_CONCURRENCY``, 1 when unset); None when the variable is not a whole number."""
    value = os.environ.get("WEB_CONCURRENCY", "").strip()
    if not value:
        return 1
    return int(value) if value.isdigit() and int(value) > 0 else None
