"""A hook that keeps every event it is given, for tests to look at."""

from __future__ import annotations

from typing import Any, ClassVar

from channels_engines.hooks import Event, Hook


class Recorder(Hook):
    """Keeps every event of its layer, in order."""

    events: ClassVar[tuple[type[Event], ...]] = (Event,)

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def handle(self, event: Event) -> None:
        self.seen.append(event)

    def of(self, kind: type[Event]) -> list[Any]:
        """The events of ``kind``, in order."""
        return [event for event in self.seen if isinstance(event, kind)]
