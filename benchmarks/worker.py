"""Entry point of every spawned worker process.

A role is named "module:function" (e.g. "benchmarks.scenarios.flow:receiver"). Async roles
run in their own event loop, like an ASGI worker; sync roles run with no loop at all,
like a management command or a task runner. The worker exits with `os._exit` once the
role returns, so a layer's teardown can never hang the run (the kernel closes sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import importlib
import inspect
import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.control import AsyncLink, Stuck, SyncLink

#: A finished role stays alive (its loop running) until the orchestrator says "exit", so a
#: layer that flushes work in the background is never cut short by the measurement.
LINGER_S = 600.0

Payload = dict[str, Any]


@dataclass
class Errors:
    """Errors seen inside a worker, including exceptions of tasks nobody awaited."""

    count: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, error: object) -> None:
        """Count one error and keep the first few descriptions."""
        self.count += 1
        if len(self.samples) < 3:
            self.samples.append(str(error)[:300])


@dataclass
class AsyncContext:
    """What an async role gets: its link, its layer, its parameters."""

    link: AsyncLink
    layer: Any
    params: Payload
    subject: Payload
    errors: Errors


@dataclass
class SyncContext:
    """What a sync role gets; it builds its layer itself (no loop exists)."""

    link: SyncLink
    params: Payload
    subject: Payload
    errors: Errors


def main(role: str, subject: Payload, params: Payload, conn: Connection, log_path: str) -> None:
    """Run one role and exit; any exception is reported as an "error" event.

    The worker's stderr (Python and C level) goes to `log_path`, so layer warnings stay
    available for debugging without flooding the terminal.
    """
    _redirect_stderr(log_path)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # async roles install a task dump
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    module_name, _, func_name = role.partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    errors = Errors()
    try:
        if inspect.iscoroutinefunction(func):
            asyncio.run(_run_async(func, subject, params, conn, errors))
        else:
            link = SyncLink(conn)
            func(SyncContext(link, params, subject, errors))
            _linger(link.wait)
    except BaseException as exc:
        traceback.print_exc()
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        with contextlib.suppress(OSError):
            conn.send(("error", {"error": detail, "traceback": traceback.format_exc()}))
        _exit(1)
    _exit(0)


async def _run_async(
    func: Any, subject: Payload, params: Payload, conn: Connection, errors: Errors
) -> None:
    from benchmarks.layers import build_layer

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)
    loop.set_exception_handler(
        lambda _loop, ctx: errors.add(ctx.get("exception") or ctx["message"])
    )
    link = AsyncLink(conn)
    link.bind(loop)
    layer = build_layer(subject)
    await func(AsyncContext(link, layer, params, subject, errors))
    with contextlib.suppress(Stuck):
        await link.wait("exit", LINGER_S)


def _linger(wait: Any) -> None:
    with contextlib.suppress(Stuck):
        wait("exit", LINGER_S)


def _dump_tasks() -> None:
    """On SIGUSR2 (sent when the orchestrator finds us stuck): where is every task?"""
    print(f"--- {len(asyncio.all_tasks())} asyncio tasks ---", file=sys.stderr)
    for task in list(asyncio.all_tasks())[:20]:
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


def _redirect_stderr(path: str) -> None:
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
