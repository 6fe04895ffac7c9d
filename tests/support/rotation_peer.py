"""Helpers for tests/test_credentials_rotation.py: credential providers, and a peer process.

``python -m tests.support.rotation_peer '<job>'`` runs one peer of a two-process exchange: it
builds a layer from the job's CONFIG, receives on a normal and a process-specific channel
(both members of the job's group), and once told ``go`` (with the other peer's channels)
sends point-to-point messages to the other peer's two channels and group messages to the
group, until told ``stop``. It reports in JSON lines on stdout (``ready``, ``sent``,
``received``), like ``tests.support.pg_process``, so :class:`tests.support.pgtools.Child`
can drive it.

The providers here stand in for rotating secrets:

* :class:`MintingProvider` mints a random token that expires ``lifetime`` seconds later
  and makes it the role's password (``ALTER ROLE ... PASSWORD ... VALID UNTIL``), as a
  stand-in for an RDS IAM token: new logins with the previous token fail at once, and a
  token is refused after its expiry.
* :func:`controlled_credentials` is a ``callable`` provider steered by :data:`CONTROL`
  from the test process: it can fail (a provider outage) or mint expiring passwords.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql

from channels_engines.credentials import CredentialProvider, Credentials
from channels_engines.options import Option
from channels_engines.testing import engine_for

# Providers ---------------------------------------------------------------------------------


async def set_password(
    admin_dsn: str, role: str, password: str, valid_until: datetime | None = None
) -> None:
    """``ALTER ROLE role PASSWORD password [VALID UNTIL ...]`` as the superuser."""
    statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(password)
    )
    if valid_until is not None:
        statement = sql.SQL("{} VALID UNTIL {}").format(
            statement, sql.Literal(valid_until.isoformat())
        )
    conn = await psycopg.AsyncConnection.connect(
        admin_dsn, autocommit=True, application_name="ce_rotation_minter"
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class MintingProvider(CredentialProvider):
    """Mints a token valid for ``lifetime`` seconds and makes it the role's password."""

    name = "test_minting"
    description = "Test stand-in for short-lived tokens (RDS IAM)."
    options = {
        "admin_dsn": Option((str,), None, "Superuser DSN.", secret=True, required=True),
        "role": Option((str,), None, "Role whose password is the token.", required=True),
        "lifetime": Option((float,), 15.0, "Seconds a token is valid.", minimum=1),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        #: Wall-clock times of the mints (for the fetch-per-window check).
        self.mints: list[float] = []

    async def aget_credentials(self) -> Credentials:
        token = "tok-" + secrets.token_urlsafe(24)
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=self.settings["lifetime"])
        await set_password(
            self.settings["admin_dsn"].reveal(), self.settings["role"], token, expires_at
        )
        self.mints.append(time.time())
        return Credentials(self.settings["role"], token, expires_at)


@dataclass
class Control:
    """What :func:`controlled_credentials` returns; set by the test (same process)."""

    user: str = ""
    password: str = ""
    fail: bool = False
    #: When set, every call mints a new password valid for this many seconds.
    lifetime: float | None = None
    admin_dsn: str = ""
    calls: int = 0
    failures: int = 0
    mints: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


CONTROL = Control()


class ProviderOutage(RuntimeError):
    """The credential provider is unavailable (raised on purpose)."""


async def controlled_credentials() -> dict[str, Any]:
    control = CONTROL
    with control.lock:
        control.calls += 1
        if control.fail:
            control.failures += 1
            raise ProviderOutage("the secrets service is unavailable (test outage)")
        lifetime = control.lifetime
    if lifetime is None:
        return {"user": control.user, "password": control.password}
    password = "tok-" + secrets.token_urlsafe(24)
    expires_at = datetime.now(timezone.utc) + timedelta(seconds=lifetime)
    await set_password(control.admin_dsn, control.user, password, expires_at)
    with control.lock:
        control.password = password
        control.mints.append(time.time())
    return {"user": control.user, "password": password, "expires_at": expires_at}


# The peer process ----------------------------------------------------------------------------


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


async def read_line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


