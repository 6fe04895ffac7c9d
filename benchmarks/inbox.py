"""Receiver-side accounting: every message is tagged, so loss and duplicates are exact.

Messages carry {"type", "seq", "t"} (+ "to" when the sender addresses several channels).
"bench.probe" proves a member is really listening, "bench.warm" warms caches and
connections, "bench.msg" is measured. A (member, seq) pair seen twice is a duplicate;
one never seen is lost.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.control import AsyncLink

PROBE = "bench.probe"
WARM = "bench.warm"
MEASURED = "bench.msg"

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process on the host


class Inbox:
    """Counts what the members of one receiving process got, and when."""

    def __init__(self, link: AsyncLink, members: int, warm_total: int, expected_total: int) -> None:
        self._link = link
        self._primed = [False] * members
        self._unprimed = members
        self._warm_total = warm_total
        self._expected = expected_total
        self.warm = 0
        self.seen: set[tuple[int, int]] = set()
        self.dup = 0
        self.misrouted = 0
        self.latencies_ns: list[int] = []
        self.last_ns: int | None = None
        self.complete = asyncio.Event()
        self.first_member_primed = asyncio.Event()

    def deliver(self, member: int, message: dict[str, Any], arrived_ns: int) -> None:
        """Account for one received message."""
        kind = message.get("type")
        if kind == MEASURED:
            self._measured(member, message, arrived_ns)
        elif kind == PROBE:
            if not self._primed[member]:
                self._primed[member] = True
                self._unprimed -= 1
                if member == 0:
                    self.first_member_primed.set()
                if self._unprimed == 0:
                    self._link.send("primed")
        elif kind == WARM:
            self.warm += 1
            if self.warm == self._warm_total:
                self._link.send("warm")

    def _measured(self, member: int, message: dict[str, Any], arrived_ns: int) -> None:
        if message.get("to", member) != member:
            self.misrouted += 1
            return
        key = (member, message["seq"])
        if key in self.seen:
            self.dup += 1
            return
        self.seen.add(key)
        self.latencies_ns.append(arrived_ns - message["t"])
        self.last_ns = arrived_ns
        if len(self.seen) == self._expected:
            self.complete.set()
            self._link.send("complete")

    def expect(self, total: int) -> None:
        """Lower the target when the sender could not send everything it planned."""
        self._expected = total
        if len(self.seen) >= total:
            self.complete.set()

    def progress(self) -> dict[str, Any]:
        """Snapshot for a stuck report (read from the link's thread)."""
        return {
            "unprimed_members": self._unprimed,
            "warm": self.warm,
            "warm_expected": self._warm_total,
            "received": len(self.seen),
            "expected": self._expected,
            "dup": self.dup,
        }

    def report(self) -> dict[str, Any]:
        """Final numbers for the orchestrator."""
        return {
            "received": len(self.seen),
            "lost": self._expected - len(self.seen),
            "dup": self.dup,
            "misrouted": self.misrouted,
            "latencies_ns": self.latencies_ns,
            "last_ns": self.last_ns,
        }
