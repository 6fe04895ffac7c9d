"""The quick start, followed word for word: a new Django project built with the commands
and code of docs/quickstart.md, run under one daphne and one uvicorn process, and the
page's two WebSocket clients exchanging the page's message through the PostgreSQL layer.

The steps are read from the page itself (its console lines and the Python blocks that
name their file, in order, up to "## The examples"), so the page and this test cannot
drift apart: a step the test does not know how to follow fails it. Where the test departs
from the letter of the page, it says so:

- it runs in the test environment instead of creating ``.venv`` and activating it, and
  checks that every requirement of the page's ``pip install`` (with its extras) is
  installed there, instead of downloading them;
- after the page's settings it points ``DATABASES["default"]`` at a new database of the
  test server, in place of the page's placeholders;
- the servers listen on free ports instead of the page's 8001 and 8002, and the clients'
  URLs are changed to match.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from packaging.requirements import Requirement
from psycopg.conninfo import conninfo_to_dict

from .harness import MESSAGE_TIMEOUT, ROOT, RUN, ServerProcess, fresh_database, run

pytestmark = pytest.mark.e2e

QUICKSTART = ROOT / "docs" / "quickstart.md"
#: The page's steps end where its examples begin.
LAST_SECTION = "## The examples"
#: Commands that make and enter the virtual environment the test environment stands for.
ENVIRONMENT_COMMANDS = ("python3 -m venv .venv", ". .venv/bin/activate")
#: What the page says to type into one client, and what both then print.
EXCHANGE = re.compile(
    r"Type `(?P<sent>[^`]+)` and Enter in one of them: both print `(?P<printed>[^`]+)`"
)
FILE_COMMENT = re.compile(r"# (?P<path>[\w/]+\.py)(?P<append>: add at the end)?")
TERMINAL_ESCAPES = re.compile(r"\x1b(\[[0-9;]*[A-Za-z]|[78])|\r")


@dataclass
class Page:
    """What docs/quickstart.md tells a reader to do, in order."""

    steps: list[tuple[str, str]] = field(default_factory=list)  # ("$", line) or ("file", code)
    sent: str = ""
    printed: str = ""


def read_page() -> Page:
    text = QUICKSTART.read_text()
    assert LAST_SECTION in text, f"{QUICKSTART.name} has no {LAST_SECTION!r} section"
    text = text.split(LAST_SECTION, 1)[0]
    page = Page()
    for language, code in re.findall(r"^```(\w*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        if language == "console":
            page.steps += [("$", line[2:]) for line in code.splitlines() if line.startswith("$ ")]
        elif language == "python" and FILE_COMMENT.fullmatch(code.split("\n", 1)[0]):
            page.steps.append(("file", code))
    exchange = EXCHANGE.search(" ".join(text.split()))
    assert exchange, f"{QUICKSTART.name} no longer says what to type into the clients"
    page.sent, page.printed = exchange["sent"], exchange["printed"]
    return page


class PageServer(ServerProcess):
    """``daphne ...`` or ``uvicorn ...`` exactly as the page writes it, but on a free port."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        super().__init__(f"quickstart-{argv[0]}-{RUN}")
        self.argv, self.cwd, self.env = argv, cwd, env
        self.port_index = next(i + 1 for i, arg in enumerate(argv) if arg in ("-p", "--port"))
        self.page_port = int(argv[self.port_index])

    def command(self) -> list[str]:
        argv = list(self.argv)
        argv[self.port_index] = str(self.port)
        return argv

    def environment(self) -> dict[str, str]:
        return self.env


