"""Waiting for an observable condition, and deterministic payloads.

Kept free of heavy imports so that helper processes (``tests.support.pg_process``) and every
support module can share one copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = 20.0, every: float = 0.02) -> T:
    """Poll ``check()`` (an observation of another process or server) until it is
    truthy; fail naming ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {value!r})"
            )
        time.sleep(every)


async def await_for(
    check: Callable[[], T], what: str, timeout: float = 20.0, every: float = 0.02
) -> T:
    """Async twin of :func:`wait_for` for checks that do not block (engine counters)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {value!r})"
            )
        await asyncio.sleep(every)


def payload_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes of ``size``."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{block}".encode()).digest()
        block += 1
    return bytes(out[:size])
