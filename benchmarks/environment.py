"""The report header: command, date, machine, server and package versions."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import psutil

_REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "channels-engines",
    "Django",
    "channels",
    "channels-postgres",
    "channels-redis",
    "redis",
    "hiredis",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "msgpack",
    "asgiref",
    "psutil",
)


def command_line() -> str:
    """The exact command, as it was typed (interpreter shown as `python`)."""
    return "python " + shlex.join(sys.argv)


def load_average() -> float:
    """1-minute load average: other work on the machine skews every number."""
    return os.getloadavg()[0]


def header(servers: dict[str, str], mode: str, repeat: int, load_at_start: float) -> dict[str, str]:
    """Ordered facts for the top of the report."""
    return {
        "Command": f"`{command_line()}`",
        "Date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "Machine": f"{os.cpu_count()} cores ({cpu_model()}), "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM, {platform.platform()}",
        "Load average (1 min)": f"{load_at_start:.2f} at start, {load_average():.2f} at end "
        f"(on {os.cpu_count()} cores)",
        "Servers": f"PostgreSQL {servers['postgresql']}, Redis {servers['redis']} (both local, "
        "loopback TCP)",
        "Python": platform.python_version(),
        "Packages": ", ".join(f"{name} {version}" for name, version in package_versions().items()),
        "Method": f"{mode} sizes, {repeat} repetition(s) interleaved (repetition → scenario → "
        "subject), every scenario cross-process (spawned workers), warm-up before "
        "measuring, clean state before each cell",
    }


def package_versions() -> dict[str, str]:
    """Installed versions; absent packages are listed as such (e.g. hiredis)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    if versions["channels-engines"] == "not installed":
        versions["channels-engines"] = _source_tree_version()
    return versions


def _source_tree_version() -> str:
    """channels_engines run from this checkout: its __version__ and git state."""
    init = _REPO / "channels_engines" / "__init__.py"
    if not init.is_file():
        return "not found"
    found = re.search(r'__version__ = "([^"]+)"', init.read_text(encoding="utf-8"))
    version = found.group(1) if found else "?"
    git = ["git", "-C", str(_REPO)]
    head = (
        subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "no commit"
    )
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "channels_engines"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{version} (source tree, git {head}{', uncommitted changes' if dirty else ''})"


def cpu_model() -> str:
    """The CPU model name, for the report header."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
