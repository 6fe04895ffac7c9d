"""Orchestration shared by the delivery scenarios: receivers, one sender, four phases.

1. receivers start (the first one flushes the layer), each reports its channels;
2. the sender probes until every receiving member has seen a probe ("primed");
3. warm-up messages, until every receiver has seen all of them;
4. measured messages; receivers report when complete, or are stopped on timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.control import Stuck, Worker
from benchmarks.roles import RECEIVER
from benchmarks.scenarios.cell import Cell, Metrics, Payload
from benchmarks.stats import ns_to_ms, percentile, rate

#: Sender probing cadence while waiting for every member to listen.
PROBE_INTERVAL_S = 0.1


@dataclass
class Outcome:
    """What the sender and the receivers reported for the measured phase."""

    sent: Payload
    reports: list[Payload]
    deliveries_per_message: int
    notes: list[str] = field(default_factory=list)

    @property
    def received(self) -> int:
        """Distinct (member, seq) deliveries."""
        return sum(int(report["received"]) for report in self.reports)

    @property
    def lost(self) -> int:
        """Deliveries owed by successful sends that never arrived."""
        return max(0, int(self.sent["ok"]) * self.deliveries_per_message - self.received)

    @property
    def last_ns(self) -> int | None:
        """When the last first-arrival happened, across receivers."""
        stamps = [int(r["last_ns"]) for r in self.reports if r["last_ns"] is not None]
        return max(stamps) if stamps else None

    def latencies_ms(self) -> list[float]:
        """End-to-end latencies of every distinct delivery."""
        return ns_to_ms(ns for report in self.reports for ns in report["latencies_ns"])

    def common_metrics(self) -> Metrics:
        """Throughput, latency, loss, duplicates and errors."""
        latencies = self.latencies_ms()
        return {
            "rate": rate(self.received, self.sent["first_ns"], self.last_ns),
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
            "lost": self.lost,
            "dup": sum(int(report["dup"]) for report in self.reports),
            "errors": int(self.sent["errors"])
            + sum(int(r["errors"]) + int(r["misrouted"]) for r in self.reports),
            "error_samples": [
                *self.sent.get("error_samples", []),
                *(s for r in self.reports for s in r.get("error_samples", [])),
            ][:3],
            "notes": self.notes,
        }

    def call_p50_ms(self) -> float | None:
        """Median duration of the sender's awaited calls."""
        return percentile(ns_to_ms(self.sent["call_ns"]), 0.50)


class DeliveryRun:
    """Drives the phases; every wait is bounded by the cell's time limits."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.receivers: list[Worker] = []
        self.sender: Worker | None = None
        self._warm = False
        self._deliveries_per_message = 0
        self._notes: list[str] = []
        self._members: list[int] = []
        self._planned = 0

    def start_receivers(self, params: list[Payload]) -> list[list[str]]:
        """Start receivers; returns each one's channel names."""
        sizes = self.cell.sizes
        common = {
            "timeout": sizes.measure_timeout_s + sizes.step_timeout_s,
            "grace": sizes.grace_s,
            "start": "one_first",
        }
        first = self.cell.spawn(RECEIVER, "receiver-1", **{**common, "flush": True, **params[0]})
        channels = [first.expect("ready", sizes.step_timeout_s)["channels"]]
        others = [
            self.cell.spawn(RECEIVER, f"receiver-{index}", **{**common, **extra})
            for index, extra in enumerate(params[1:], start=2)
        ]
        channels += [worker.expect("ready", sizes.step_timeout_s)["channels"] for worker in others]
        self.receivers = [first, *others]
        self._members = [int(p["members"]) for p in params]
        self._warm = any(p["warm_total"] for p in params)
        return channels

    def start_sender(self, role: str, deliveries_per_message: int, **params: Any) -> Worker:
        """Start the sender; once it is probing, let the receivers start their consumers.

        The sender connects first so that a receiver whose start opens many connections
        cannot starve the sender of its own (the budget is per role on the server).
        """
        sizes = self.cell.sizes
        self._deliveries_per_message = deliveries_per_message
        self._planned = int(params["count"])
        self.sender = self.cell.spawn(
            role,
            "sender",
            prime_timeout=sizes.step_timeout_s,
            probe_interval=PROBE_INTERVAL_S,
            timeout=sizes.measure_timeout_s,
            **params,
        )
        self.sender.expect("probing", sizes.step_timeout_s)
        for worker in self.receivers:
            worker.tell("start")
        return self.sender

    def prime(self) -> None:
        """Wait until every member listens, stop the probes, finish the warm-up.

        A warm-up that stops making progress is noted and the run goes on: the measured
        phase then shows the loss instead of the cell ending with no numbers.
        """
        assert self.sender is not None
        sizes = self.cell.sizes
        for worker in self.receivers:
            worker.expect("primed", sizes.step_timeout_s)
        self.sender.tell("go")
        if not self._warm:
            return
        for worker in self.receivers:
            if (
                worker.expect_while_progressing(
                    "warm", "warm", sizes.stall_s, sizes.measure_timeout_s
                )
                is None
            ):
                state = worker.progress() or {}
                self._notes.append(
                    f"{worker.label}: warm-up incomplete "
                    f"({state.get('warm')}/{state.get('warm_expected')})"
                )

    def measure(self) -> Outcome:
        """Run the measured phase and collect every report.

        Receivers get as long as deliveries keep arriving; once none has arrived for
        `stall_s`, the rest counts as lost.
        """
        assert self.sender is not None
        sizes = self.cell.sizes
        self.sender.tell("measure")
        sent = self.sender.expect_while_progressing(
            "sent", "sent", sizes.stall_s, sizes.measure_timeout_s
        )
        if sent is None:
            described = self.sender.progress() or {}
            self.sender.dump_stacks()
            raise Stuck(
                f"{self.sender.label}: no call completed for {sizes.stall_s:.0f} s "
                f"(progress: {described}; stacks in its log)"
            )
        if sent["ok"] < self._planned:
            owed = int(sent["ok"]) * self._deliveries_per_message
            for worker, members in zip(self.receivers, self._members, strict=True):
                worker.tell("expect", total=owed * members // sum(self._members))
        for worker in self.receivers:
            if (
                worker.expect_while_progressing(
                    "complete", "received", sizes.stall_s, sizes.measure_timeout_s
                )
                is None
            ):
                state = worker.progress() or {}
                self._notes.append(
                    f"{worker.label}: stopped waiting after {sizes.stall_s:.0f} s "
                    f"without a delivery ({state.get('received')}/"
                    f"{state.get('expected')} received)"
                )
                worker.tell("stop")
        reports = [w.expect("report", sizes.grace_s + sizes.step_timeout_s) for w in self.receivers]
        return Outcome(sent, reports, self._deliveries_per_message, self._notes)
