"""The control pipe between the orchestrator and its worker processes.

Workers report events ("ready", "primed", "report", ...) and obey commands ("go", "stop",
"exit"). Control traffic only moves between phases, never per message, so it does not
disturb what is measured. Every wait has a timeout: a silent worker becomes a `Stuck`
error with the worker's own progress attached, never a hung run.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

Payload = dict[str, Any]
ProgressFn = Callable[[], Payload]

#: Command answered by the worker's reader thread itself, so it works even while the
#: worker's main thread is busy or its event loop is blocked in a call.
PROGRESS = "progress"


class WorkerFailed(RuntimeError):
    """The worker raised, died, or reported that it could not go on."""


class Stuck(RuntimeError):
    """The worker did not report the expected event within its time limit."""


class _LinkBase:
    """Worker end of the pipe: a send lock plus a reader thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self.progress: ProgressFn = dict

    def send(self, kind: str, **data: Any) -> None:
        """Report an event to the orchestrator (thread-safe)."""
        with self._send_lock:
            self._conn.send((kind, data))

    def _start_reader(self) -> None:
        threading.Thread(target=self._read_forever, name="bench-link", daemon=True).start()

    def _read_forever(self) -> None:
        while True:
            try:
                kind, data = self._conn.recv()
            except (EOFError, OSError):
                os._exit(3)  # orchestrator is gone: never linger as an orphan
            if kind == PROGRESS:
                try:
                    self.send(PROGRESS, **self.progress())
                except Exception as exc:
                    self.send(PROGRESS, error=repr(exc))
                continue
            self._deliver(kind, data)

    def _deliver(self, kind: str, data: Payload) -> None:
        raise NotImplementedError


class AsyncLink(_LinkBase):
    """Link for workers running an event loop: commands become awaitable."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mail: dict[str, deque[Payload]] = defaultdict(deque)
        self._arrived: dict[str, asyncio.Event] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the running loop and start reading commands."""
        self._loop = loop
        self._start_reader()

    def _deliver(self, kind: str, data: Payload) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._store, kind, data)

    def _store(self, kind: str, data: Payload) -> None:
        self._mail[kind].append(data)
        self._event(kind).set()

    def _event(self, kind: str) -> asyncio.Event:
        return self._arrived.setdefault(kind, asyncio.Event())

    def has(self, kind: str) -> bool:
        """Whether a command of this kind is waiting (non-blocking)."""
        return bool(self._mail[kind])

    async def wait(self, kind: str, timeout: float) -> Payload:
        """Wait for the next command of this kind; raises `Stuck` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not self._mail[kind]:
            event = self._event(kind)
            event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Stuck(f"no {kind!r} command within {timeout:.0f} s")
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                continue
        return self._mail[kind].popleft()

    async def wait_any(self, kinds: tuple[str, ...], timeout: float) -> str | None:
        """Wait until one of `kinds` arrives; returns it (not consumed) or None."""
        deadline = time.monotonic() + timeout
        while True:
            for kind in kinds:
                if self._mail[kind]:
                    return kind
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            waiters = [asyncio.ensure_future(self._event(kind).wait()) for kind in kinds]
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                for kind in kinds:
                    self._event(kind).clear()


class SyncLink(_LinkBase):
    """Link for plain synchronous workers (no event loop anywhere)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._mail: dict[str, deque[Payload]] = defaultdict(deque)
        self._cond = threading.Condition()
        self._start_reader()

    def _deliver(self, kind: str, data: Payload) -> None:
        with self._cond:
            self._mail[kind].append(data)
            self._cond.notify_all()

    def has(self, kind: str) -> bool:
        """Whether a command of this kind is waiting (non-blocking)."""
        with self._cond:
            return bool(self._mail[kind])

    def arrives(self, kind: str, timeout: float) -> bool:
        """Block up to `timeout` s until a command of this kind is waiting (not consumed)."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._mail[kind]), timeout)

    def wait(self, kind: str, timeout: float) -> Payload:
        """Block for the next command of this kind; raises `Stuck` after `timeout` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._mail[kind]), timeout):
                raise Stuck(f"no {kind!r} command within {timeout:.0f} s")
            return self._mail[kind].popleft()


