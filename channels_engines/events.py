"""Counts of what a layer did outside the happy path: messages it refused, dropped or repaired.

One :class:`Events` per layer per process, shared by the layer and every engine instance it
creates, so that a test, a health check or an operator can see that something was skipped
instead of reading logs. Names are dotted, ``area.what`` (``receive.undecodable``).

It is also how engines tell the layer's hooks what happened (:meth:`Events.emit`): every
count reaches them as a :class:`~channels_engines.hooks.Counted` event.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from .hooks import Counted, Event, HookRunner

__all__ = ["Events"]


class Events:
    """Thread-safe counters of named events, and the layer's hooks."""

    def __init__(self, hooks: HookRunner | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._hooks = hooks if hooks is not None and hooks.watching else None

    def count(self, name: str, n: int = 1) -> None:
        """Record ``n`` occurrences of ``name``."""
        if n:
            with self._lock:
                self._counts[name] += n
            if self._hooks is not None:
                self._hooks.emit(Counted, name=name, count=n)

    def emit(self, event_class: type[Event], /, **fields: Any) -> None:
        """Tell the layer's hooks that an ``event_class`` event happened (nothing without
        hooks)."""
        if self._hooks is not None:
            self._hooks.emit(event_class, **fields)

    def get(self, name: str) -> int:
        """How many times ``name`` happened so far."""
        with self._lock:
            return self._counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        """Every count so far."""
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        counts = self.snapshot() if hasattr(self, "_counts") else {}  # __init__ may not have run
        return f"<Events {counts!r}>"
