"""Every round trip to the server has a deadline; a session that misses one is abandoned.

A server that hangs, or a network path that silently stops forwarding, answers nothing and
closes nothing: without a deadline the caller, and everything queued behind it on the same
event loop, waits for TCP to give up, which takes minutes to hours. On a missed deadline
the session's socket is shut down on our side at once. Cancelling the query instead would
make psycopg ask the server to cancel it and wait for that answer too, which a hung server
or a dead path never gives.

A session closed this way may still be alive on the server, inside a transaction, holding
row locks, or about to commit what it was sent. :func:`end_backend` asks the server to end
it, from another session, so that its outcome is settled before anything depends on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import psycopg

__all__ = [
    "BoundedConnection",
    "QueryTimeout",
    "ServerReadOnly",
    "answers_within",
    "end_backend",
    "fetch",
    "outcome_unknown",
    "read_only",
    "transaction",
    "within",
]

logger = logging.getLogger("channels_engines.postgres")

Connection = psycopg.AsyncConnection[tuple[Any, ...]]
T = TypeVar("T")

# SQLSTATEs after which a statement certainly did not commit: it may be sent again.
_NOT_COMMITTED = frozenset({"57014", "40001", "40P01", "25P02"})
# A write refused by a session that can only read.
_READ_ONLY = "25006"


class QueryTimeout(psycopg.OperationalError):
    """The server did not answer within the deadline; the session was abandoned."""

    def __init__(self, message: str, backend_pid: int | None) -> None:
        super().__init__(message)
        #: Server process of the abandoned session (it may still be running).
        self.backend_pid = backend_pid


class ServerReadOnly(psycopg.OperationalError):
    """Every session the engine could get until the deadline refused to write: the server
    is a standby, or ``default_transaction_read_only`` was on when they began. Raised
    from the last refusal, whose message it keeps."""

    def __init__(self, cause: BaseException, *, seconds: float) -> None:
        super().__init__(str(cause))
        self.seconds = seconds


def read_only(error: BaseException) -> bool:
    """Whether ``error`` is a write refused by a session that can only read."""
    return getattr(error, "sqlstate", None) == _READ_ONLY


class BoundedConnection(psycopg.AsyncConnection[tuple[Any, ...]]):
    """A connection whose statements, cancelled or not, end by their deadline.

    When the task awaiting a statement is cancelled (a consumer whose client went away),
    psycopg asks the server to cancel the statement over a new connection and waits up to
    five seconds for that answer. A server that does not answer the statement does not
    answer the request either: the wait here ends at the statement's own deadline, after
    which :func:`within` abandons the session anyway.
    """

    #: Loop time by which the round trip in progress must be answered (set by within()).
    deadline: float | None = None

    async def cancel_safe(self, *, timeout: float = 30.0) -> None:
        if self.deadline is not None:
            left = self.deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return  # abandoned already: nobody is left to ask
            timeout = min(timeout, left)
        try:
            await super().cancel_safe(timeout=timeout)
        except psycopg.errors.CancellationTimeout:
            pass
        else:
            return
        # Raised anew, outside the handler: psycopg's error holds (through its context's
        # frames) the request's connection, whose socket would stay open for as long as
        # anything kept the error, such as a log handler that keeps records.
        raise psycopg.errors.CancellationTimeout(
            f"the server did not answer the cancellation request within {timeout:g} s"
        )


async def within(conn: Connection, work: Awaitable[T], timeout: float, what: str) -> T:
    """Await ``work`` (a round trip on ``conn``) for at most ``timeout`` seconds.

    At the deadline the connection's socket is shut down, which ends whatever psycopg is
    waiting for with an error at once; that error is raised as :class:`QueryTimeout`. A
    cancellation of the caller asks the server to cancel the statement, and waits for that
    no later than the same deadline (:class:`BoundedConnection`). No task is created: this
    sits on every round trip.
    """
    pid = conn.info.backend_pid if not conn.closed else None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        _shut_down(conn)

    loop = asyncio.get_running_loop()
    handle = loop.call_later(timeout, expire)
    if isinstance(conn, BoundedConnection):
        conn.deadline = loop.time() + timeout
    try:
        return await work
    except Exception as exc:
        if expired:
            raise QueryTimeout(
                f"the server did not answer {what} within {timeout:g} s; the connection was "
                "abandoned (CONFIG['query_timeout'])",
                pid,
            ) from exc
        if read_only(exc) and not conn.closed:
            # A session that began read-only (on a standby, or under
            # default_transaction_read_only) stays so: closed, so that neither the pool
            # nor the listener uses it again, and the next one is made afresh (after a
            # failover, on the new primary).
            await conn.close()
        raise
    finally:
        handle.cancel()
        if isinstance(conn, BoundedConnection):
            conn.deadline = None


async def fetch(
    conn: Connection, statement: str, parameters: Any, *, timeout: float, what: str
) -> list[tuple[Any, ...]]:
    """Execute ``statement`` and return its rows (none for a statement without rows)."""

    async def run() -> list[tuple[Any, ...]]:
        cursor = await conn.execute(statement, parameters)
        return await cursor.fetchall() if cursor.description is not None else []

    return await within(conn, run(), timeout, what)


@contextlib.asynccontextmanager
async def transaction(conn: Connection, timeout: float, what: str) -> AsyncIterator[None]:
    """BEGIN, then COMMIT if the block succeeds or ROLLBACK if it raises, each within
    ``timeout`` (on an autocommit connection)."""
    await within(conn, conn.execute("BEGIN"), timeout, what)
    try:
        yield
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(Exception):
                await within(conn, conn.execute("ROLLBACK"), timeout, what)
        raise
    await within(conn, conn.execute("COMMIT"), timeout, what)


async def answers_within(conn: Connection, timeout: float) -> bool:
    """Whether ``SELECT 1`` on ``conn`` answers within ``timeout`` seconds.

    When it does not, or the caller is cancelled meanwhile, the session is abandoned at
    once: a health check is often given up on (a checkout cancelled by its caller), and
    must not make anyone wait for psycopg's cancellation of a query on a hung server.
    A failed query raises: the caller decides what it means.
    """
    probe = asyncio.ensure_future(conn.execute("SELECT 1"))
    try:
        done, _ = await asyncio.wait({probe}, timeout=timeout)
    finally:
        if not probe.done():
            _shut_down(conn)
            conn.pgconn.finish()
            probe.cancel()
            with contextlib.suppress(BaseException):
                await probe
    if not done:
        return False
    probe.result()
    return True


def outcome_unknown(error: BaseException, conn: Connection) -> bool:
    """Whether a write that failed with ``error`` on ``conn`` may have committed anyway.

    The connection broke (a missed deadline, a terminated backend, a network failure)
    after the statement was sent: the server may have committed it and lost only the
    answer. An error the statement itself raised means it did not commit.
    """
    if not isinstance(error, psycopg.OperationalError):
        return False
    if getattr(error, "sqlstate", None) in _NOT_COMMITTED:
        return False
    return bool(conn.closed or conn.broken)


async def end_backend(conn: Connection, pid: int, timeout: float) -> bool:
    """End the server session ``pid`` (an abandoned one) and wait until it is gone.

    Runs on ``conn``, another session of the same login. True once the session no longer
    exists; False if it could not be ended within ``timeout`` (for example, a login
    without the right to end sessions of the login that opened it).
    """

    async def terminate() -> bool:
        # Only a session of this layer's own application_name: behind a pooler the
        # process id a client is told may not be the server's.
        if conn.info.server_version >= 140000:
            cursor = await conn.execute(
                "SELECT coalesce(bool_or(pg_terminate_backend(pid, %s)), true)"
                " FROM pg_stat_activity"
                " WHERE pid = %s AND application_name = current_setting('application_name')",
                [max(1, int(timeout * 1000)), pid],
            )
            row = await cursor.fetchone()
            return bool(row and row[0])
        # PostgreSQL 13 cannot wait for the session to end: ask, then watch it go.
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid = %s AND application_name = current_setting('application_name')",
            [pid],
        )
        while True:
            cursor = await conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s"
                " AND application_name = current_setting('application_name'))",
                [pid],
            )
            row = await cursor.fetchone()
            if row and row[0]:
                return True
            await asyncio.sleep(0.02)

    try:
        return await within(conn, terminate(), timeout + 1.0, "ending an abandoned session")
    except psycopg.errors.InsufficientPrivilege:
        logger.warning(
            "Could not end the abandoned server session %d: this login may not end "
            "sessions of the login that opened it. Its outcome is settled when the "
            "server notices the connection is gone.",
            pid,
        )
        return False


def _shut_down(conn: Connection) -> None:
    """End ``conn``'s socket in both directions, without closing its descriptor (psycopg
    still owns it): a read that waits sees the end of the stream at once."""
    if conn.closed:
        return
    try:
        duplicate = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except (OSError, psycopg.OperationalError):
        return
    with duplicate, contextlib.suppress(OSError):
        duplicate.shutdown(socket.SHUT_RDWR)
