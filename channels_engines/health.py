"""Health checks: a real round trip through a channel layer, within a short deadline.

``await check_health(alias)`` sends a message to a new process-specific channel and
receives it. By default it uses the layer this process already has
(``get_channel_layer(alias)``) on the running event loop, so a probe every few seconds
opens no connection of its own and concurrent probes stay within the layer's
``pool_max_size``: with ``"ENGINE": "postgres"`` the message goes out on a pooled
connection, through the server, and comes back on the ``LISTEN`` connection, the very
connections the process serves its clients with. ``fresh=True`` builds new layer
instances instead, two of them when messages leave the process (as two processes would
use, on connections of their own), and closes them afterwards: what ``manage.py
channels_engines check`` does.

A check never hangs: past its deadline it returns a failed result at once, and what it
started unwinds in the background within the layer's own deadlines (``query_timeout``).
Its error text is the exception's type and first line; the package keeps passwords out
of those (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from channels import DEFAULT_CHANNEL_LAYER
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

__all__ = ["DEFAULT_TIMEOUT", "HealthResult", "check_health", "health_view"]

logger = logging.getLogger("channels_engines")

T = TypeVar("T")

#: Seconds a check waits for its round trip unless told otherwise: well within the
#: default timeout of a Kubernetes probe (1 s is too short for a first connection).
DEFAULT_TIMEOUT = 2.0
#: The type of the message a check sends.
MESSAGE_TYPE = "channels_engines.health"
# The longest error text a result carries.
_MAX_ERROR = 300

# The tasks checks started, referenced until they end: what still runs at a check's
# deadline ends by the layer's own deadlines, after the caller has its result.
_RUNNING: set[asyncio.Future[Any]] = set()


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthResult:
    """The outcome of one check of a ``CHANNEL_LAYERS`` alias."""

    alias: str
    #: The layer's ENGINE, or None when the layer could not be built.
    engine: str | None
    ok: bool
    #: Milliseconds from the send to the receipt, connecting included; None on failure.
    round_trip_ms: float | None
    #: Why it failed (an exception's type and first line), or None.
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return dataclasses.asdict(self)


async def check_health(
    alias: str = DEFAULT_CHANNEL_LAYER,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    fresh: bool = False,
) -> HealthResult:
    """Send a message through the layer ``alias`` and receive it, within ``timeout``
    seconds; never raises for a failed check, which is a result with ``ok=False``.

    ``fresh``: use new layer instances (closed afterwards) instead of the process's own.
    """
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout={timeout!r}: expected a number of seconds above 0")
    try:
        sender, receiver = _layers(alias, fresh)
    except Exception as exc:
        return _failed(alias, None, _describe(exc))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    steps: list[asyncio.Future[Any]] = []  # receiving, sending
    cleanup = None
    try:
        result = await _round_trip(alias, sender, receiver, steps, timeout)
    finally:
        # Also when the caller gives up: the receive stops, the rest ends in the
        # background, without holding up the result.
        if steps:
            steps[0].cancel()
        if fresh or (len(steps) > 1 and not steps[1].done()):
            sending = steps[1] if len(steps) > 1 else None
            layers = {id(sender): sender, id(receiver): receiver}
            cleanup = _start(_clean_up(alias, sending, layers, close=fresh))
    if cleanup is not None:
        # Closing fresh layers is quick, unless the server stopped answering: not a wait
        # past the deadline.
        await asyncio.wait({cleanup}, timeout=max(deadline - loop.time(), 0.0))
    return result


@never_cache
async def health_view(
    request: HttpRequest, alias: str = DEFAULT_CHANNEL_LAYER, timeout: float = DEFAULT_TIMEOUT
) -> JsonResponse:
    """A view for probes: 200 with the result as JSON, or 503 when the check failed.

    ``path("healthz/", health_view)``; another alias or deadline through the path's
    extra arguments: ``path("healthz/", health_view, {"alias": "chat", "timeout": 1.5})``.
    """
    result = await check_health(alias, timeout=timeout)
    return JsonResponse(result.as_dict(), status=200 if result.ok else 503)


# Internals --------------------------------------------------------------------------


def _layers(alias: str, fresh: bool) -> tuple[Any, Any]:
    """The sending and the receiving layer of a check (one layer, twice, unless fresh)."""
    from channels.layers import channel_layers

    from .layer import EngineChannelLayer

    if alias not in channel_layers:
        raise LookupError(f"CHANNEL_LAYERS has no alias {alias!r}")
    sender = channel_layers.make_backend(alias) if fresh else channel_layers[alias]
    if not isinstance(sender, EngineChannelLayer):
        raise TypeError(
            f"CHANNEL_LAYERS[{alias!r}] is a {type(sender).__name__}, not a channels_engines layer"
        )
    if fresh and sender.messages_leave_process:
        # Two instances stand for two processes, with connections of their own.
        return sender, channel_layers.make_backend(alias)
    return sender, sender


async def _round_trip(
    alias: str, sender: Any, receiver: Any, steps: list[asyncio.Future[Any]], timeout: float
) -> HealthResult:
    """Receive and send side by side (``steps``), for at most ``timeout`` seconds: a
    receive that cannot listen fails at once, while a send to a server that is down
    retries until its deadline."""
    engine: str = sender.engine_name
    try:
        channel = await receiver.new_channel("health")
        start = time.perf_counter()
        steps.append(_start(receiver.receive(channel)))
        steps.append(_start(sender.send(channel, {"type": MESSAGE_TYPE})))
        await asyncio.wait(steps, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
        for step in steps:
            if step.done():
                step.result()  # raises the step's error
        if not steps[0].done():
            return _failed(alias, engine, f"no round trip within {timeout:g} s")
    except Exception as exc:
        return _failed(alias, engine, _describe(exc))
    took = (time.perf_counter() - start) * 1000
    return HealthResult(alias=alias, engine=engine, ok=True, round_trip_ms=took, error=None)


async def _clean_up(
    alias: str, sending: asyncio.Future[Any] | None, layers: dict[int, Any], *, close: bool
) -> None:
    """Let the send end, then close the check's own layers.

    The send is not cancelled: psycopg answers the cancellation of a query in flight by
    asking the server to cancel it, over a connection of its own, and a server that stopped
    answering never does. The send ends by the layer's own deadlines instead (at most
    ``pool_timeout`` plus ``query_timeout``).
    """
    if sending is not None:
        await asyncio.wait({sending})
    if not close:
        return
    for layer in layers.values():
        try:
            await layer.close()
        except Exception as exc:  # logged: the check's result is already out
            logger.warning(
                "CHANNEL_LAYERS[%r]: closing the health check's layer failed: %s",
                alias,
                _describe(exc),
            )


def _start(work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """A task for ``work``, referenced until it ends; its error, if nobody awaits it, is
    read here rather than reported as "never retrieved" (the result told it already)."""
    task = asyncio.ensure_future(work)
    _RUNNING.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Future[Any]) -> None:
    _RUNNING.discard(task)
    if not task.cancelled():
        task.exception()


def _failed(alias: str, engine: str | None, error: str) -> HealthResult:
    return HealthResult(alias=alias, engine=engine, ok=False, round_trip_ms=None, error=error)


def _describe(exc: BaseException) -> str:
    """The exception's type and the first line of its message (bounded)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"
