"""A real browser: the chat page open twice, on two daphne processes, typing in one and
reading in the other. Screenshots go to ``test-artifacts/e2e/``.

Headless Chromium is the system's (Debian's ``chromium``), driven by Playwright; no browser
is downloaded. ``CHANNELS_ENGINES_CHROMIUM`` names the executable (CI sets it, and then a
missing browser fails the test); otherwise the test looks for one on ``PATH`` and is
skipped, saying so, if there is none.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from .harness import ChatServer, send_chat_command, unique_room

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--no-sandbox",  # needed as root (CI containers)
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


def chromium_executable() -> str:
    configured = os.environ.get("CHANNELS_ENGINES_CHROMIUM", "").strip()
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            pytest.fail(f"CHANNELS_ENGINES_CHROMIUM={configured!r} is not an executable file")
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium on PATH: install it (Debian: apt install chromium) "
        "or set CHANNELS_ENGINES_CHROMIUM"
    )


def test_browser_pages_on_two_processes_chat(
    daphne_pair: tuple[ChatServer, ChatServer], chat_database: str, artifacts: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    a, b = daphne_pair
    room = unique_room("browser")
    pages: dict[str, Any] = {}
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 900, "height": 640},
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            for label, server in (("a", a), ("b", b)):
                page = pages[label] = context.new_page()
                page.goto(server.url(f"/rooms/{room}/"))
                page.locator("#status.connected").wait_for()
                assert server.worker in page.inner_text("#status")
            page_a, page_b = pages["a"], pages["b"]

            page_a.fill("#name", "Ada")
            page_a.fill("#message", "Hello from the page on worker a")
            page_a.press("#message", "Enter")
            line = page_b.locator("#log li", has_text="Hello from the page on worker a")
            line.wait_for()
            assert "Ada" in line.inner_text()
            assert a.worker in line.inner_text()  # it came from the other process

            page_b.fill("#name", "Grace")
            page_b.fill("#message", "Hello back from worker b")
            page_b.click("#send")
            page_a.locator("#log li", has_text="Hello back from worker b").wait_for()

            page_b.fill("#announce-text", "Announced through a Django view")
            page_b.click("#announce")
            page_a.locator("#log li", has_text="Announced through a Django view").wait_for()

            # manage.py send_chat runs in no server: the page names no worker for it.
            send_chat_command(chat_database, room, "Sent with manage.py")
            line = page_a.locator("#log li", has_text="Sent with manage.py")
            line.wait_for()
            assert line.locator(".who").inner_text() == "ops: "
            assert line.locator(".meta").inner_text() == "via command"
        finally:
            for label, page in pages.items():
                page.screenshot(path=str(artifacts / f"chat-browser-worker-{label}.png"))
            context.close()
