"""Every round trip of the redis engine: scripts by SHA, deadlines, and what may be retried.

Scripts run with EVALSHA; a server that does not know one (restarted, failed over,
``SCRIPT FLUSH``) answers NOSCRIPT, and the scripts are loaded and the call made again.
Each connection has the layer's ``query_timeout`` as its socket timeout, so no answer is
awaited longer; redis-py retries nothing by itself (see :class:`.connection.Login`).
Calls that may be repeated (every script but a claim) are repeated on a fresh connection
with back-off until ``pool_timeout`` has passed; then the caller gets
:class:`~channels_engines.ServerUnavailableError`, with the client's error chained.

In a cluster, a ``MOVED`` answer corrects the slot map and the call goes again at once
to the node named; ``ASK`` (a slot half moved) sends that one call to the importing node
after ``ASKING``; ``TRYAGAIN`` and ``CLUSTERDOWN`` (a slot's keys being moved, a
failover under way) are waited out like a lost connection. None of these ran the
command, so a claim may be repeated after them.

A write the server refuses for lack of memory is not repeated: the caller gets
:class:`~channels_engines.ServerFullError` at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..exceptions import ServerFullError, ServerUnavailableError
from .keys import SCRIPTS, Script
from .servers import Servers, redirection

__all__ = [
    "call",
    "is_connection_error",
    "load_scripts",
    "read_range",
    "run_script",
    "unavailable",
]

T = TypeVar("T")

# Back-off between attempts (seconds): doubling, with jitter.
_RETRY_FIRST = 0.02
_RETRY_MAX = 0.5
# MOVED answers followed at once; more, and the nodes disagree: pause between them.
_REDIRECTS_AT_ONCE = 5


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection (or the server) failed, not the command."""
    from redis.exceptions import ConnectionError, TimeoutError

    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def is_noscript(exc: BaseException) -> bool:
    from redis.exceptions import NoScriptError

    return isinstance(exc, NoScriptError)


def out_of_memory(exc: BaseException) -> bool:
    """Whether the server refused a write for lack of memory (``maxmemory`` reached under
    a policy that refuses writes; redis-py before 8 raises a plain ResponseError)."""
    from redis.exceptions import OutOfMemoryError, ResponseError

    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("OOM ")
    )


def server_full(*, what: str, where: str) -> ServerFullError:
    """The error callers get when the server had no memory for what they wrote."""
    return ServerFullError(
        f"{where}: {what} was refused: the Redis server has no memory left (maxmemory "
        "reached, and its maxmemory-policy refuses writes). Nothing was stored; receivers "
        "that take their messages free memory, or raise maxmemory."
    )


async def load_scripts(client: Any) -> None:
    """Load every script of the engine (after a NOSCRIPT answer)."""
    pipe = client.pipeline(transaction=False)
    for script in SCRIPTS:
        pipe.script_load(script.source)
    await pipe.execute()


async def run_script(
    servers: Servers, script: Script, keys: Sequence[str], args: Sequence[Any]
) -> Any:
    """One script call on the server of ``keys[0]``, loading the scripts once if the
    server does not know them; on the importing node, once, if told to ``ASK`` there."""
    client = await servers.for_key(keys[0])
    try:
        return await _evalsha(client, script, keys, args)
    except Exception as exc:
        found = redirection(exc)
        if found is None or found[0] != "ASK":
            raise
    return await _evalsha(servers.client_of(found[2]), script, keys, args, asking=True)


async def read_range(servers: Servers, stream: str, start: str, count: int) -> tuple[int, Any]:
    """The server's clock (ms) and up to ``count`` entries of ``stream`` from ``start``
    (``(id`` for after an id), in one round trip of plain commands: a script would copy
    every message into Lua and back. Raw replies, as a script would return them; once
    on the importing node, after ``ASKING``, if told to ``ASK`` there."""
    from redis.exceptions import ResponseError

    client = await servers.for_key(stream)
    commands: list[tuple[Any, ...]] = [("TIME",), ("XRANGE", stream, start, "+", "COUNT", count)]
    for _ in range(2):
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            replies: list[Any] = []
            for _command in commands:
                try:
                    replies.append(await conn.read_response(disable_decoding=True))
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        error = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if error is None:
            seconds, micros = replies[-2]
            return int(seconds) * 1000 + int(micros) // 1000, replies[-1]
        found = redirection(error)
        if found is None or found[0] != "ASK" or commands[0] == ("ASKING",):
            raise error
        client = servers.client_of(found[2])
        commands.insert(0, ("ASKING",))
    raise AssertionError("unreachable")


async def _evalsha(
    client: Any, script: Script, keys: Sequence[str], args: Sequence[Any], asking: bool = False
) -> Any:
    for attempt in range(2):
        try:
            if not asking:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            return (await pipe.execute())[1]
        except Exception as exc:
            if attempt or not is_noscript(exc):
                raise
        await load_scripts(client)
    raise AssertionError("unreachable")


async def call(
    work: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    what: str,
    where: str,
    refused: Callable[[], bool] | None = None,
    servers: Servers | None = None,
) -> T:
    """Run ``work`` (a call that may be repeated), again after connection failures until
    ``deadline`` seconds have passed. A refused login is tried once more if ``refused()``
    (told of it) has new credentials to try, else raised as it is. With ``servers``, a
    cluster's redirections are followed (see the module docstring)."""
    from redis.exceptions import AuthenticationError

    until = time.monotonic() + deadline
    pause = _RETRY_FIRST
    login_retried = False
    redirects = 0
    while True:
        try:
            return await work()
        except Exception as exc:
            if out_of_memory(exc):
                raise server_full(what=what, where=where) from exc
            if isinstance(exc, AuthenticationError):
                if login_retried or refused is None or not refused():
                    raise
                login_retried = True
                continue
            if servers is not None:
                if servers.redirected(exc):
                    redirects += 1
                    if redirects <= _REDIRECTS_AT_ONCE and time.monotonic() < until:
                        continue  # nodes that disagree meanwhile get the pauses below
                elif is_connection_error(exc):
                    servers.failed()
                elif not servers.may_retry(exc):
                    raise
            elif not is_connection_error(exc):
                raise
            left = until - time.monotonic()
            if left <= 0:
                raise unavailable(exc, what=what, where=where, seconds=deadline) from exc
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.0)))  # noqa: S311
            pause = min(pause * 2, _RETRY_MAX)


def unavailable(
    error: BaseException, *, what: str, where: str, seconds: float
) -> ServerUnavailableError:
    """The error callers get when the server stayed out of reach for ``seconds``."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ServerUnavailableError(
        f"{where}: {what} failed: the Redis server did not answer within {seconds:g} s "
        f"(CONFIG['pool_timeout']): {reason}"
    )