class Worker:
    """Orchestrator end: one spawned worker process and its pipe."""

    def __init__(
        self, role: str, subject: Payload, params: Payload, label: str, log_dir: str
    ) -> None:
        from benchmarks import worker  # imported here so workers never import the CLI

        ctx = multiprocessing.get_context("spawn")
        os.makedirs(log_dir, exist_ok=True)
        self.label = label
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._mail: dict[str, deque[Payload]] = defaultdict(deque)
        self.process = ctx.Process(
            target=worker.main,
            name=label,
            daemon=True,
            args=(role, subject, params, child_conn, f"{log_dir}/{label.replace('/', '.')}.log"),
        )
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        """OS process id of the worker."""
        assert self.process.pid is not None
        return self.process.pid

    def tell(self, kind: str, **data: Any) -> None:
        """Send a command; a worker that already exited is ignored."""
        with contextlib.suppress(OSError):
            self._conn.send((kind, data))

    def poll(self, kind: str, timeout: float) -> Payload | None:
        """The next event of this kind, or None after `timeout` s; raises WorkerFailed."""
        deadline = time.monotonic() + timeout
        while not self._mail[kind]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pump(remaining)
        return self._mail[kind].popleft()

    def expect(self, kind: str, timeout: float) -> Payload:
        """The next event of this kind; raises Stuck (with the worker's progress) on timeout."""
        event = self.poll(kind, timeout)
        if event is None:
            described = self._describe()
            self.dump_stacks()
            raise Stuck(f"{self.label}: no {kind!r} within {timeout:.0f} s{described}")
        return event

    def dump_stacks(self) -> None:
        """Have a stuck worker write its thread and task stacks to its log file."""
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        time.sleep(0.2)

    def expect_while_progressing(
        self, kind: str, watch: str, stall_s: float, limit_s: float
    ) -> Payload | None:
        """Wait for `kind` as long as the worker's `watch` counter keeps moving.

        Returns None once the counter has not changed for `stall_s` seconds (or after
        `limit_s` in all): a slow layer gets the time it needs, a stuck one does not.
        """
        deadline = time.monotonic() + limit_s
        seen, changed = None, time.monotonic()
        while time.monotonic() < deadline:
            event = self.poll(kind, min(1.0, stall_s))
            if event is not None:
                return event
            value = (self.progress() or {}).get(watch)
            if value != seen:
                seen, changed = value, time.monotonic()
            elif time.monotonic() - changed >= stall_s:
                return None
        return None

    def _pump(self, timeout: float) -> None:
        if not self._conn.poll(min(timeout, 0.5)):
            if not self.process.is_alive():
                raise WorkerFailed(f"{self.label}: exited with code {self.process.exitcode}")
            return
        try:
            kind, data = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.process.join(1)
            raise WorkerFailed(f"{self.label}: died (exit code {self.process.exitcode})") from exc
        if kind == "error":
            raise WorkerFailed(f"{self.label}: {data.get('error')}")
        self._mail[kind].append(data)

    def progress(self, timeout: float = 2.0) -> Payload | None:
        """Ask the worker what it has done so far (answered by its reader thread)."""
        if not self.process.is_alive():
            return None
        self.tell(PROGRESS)
        try:
            return self.poll(PROGRESS, timeout)
        except WorkerFailed:
            return None

    def _describe(self) -> str:
        state = self.progress()
        if state is None:
            return ""
        return " (progress: " + ", ".join(f"{k}={v}" for k, v in state.items()) + ")"

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit, then terminate and finally kill it."""
        self.tell("exit")
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2.0)
        self._conn.close()
