"""The PostgreSQL engine's CONFIG keys (:mod:`channels_engines.postgres.options`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
