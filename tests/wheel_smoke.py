"""Smoke test of the built distributions, run by ``nox -s wheel`` against the installed wheel.

The session copies this file out of the checkout and runs it from a temporary directory,
so ``import channels_engines`` can only find the installed package. It checks what the
archives contain, then does a memory and a PostgreSQL round trip through Channels'
``get_channel_layer()`` and runs ``python -m channels_engines.postgres schema``. The
PostgreSQL server is ``CHANNELS_ENGINES_TEST_DSN``, or a private one when that is unset.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import secrets
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path
from typing import Any


def check_archives(sdist: Path, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for required in (
        "channels_engines/__init__.py",
        "channels_engines/py.typed",
        "channels_engines/migrations/0001_initial.py",
        "channels_engines/postgres/__main__.py",
    ):
        assert required in names, f"{wheel.name} lacks {required}"
    assert not any(name.startswith(("tests/", "examples/", "tools/")) for name in names), (
        f"{wheel.name} ships tests, examples or tools"
    )
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for required in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "noxfile.py",
        "examples/chat/demo.py",
        "tools/checkout_venv.py",
    ):
        assert required in members, f"{sdist.name} lacks {required}"


def check_installed(checkout: Path) -> Path:
    import channels_engines

    location = Path(channels_engines.__file__).resolve().parent
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert location == site_packages / "channels_engines", f"not the installed wheel: {location}"
    assert location != checkout / "channels_engines", "imported the checkout"
    direct_url = importlib.metadata.distribution("channels-engines").read_text("direct_url.json")
    assert direct_url is None or '"editable": true' not in direct_url, "an editable install"
    names = {info.name for info in channels_engines.available_engines() if info.available}
    assert {"memory", "postgres"} <= names, names
    return location


async def round_trip(layer: Any) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "smoke.direct", "n": 1})
    assert (await layer.receive(channel))["n"] == 1
    await layer.group_add("smoke", channel)
    await layer.group_send("smoke", {"type": "smoke.group", "n": 2})
    assert (await layer.receive(channel))["n"] == 2
    await layer.group_discard("smoke", channel)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdist", type=Path, required=True)
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--checkout", type=Path, required=True)
    args = parser.parse_args()

    check_archives(args.sdist, args.wheel)
    location = check_installed(args.checkout.resolve())

    server = None
    dsn = os.environ.get("CHANNELS_ENGINES_TEST_DSN", "").strip()
    if not dsn or dsn == "embedded":
        from channels_engines.embedded import EmbeddedPostgres

        server = EmbeddedPostgres().start()
        dsn = server.dsn()
    prefix = f"smoke_{secrets.token_hex(4)}_"
    try:
        import django
        from django.conf import settings

        settings.configure(
            # The postgres engine encrypts with keys derived from it.
            SECRET_KEY="wheel-smoke-" + secrets.token_hex(16),
            INSTALLED_APPS=["channels", "channels_engines"],
            CHANNEL_LAYERS={
                "default": {"ENGINE": "memory"},
                "postgres": {"ENGINE": "postgres", "CONFIG": {"dsn": dsn, "table_prefix": prefix}},
            },
        )
        django.setup()
        from channels.layers import get_channel_layer

        for alias in ("default", "postgres"):
            asyncio.run(round_trip(get_channel_layer(alias)))

        schema = subprocess.run(
            [sys.executable, "-m", "channels_engines.postgres", "schema"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert "CREATE UNLOGGED TABLE" in schema, schema
    finally:
        _drop_tables(dsn, prefix)
        if server is not None:
            server.stop()
    print(f"wheel smoke test passed: {args.wheel.name} installed at {location}")
    return 0


def _drop_tables(dsn: str, prefix: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("group_member", "message"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(prefix + table)))


if __name__ == "__main__":
    sys.exit(main())
