"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright.

Playwright never downloads a browser here: it launches the system binary
(``.ci/browser-deps.sh`` installs it). Without it the tests skip and say why.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ROOT, LiveServer

CHROMIUM = os.environ.get("TUFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = ROOT / "docs" / "screenshots"


# NOTE: module scope, not session: while Playwright's sync API is open it keeps an asyncio loop
# running in this process's main thread, and every later test of the same pytest process that
# calls asyncio.run() or sets up pytest-django's database fails ("cannot be called from a running
# event loop", SynchronousOnlyOperation). Under pytest-xdist any module may follow this one.
@pytest.fixture(scope="module")
def browser() -> Iterator["object"]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install it with .ci/browser-deps.sh (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -r requirements-dev.txt")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Staff:
    username: str
    password: str


@pytest.fixture(scope="session")
def staff(server: LiveServer) -> Staff:
    """A superuser on the shared live server."""
    user = Staff(username=f"ops-{secrets.token_hex(3)}", password=secrets.token_urlsafe(12))
    server.manage("shell", "-c", "from django.contrib.auth import get_user_model; get_user_model().objects"
                                 f".create_superuser({user.username!r}, '{user.username}@example.org', {user.password!r})")
    return user


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the test saves its screenshots: docs/screenshots only when asked
    (TUFT_UPDATE_SCREENSHOTS=1), so an ordinary run leaves the checkout clean."""
    if os.environ.get("TUFT_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")

