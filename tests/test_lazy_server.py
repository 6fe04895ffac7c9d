"""Tests that need no database start no PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from channels_engines.postgres.embedded import _TEMP_PREFIX

ROOT = Path(__file__).resolve().parents[1]


def test_a_module_without_database_tests_starts_no_server(tmp_path: Path) -> None:
    """With ``CHANNELS_ENGINES_TEST_DSN`` unset, running tests/test_options.py leaves no
    trace of an embedded server: it would have made its data directory under TMPDIR."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CHANNELS_ENGINES_TEST_DSN", "PYTEST_ADDOPTS")
    }
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_options.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(_TEMP_PREFIX)]
