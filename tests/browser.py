"""A real browser for the console's tests: Debian's Chromium, driven by Playwright (sync API).

Loaded as a pytest plugin by tests/conftest.py, so a test asks for `browser` (one Chromium for
the whole session: it takes a second or two to start) or `page` (a fresh context and tab per
test: no cookie, session or storage leaks from one test into the next).

Why Debian's /usr/bin/chromium and never `playwright install`: the machine's network is closed
and CI installs Chromium with apt (.ci/setup); Playwright's own download would be a second,
unpinned browser. The flags keep Chromium from reaching for the network on its own (updates,
sync, QUIC probes, first-run pages), which would otherwise stall or log on a closed machine.

Everything waits with a timeout: a page that never loads fails its test, it does not hang it.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCH_TIMEOUT_MS = 30_000
ACTION_TIMEOUT_MS = 10_000  # a click, a fill, a wait for an element
NAVIGATION_TIMEOUT_MS = 15_000  # a page load (the first render of a big page included)


def _missing(reason: str) -> None:
    """Skip where the browser is not installed, but not in CI (.ci/setup installs it there):
    a missing browser must fail there instead of passing by skipping."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed (pip install -e '.[test]')")
        raise  # unreachable: _missing skips or fails
    if not CHROMIUM.exists():
        _missing(f"Chromium is not installed (no {CHROMIUM}; run .ci/setup)")
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=LAUNCH_TIMEOUT_MS,
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A tab in a fresh browser context (its own cookies), closed after the test."""
    context = browser.new_context(java_script_enabled=True)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Page, base_url: str, name: str, password: str, *, then: str = "/console") -> None:
    """Sign in through the console's own form, as a person would, landing on `then`."""
    page.goto(f"{base_url}/signin?" + urllib.parse.urlencode({"next": then}))
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit], input[type=submit]")