class Records(logging.Handler):
    """Keeps WARNING-and-above records of channels_engines and psycopg."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


async def exchange(layer: Any, job: dict[str, Any]) -> None:
    """See the module docstring. Messages carry (src, kind, seq); each stream of one sender
    task is sequential, so per channel and stream the sequence numbers must arrive as
    0, 1, 2, ... exactly once."""
    me = job["name"]
    group = job["group"]
    pause = job.get("pause", 0.01)
    normal = f"rot.{me}.normal"
    specific = await layer.new_channel(f"rot.{me}")
    mine = [normal, specific]
    for channel in mine:
        await layer.group_add(group, channel)

    received: dict[str, list[list[Any]]] = {channel: [] for channel in mine}
    expected: dict[str, int] = {}
    complete = asyncio.Event()
    receive_errors: list[str] = []

    def check_complete() -> None:
        if expected and all(len(received[ch]) >= n for ch, n in expected.items()):
            complete.set()

    async def receiver(channel: str) -> None:
        while True:
            try:
                msg = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # recorded: receive() must keep working through rotations
                receive_errors.append(traceback.format_exc())
                await asyncio.sleep(0.1)
                continue
            received[channel].append([msg["src"], msg["kind"], msg["seq"]])
            check_complete()

    loop = asyncio.get_running_loop()
    receivers = [asyncio.ensure_future(receiver(channel)) for channel in mine]

    # The listener as seen from inside: every connection it had, and whether it ever had
    # none (a break) once it had one.
    listener_pids: list[int] = []
    listener_gaps = 0
    watching = True

    async def watch_listener() -> None:
        nonlocal listener_gaps
        while watching:
            engine = engine_for(layer, loop)
            listener = getattr(engine, "listener", None)
            pid = listener.backend_pid if listener is not None else None
            if pid is None:
                if listener_pids:
                    listener_gaps += 1
            elif not listener_pids or listener_pids[-1] != pid:
                listener_pids.append(pid)
            await asyncio.sleep(0.005)

    deadline = time.monotonic() + 30
    while True:
        engine = engine_for(layer, loop)
        listener = getattr(engine, "listener", None)
        waiting = layer._shared.mailbox.waiting()
        if (
            listener is not None
            and listener.backend_pid is not None
            and all(channel in waiting for channel in mine)
        ):
            break
        if time.monotonic() > deadline:
            emit("error", error="receivers did not start waiting")
            return
        await asyncio.sleep(0.01)
    watcher = asyncio.ensure_future(watch_listener())
    emit("ready", normal=normal, specific=specific, listener_pid=listener.backend_pid)

    go = json.loads((await read_line()).split(" ", 1)[1])
    stop = asyncio.Event()
    streams: dict[str, dict[str, Any]] = {}
    send_errors: list[str] = []

    async def sender(stream: str, kind: str, target: str) -> None:
        record = streams[stream] = {"kind": kind, "target": target, "sent": 0, "failed": []}
        seq = 0
        while not stop.is_set():
            message = {"type": "rot.message", "src": me, "kind": kind, "seq": seq}
            try:
                if kind == "group":
                    await layer.group_send(target, message)
                else:
                    await layer.send(target, message)
            except Exception:
                record["failed"].append(seq)
                if len(send_errors) < 5:
                    send_errors.append(traceback.format_exc())
            seq += 1
            record["sent"] = seq
            await asyncio.sleep(pause)  # a steady sender, not synchronisation

    senders = [
        asyncio.ensure_future(sender("p2p-normal", "p2p", go["normal"])),
        asyncio.ensure_future(sender("p2p-specific", "p2p", go["specific"])),
        asyncio.ensure_future(sender("group", "group", group)),
    ]
    line = await read_line()
    assert line == "stop", line
    stop.set()
    await asyncio.gather(*senders)
    cache = engine_for(layer, loop).shared.login.credentials
    emit(
        "sent",
        streams=streams,
        errors=send_errors,
        fetches=cache.fetches if cache is not None else None,
    )

    expected.update(json.loads((await read_line()).split(" ", 1)[1]))
    check_complete()
    try:
        await asyncio.wait_for(complete.wait(), job.get("timeout", 60))
    except asyncio.TimeoutError:
        pass
    else:
        # Observation: anything arriving now is a duplicate (or a stray message).
        await asyncio.sleep(job.get("linger", 1.0))
    watching = False
    await watcher
    for task in receivers:
        task.cancel()
    await asyncio.gather(*receivers, return_exceptions=True)
    engine = engine_for(layer, loop)
    listener = engine.listener
    provider = cache.provider if cache is not None else None
    emit(
        "received",
        channels=received,
        errors=receive_errors,
        listener_pids=listener_pids,
        listener_gaps=listener_gaps,
        reconnects=listener.reconnects if listener is not None else None,
        fetches=cache.fetches if cache is not None else None,
        rotations=cache.rotations if cache is not None else None,
        mints=getattr(provider, "mints", None),
        pool=dict(engine.pool.stats) if engine.pool is not None else None,
    )
    await read_line()  # keep the layer open until the test has looked at the server


async def main(job: dict[str, Any]) -> None:
    from channels_engines import EngineChannelLayer

    records = Records()
    for name in ("channels_engines", "psycopg"):
        logging.getLogger(name).addHandler(records)
    layer = EngineChannelLayer(**job["config"])
    try:
        await exchange(layer, job)
    finally:
        await layer.close()
        emit("log", warnings=records.messages)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    asyncio.run(main(json.loads(sys.argv[1])))
