"""A second process for the PostgreSQL engine tests: ``python -m tests.support.pg_process '<job>'``.

Configures Django with ``tests.settings`` (the database comes from
CHANNELS_ENGINES_TEST_DSN), builds a layer from the job's CONFIG and does one job,
reporting in JSON lines on stdout. Jobs:

``receive``
    Receive on ``channels`` (plus ``new`` process-specific channels it makes), after adding
    every one of them to each of ``groups``, until each channel got ``expect`` messages.
    Prints ``ready`` (with the channel names) once every receive() waits, then
    ``received`` (channel, n, size, sha256 of each message's data, in arrival order).
    With ``hold``, the layer stays open until a line on stdin (optionally the PID of the
    LISTEN backend to wait for), then prints ``closing`` with the listener's reconnects.
``send``
    After a ``go`` line on stdin, send ``plan`` ([channel, first n, count, size] entries,
    one sequential sender task per entry, ``pause`` seconds between sends) and print
    ``sent``.
``create``
    Print ``ready``, wait for ``go``, then make the first call (which creates the tables)
    and print ``done`` with the error text, if any.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
import traceback
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from channels_engines import EngineChannelLayer  # noqa: E402
from channels_engines.testing import engine_for  # noqa: E402
from tests.support.polling import payload_bytes  # noqa: E402


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


async def read_line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


async def receive_job(layer: EngineChannelLayer, job: dict[str, Any]) -> None:
    channels = list(job.get("channels", []))
    channels += [
        await layer.new_channel(job.get("prefix", "specific")) for _ in range(job.get("new", 0))
    ]
    for group in job.get("groups", []):
        for channel in channels:
            await layer.group_add(group, channel)
    expect = job["expect"]
    received: list[list[Any]] = []
    errors: list[str] = []
    waiting: set[str] = set()

    async def receiver(channel: str) -> None:
        for _ in range(expect):
            waiting.add(channel)
            try:
                msg = await layer.receive(channel)
            except Exception:  # recorded: a receive() must keep waiting through faults
                errors.append(traceback.format_exc())
                return
            data = msg.get("data", b"")
            received.append([channel, msg.get("n"), len(data), hashlib.sha256(data).hexdigest()])

    tasks = [asyncio.ensure_future(receiver(channel)) for channel in channels]
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 30
    while True:
        engine = engine_for(layer, loop)
        listener = getattr(engine, "listener", None)
        waiters = layer._shared.mailbox.waiting() if channels else {}
        if (
            listener is not None
            and listener.backend_pid is not None
            and all(channel in waiters for channel in channels)
        ) or any(task.done() for task in tasks):
            break
        if time.monotonic() > deadline:
            emit("error", error="receivers did not start waiting")
            return
        await asyncio.sleep(0.01)
    emit("ready", channels=channels, listener_pid=listener.backend_pid)
    _done, pending = await asyncio.wait(tasks, timeout=job.get("timeout", 60))
    for task in pending:
        task.cancel()
    engine = engine_for(layer, loop)
    listener = getattr(engine, "listener", None)
    emit(
        "received",
        messages=received,
        errors=errors,
        timed_out=len(pending),
        reconnects=listener.reconnects if listener is not None else None,
        from_notes=getattr(getattr(engine, "_delivery", None), "from_notes", None),
        events=layer.events.snapshot(),
    )
    if job.get("hold"):
        # Keep the layer (and its listener) until told to finish; a number is the PID of
        # the LISTEN backend the parent last saw, which this listener must have reached.
        line = await read_line()
        listener = getattr(engine_for(layer, loop), "listener", None)
        deadline = time.monotonic() + 10
        while line.isdigit() and listener is not None and listener.backend_pid != int(line):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        emit(
            "closing",
            reconnects=listener.reconnects if listener is not None else None,
            listener_pid=listener.backend_pid if listener is not None else None,
        )


async def send_job(layer: EngineChannelLayer, job: dict[str, Any]) -> None:
    emit("ready")
    await read_line()
    errors: list[str] = []
    pause = job.get("pause", 0)

    async def sender(channel: str, first: int, count: int, size: int) -> None:
        for n in range(first, first + count):
            message = {
                "type": "test.message",
                "n": n,
                "ch": channel,
                "data": payload_bytes(size, n),
            }
            try:
                await layer.send(channel, message)
            except Exception:
                errors.append(traceback.format_exc())
            if pause:
                await asyncio.sleep(pause)  # a steady sender, not synchronisation

    await asyncio.gather(*(sender(*entry) for entry in job["plan"]))
    emit("sent", errors=errors)


async def create_job(layer: EngineChannelLayer, job: dict[str, Any]) -> None:
    emit("ready")
    await read_line()
    try:
        await layer.send(job["channel"], {"type": "test.message", "n": 0})
    except Exception as exc:
        emit("done", error=f"{type(exc).__name__}: {exc}")
    else:
        emit("done", error=None)


async def main(job: dict[str, Any]) -> None:
    layer = EngineChannelLayer(**job["config"])
    try:
        await {"receive": receive_job, "send": send_job, "create": create_job}[job["job"]](
            layer, job
        )
    finally:
        await layer.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
