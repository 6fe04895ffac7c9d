"""One cell of the run: one subject in one scenario in one repetition."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from typing import Any

from benchmarks.config import Sizes
from benchmarks.control import Worker
from benchmarks.monitor import Monitor

Payload = dict[str, Any]
Metrics = dict[str, Any]


class PartialResult(Exception):
    """A cell that failed part-way but measured something worth showing (e.g. peak conns)."""

    def __init__(self, status: str, metrics: Metrics) -> None:
        super().__init__(status)
        self.status, self.metrics = status, metrics


@dataclass
class Cell:
    """Spawns the cell's workers and guarantees none survives the cell."""

    subject: Payload
    sizes: Sizes
    monitor: Monitor
    log_dir: str
    tag: str = "cell"
    workers: list[Worker] = field(default_factory=list)

    @property
    def server(self) -> str:
        """ "postgres" or "redis": the server this subject talks to."""
        return str(self.subject["server"])

    def spawn(self, role: str, label: str, **params: Any) -> Worker:
        """Start a worker process for this cell's subject."""
        worker = Worker(
            role,
            self.subject,
            params,
            label=f"{self.subject['name']}/{label}",
            log_dir=f"{self.log_dir}/{self.tag}",
        )
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        """Stop every worker of the cell, then reap anything left."""
        for worker in self.workers:
            worker.stop()
        for child in multiprocessing.active_children():
            child.kill()
            child.join(2.0)
        self.workers.clear()
