"""Counts of what a layer did outside the happy path: messages it refused, dropped or repaired.

One :class:`Events` per layer per process, shared by the layer and every engine instance it
creates, so that a test, a health check or an operator can see that something was skipped
instead of reading logs. Names are dotted, ``area.what`` (``receive.undecodable``).
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["Events"]


class Events:
    """Thread-safe counters of named events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def count(self, name: str, n: int = 1) -> None:
        """Record ``n`` occurrences of ``name``."""
        if n:
            with self._lock:
                self._counts[name] += n

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
