"""Sender identities: who stored a message, and in which order.

Each engine instance stores its messages under a sender id and increasing sequence
numbers, so that a send retried after its answer was lost is recognised, never stored
or delivered twice.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

__all__ = ["Sender", "Senders"]


@dataclass
class Sender:
    """The identity a writer stores messages under, and its next sequence number."""

    id: int
    next_seq: int = 1

    def take(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq


class Senders:
    """Sender identities of one layer in one process, each lent to one writer at a time.

    An identity returned by a closed writer is lent again, so consecutive event loops
    (``async_to_sync`` makes one per call) continue one sequence instead of each starting
    a new sender that receivers must remember.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[Sender] = []

    def lease(self) -> Sender:
        with self._lock:
            if self._free:
                return self._free.pop()
        # Positive, so that it never equals a key the claim ledger derives from a row id.
        return Sender(id=secrets.randbits(63) or 1)

    def give_back(self, sender: Sender) -> None:
        with self._lock:
            self._free.append(sender)
