"""The example third-party engine, installed with pip and found through its entry point.

``examples/thirdparty_engine`` is a package of its own. It is installed here into a
temporary directory, which is put on ``sys.path`` as if it were site-packages; nothing in
this module imports it directly, so each test proves that installing is enough.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from channels_engines import EngineChannelLayer, InvalidConfigError, available_engines
from channels_engines.engine_registry import engines
from channels_engines.testing import ChannelLayerConformance

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "thirdparty_engine"


@pytest.fixture(scope="module", autouse=True)
def lossy_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-install the example, make it importable, and forget it afterwards."""
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        timeout=300,
    )
    sys.path.append(str(target))
    importlib.invalidate_caches()
    engines.refresh_entry_points()
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("channels_engines_lossy", None)
    importlib.invalidate_caches()
    engines.refresh_entry_points()


async def buffered(layer: EngineChannelLayer, channel: str) -> list[dict[str, Any]]:
    """Every message waiting on ``channel``, in order, without waiting for more.

    In-process engines hand over a buffered message in the receiver's first step, so a
    receive() still pending after one loop iteration means the channel is empty.
    """
    found: list[dict[str, Any]] = []
    while True:
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)
        if not receiving.done():
            receiving.cancel()
            with suppress(asyncio.CancelledError):
                await receiving
            return found
        found.append(receiving.result())


def test_engine_name_resolves_through_the_entry_point(lossy_installed: Path) -> None:
    layer = EngineChannelLayer(ENGINE="lossy")
    engine_class = engines.load("lossy", where="test")
    assert engine_class.__module__ == "channels_engines_lossy"
    assert str(lossy_installed) in str(sys.modules["channels_engines_lossy"].__file__)
    assert layer.extensions == ["groups", "flush"]
    assert layer.config.options == {"drop_rate": 0.0, "seed": None}


def test_available_engines_lists_it_with_the_distribution_it_comes_from() -> None:
    info = {engine.name: engine for engine in available_engines()}["lossy"]
    assert info.origin == "entry point of channels-engines-lossy 0.1.0"
    assert info.target == "channels_engines_lossy.LossyEngine"
    assert info.version == "0.1.0"
    assert info.extensions == ("groups", "flush")
    assert info.description.startswith("In-process channels that drop")
    assert info.available


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1.5, "1.5 (float)"),
        (-0.1, "-0.1 (float)"),
        ("0.5", "'0.5' (str)"),
        (True, "True (bool)"),
        (float("nan"), "nan (float)"),
    ],
)
def test_bad_drop_rate_is_refused_like_any_config_value(value: object, shown: str) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE="lossy", drop_rate=value)
    assert str(caught.value) == (
        f"EngineChannelLayer: CONFIG['drop_rate'] must be a number from 0 to 1, not {shown}."
    )


def test_misspelled_key_lists_the_engines_keys() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        EngineChannelLayer(ENGINE="lossy", droprate=0.5)
    assert str(caught.value) == (
        "EngineChannelLayer: unknown CONFIG key 'droprate' for ENGINE 'lossy'. Did you mean "
        "'drop_rate'? Allowed keys: capacity, channel_capacity, drop_rate, encryption_keys, "
        "expiry, "
        "group_expiry, hooks, max_message_size, seed."
    )


def test_drop_rate_one_drops_every_message() -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="lossy", drop_rate=1.0)
        channel = await layer.new_channel()
        await layer.group_add("lossy-all", channel)
        for index in range(50):
            await layer.send(channel, {"type": "direct", "index": index})
            await layer.send("lossy.normal", {"type": "direct", "index": index})
            await layer.group_send("lossy-all", {"type": "group", "index": index})
        assert await buffered(layer, channel) == []
        assert await buffered(layer, "lossy.normal") == []

    asyncio.run(scenario())


def test_dropped_messages_do_not_use_capacity() -> None:
    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="lossy", drop_rate=1.0, capacity=1)
        for _ in range(5):
            await layer.send("lossy.full", {"type": "lost"})

    asyncio.run(scenario())


def test_same_seed_drops_the_same_messages() -> None:
    async def survivors(seed: int) -> list[int]:
        layer = EngineChannelLayer(ENGINE="lossy", drop_rate=0.5, seed=seed, capacity=1000)
        for index in range(200):
            await layer.send("lossy.seeded", {"type": "n", "index": index})
        return [message["index"] for message in await buffered(layer, "lossy.seeded")]

    first, again, other = (asyncio.run(survivors(seed)) for seed in (7, 7, 8))
    assert first == again
    assert first != other
    assert first == sorted(first)
    assert 50 < len(first) < 150


class TestLossyConformance(ChannelLayerConformance):
    """With nothing dropped, the engine is a complete channel layer."""

    config = {"ENGINE": "lossy", "drop_rate": 0.0}
