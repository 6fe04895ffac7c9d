"""The LISTEN connection: what it listens on, and for how long."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from channels_engines.postgres.schema import listen_identifier
from tests.support.pgtools import engine_of, make_layer, run
from tests.support.polling import await_for

pytestmark = pytest.mark.postgres


def test_names_nobody_waits_on_any_more_are_unlistened(app: str, prefix: str) -> None:
    """300 receives on distinct names, cancelled: the listener goes back to what it had."""
    layer = make_layer(app, prefix=prefix, sweep_interval=0.05)

    async def scenario() -> None:
        await layer.send("names.kept", {"type": "x"})
        kept = asyncio.ensure_future(layer.receive("names.kept"))
        assert await asyncio.wait_for(kept, 10) == {"type": "x"}
        waiting = asyncio.ensure_future(layer.receive("names.still-waiting"))
        engine = engine_of(layer)
        listener = engine.listener
        # Its own control name, the flush name, and the name a receive still waits on.
        baseline = {
            engine._control,
            listen_identifier(f".{prefix}", "#flush"),
            listen_identifier(f".{prefix}", "names.still-waiting"),
        }
        await await_for(lambda: listener.listening == baseline, "the names.kept name dropped")
        receives = [asyncio.ensure_future(layer.receive(f"names.n{n}")) for n in range(300)]
        await await_for(lambda: len(listener.listening) == 303, "300 more names listened")
        for receive in receives:
            receive.cancel()
        for receive in receives:
            with contextlib.suppress(asyncio.CancelledError):
                await receive
        await await_for(lambda: listener.listening == baseline, "back to the baseline")
        # The receive still waiting keeps its name, and gets its message.
        await layer.send("names.still-waiting", {"type": "y"})
        assert await asyncio.wait_for(waiting, 10) == {"type": "y"}
        # A name listened again works again.
        again = asyncio.ensure_future(layer.receive("names.n7"))
        await await_for(lambda: len(listener.listening) >= len(baseline), "listening again")
        await layer.send("names.n7", {"type": "z"})
        assert await asyncio.wait_for(again, 10) == {"type": "z"}
        await layer.close()

    run(scenario())
