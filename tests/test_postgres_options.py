"""The PostgreSQL engine's CONFIG keys (:mod:`channels_engines.postgres.options`)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from channels_engines import EngineChannelLayer
from channels_engines.exceptions import InvalidConfigError
from tests.support.pgtools import (
    config,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_options_can_be_read_without_psycopg() -> None:
    """Documentation tools and settings checks read the keys where psycopg is missing."""
    code = (
        "import json, sys\n"
        "sys.modules['psycopg'] = None  # any import of psycopg now fails\n"
        "from channels_engines.postgres.options import OPTIONS\n"
        "print(json.dumps(sorted(OPTIONS)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    keys = json.loads(result.stdout)
    assert {"dsn", "credentials", "pool_max_size", "create_tables"} <= set(keys)


@pytest.mark.parametrize(
    ("key", "value"),
    [("table_prefix", "Bad-Prefix"), ("table_prefix", "p" * 41), ("schema", "x; DROP TABLE y")],
)
def test_invalid_table_prefix_or_schema_is_a_config_error(key: str, value: str) -> None:
    with pytest.raises(InvalidConfigError) as raised:
        EngineChannelLayer(**{**config("ce_t_invalid", prefix="ok_"), key: value})
    assert str(raised.value) == (
        f"EngineChannelLayer: CONFIG[{key!r}] must be a lower-case SQL identifier of at most "
        f"40 characters ([a-z_][a-z0-9_]*), not {value!r} (str)."
    )


@pytest.mark.parametrize(
    "key",
    [
        "pool_timeout",
        "heartbeat_interval",
        "heartbeat_timeout",
        "sweep_interval",
        "cleanup_interval",
    ],
)
@pytest.mark.parametrize("value", [0, math.nan, math.inf, 86400.5])
def test_intervals_and_timeouts_are_finite_positive_and_at_most_a_day(
    key: str, value: float
) -> None:
    with pytest.raises(InvalidConfigError) as raised:
        EngineChannelLayer(**{**config("ce_t_invalid", prefix="ok_"), key: value})
    assert str(raised.value) == (
        f"EngineChannelLayer: CONFIG[{key!r}] must be a number > 0 and <= 86400, not {value!r} "
        f"({type(value).__name__})."
    )