def reader_environment() -> dict[str, str]:
    """A shell of someone following the page: the environment's commands first on PATH,
    and nothing of the test's own Django set-up."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def check_installed(args: list[str]) -> None:
    """Each requirement of a ``pip install`` line, and those of its extras, is installed."""
    for arg in args:
        requirement = Requirement(arg)
        _check_requirement(requirement, arg)
        requires = importlib.metadata.requires(requirement.name) or []
        for extra in requirement.extras:
            for dependency in map(Requirement, requires):
                marker = dependency.marker
                # Brought by this extra: its marker holds with the extra, not without.
                if (
                    marker is not None
                    and marker.evaluate({"extra": extra})
                    and not marker.evaluate({"extra": ""})
                ):
                    _check_requirement(dependency, f"{arg} (extra {extra!r})")


def _check_requirement(requirement: Requirement, wanted_by: str) -> None:
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"the quick start installs {wanted_by}, but {requirement.name} is missing")
    assert requirement.specifier.contains(version, prereleases=True), (
        f"the quick start installs {wanted_by}: {requirement} is not met by {version}"
    )


def database_entry(url: str) -> dict[str, object]:
    """A DATABASES entry for the test database."""
    params = conninfo_to_dict(url)
    entry: dict[str, object] = {
        key: str(params.pop(param, ""))
        for key, param in (
            ("NAME", "dbname"),
            ("USER", "user"),
            ("PASSWORD", "password"),
            ("HOST", "host"),
            ("PORT", "port"),
        )
    }
    entry["OPTIONS"] = {key: str(value) for key, value in params.items()}
    return entry


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database("quickstart") as url:
        yield url


def test_quickstart_word_for_word(tmp_path: Path, database: str) -> None:
    page = read_page()
    env = reader_environment()
    cwd = tmp_path
    servers: list[PageServer] = []
    client_urls: list[str] = []
    try:
        for kind, content in page.steps:
            if kind == "file":
                _write(cwd, content, database)
                continue
            argv = shlex.split(content, comments=True)
            if content in ENVIRONMENT_COMMANDS:
                continue
            if argv[:2] == ["pip", "install"]:
                check_installed(argv[2:])
            elif argv[0] == "cd":
                cwd = cwd / argv[1]
            elif argv[0] in ("daphne", "uvicorn"):
                servers.append(PageServer(argv, cwd, env).spawn())
            elif argv[:3] == ["python", "-m", "websockets"]:
                client_urls.append(argv[3])
            elif argv[0] in ("django-admin", "python"):
                _run(argv, cwd, env)
            else:
                pytest.fail(f"the test does not know how to follow `$ {content}`")
        assert [server.argv[0] for server in servers] == ["daphne", "uvicorn"]
        for server in servers:
            server.ready()
        ports = {server.page_port: server.port for server in servers}
        urls = [_on_port(url, ports) for url in client_urls]
        assert len(urls) == 2, client_urls
        run(_exchange(urls, cwd, env, page, database), timeout=90)
    finally:
        for server in servers:
            server.close()


async def _exchange(
    urls: list[str], cwd: Path, env: dict[str, str], page: Page, database: str
) -> None:
    """Two ``python -m websockets`` clients, one per server: what one is typed, both print."""
    clients: list[asyncio.subprocess.Process] = []
    try:
        for ws_url in urls:
            client = await asyncio.create_subprocess_exec(
                "python", "-m", "websockets", ws_url, cwd=cwd, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            clients.append(client)
        for client, ws_url in zip(clients, urls, strict=True):
            await _printed(client, f"Connected to {ws_url}.", ws_url)
        # Both consumers are in the group now (group_add precedes accept), in PostgreSQL.
        with psycopg.connect(database, autocommit=True) as conn:
            members = conn.execute(
                "SELECT count(*) FROM channels_engines_group_member WHERE group_name = %s",
                ("room-lobby",),
            ).fetchone()
        assert members == (2,)
        for sender in clients:  # through daphne, then through uvicorn
            assert sender.stdin is not None
            sender.stdin.write(page.sent.encode() + b"\n")
            await sender.stdin.drain()
            for client, ws_url in zip(clients, urls, strict=True):
                await _printed(client, page.printed, ws_url)
        for client in clients:
            assert client.stdin is not None
            client.stdin.close()  # Ctrl-D: leave the room
        for client, ws_url in zip(clients, urls, strict=True):
            code = await asyncio.wait_for(client.wait(), MESSAGE_TIMEOUT)
            assert code == 0, f"the client of {ws_url} exited with {code}"
    finally:
        for client in clients:
            if client.returncode is None:
                client.kill()
                await client.wait()


async def _printed(client: asyncio.subprocess.Process, text: str, what: str) -> None:
    """Read the client's output until a line holds ``text``, for MESSAGE_TIMEOUT seconds."""
    assert client.stdout is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MESSAGE_TIMEOUT
    seen: list[str] = []
    while True:
        remaining = deadline - loop.time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            raw = await asyncio.wait_for(client.stdout.readline(), remaining)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"the client of {what} did not print {text!r} within {MESSAGE_TIMEOUT:g} s; "
                f"it printed {seen}"
            ) from None
        if not raw:
            raise AssertionError(f"the client of {what} exited before printing {text!r}: {seen}")
        line = TERMINAL_ESCAPES.sub("", raw.decode()).strip()
        if line.strip("> "):
            seen.append(line)
        if text in line:
            return


def _write(cwd: Path, code: str, database: str) -> None:
    """Put a block where its first line says: a new file, or added at the end of one."""
    match = FILE_COMMENT.fullmatch(code.split("\n", 1)[0])
    assert match is not None
    path = cwd / match["path"]
    if not match["append"]:
        path.write_text(code)
        return
    assert path.is_file(), f"{match['path']} does not exist to add to"
    with path.open("a") as file:
        file.write("\n" + code)
        if path.name == "settings.py" and "DATABASES" in code:
            file.write(
                "\n# The test server, in place of the quick start's placeholders.\n"
                f'DATABASES["default"].update({database_entry(database)!r})\n'
            )


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, (
        f"`{shlex.join(argv)}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


def _on_port(url: str, ports: dict[int, int]) -> str:
    """The page's URL on the port its server really listens on."""
    parts = urllib.parse.urlsplit(url)
    assert parts.port in ports, f"{url} names no port of the page's servers {sorted(ports)}"
    return parts._replace(netloc=f"{parts.hostname}:{ports[parts.port]}").geturl()
