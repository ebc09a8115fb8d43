"""Fixtures for the monitor's browser tests: Debian's Chromium driven by Playwright, the relay under gunicorn.

A module shares one browser, one fake upstream and one relay; each test opens
the monitor in a fresh browser context (own localStorage) and, when it ends,
fails if the page logged a console error or threw that the test did not
declare as expected. A failing test leaves a screenshot of every page it
opened under artifacts/failures/ and gets the relay logs attached.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Error, Page, expect, sync_playwright

# `support` lives next to this package; make it importable whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integration import conftest as integration  # noqa: E402
from support.relay import ALL_RELAYS, Relay  # noqa: E402

# the integration suite's relay and upstream fixtures; launch_relay takes a fake upstream or a
# URL ("" for the demo feed)
upstream = integration.upstream
relay = integration.relay
fresh_upstream = integration.fresh_upstream
launch_relay = integration.launch_relay

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}

LOG_OFFSETS = pytest.StashKey[dict[int, int]]()
CALL_REPORT = pytest.StashKey[pytest.TestReport]()


# -- reporting --------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[LOG_OFFSETS] = {id(relay): relay.log_size() for relay in ALL_RELAYS}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    if not report.failed:
        return
    offsets = item.stash.get(LOG_OFFSETS, {})
    for relay in ALL_RELAYS:
        start = offsets.get(id(relay), 0)
        if relay.log_size() > start:
            text = relay.log_text(start)
            if len(text) > 30000:
                text = "[... earlier lines cut ...]\n" + text[-30000:]
            report.sections.append((f"gunicorn log of {relay!r} ({call.when})", text))


# -- the browser --------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the whole run (Debian's, never a downloaded one)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (gitignored; CI keeps the folder)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@dataclass
class ConsoleWatch:
    """Console errors and uncaught exceptions of one page; expected ones are declared with allow()."""

    name: str
    problems: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "assert"):
            self.problems.append(f"console.{message.type}: {message.text}")

    def on_page_error(self, error: Error) -> None:
        self.problems.append(f"uncaught: {error}")

    def allow(self, *patterns: str) -> None:
        """Console errors matching any of `patterns` are expected in this test (a refused request, say)."""
        self.allowed.extend(re.compile(p) for p in patterns)

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(rx.search(p) for rx in self.allowed)]


@dataclass
class Monitor:
    """The monitor page of one relay, opened in its own browser context."""

    page: Page
    context: BrowserContext
    relay: Relay
    console: ConsoleWatch

    def wait_live(self, timeout_ms: int = 10_000) -> None:
        expect(self.page.locator("#stream-state")).to_have_text("Live", timeout=timeout_ms)

    def row(self, seq: int):
        return self.page.locator(f'#feed-list li.ev[data-seq="{seq}"]')

    def rows(self):
        return self.page.locator("#feed-list li.ev")


@pytest.fixture
def open_monitor(browser: Browser, request: pytest.FixtureRequest, artifacts: Path) -> Iterator[Callable[..., Monitor]]:
    """open_monitor(relay, viewport=DESKTOP, color_scheme="dark", wait_live=True) -> Monitor.

    Every page is checked for console errors when the test ends.
    """
    opened: list[Monitor] = []

    def open_page(relay: Relay, *, viewport: dict[str, int] = DESKTOP, color_scheme: str = "dark",
                  wait_live: bool = True, path: str = "/monitor", **context_args: Any) -> Monitor:
        context = browser.new_context(viewport=viewport, color_scheme=color_scheme, **context_args)
        context.set_default_timeout(10_000)
        page = context.new_page()
        console = ConsoleWatch(f"{request.node.name}-{len(opened)}")
        page.on("console", console.on_console)
        page.on("pageerror", console.on_page_error)
        monitor = Monitor(page, context, relay, console)
        opened.append(monitor)
        page.goto(relay.url + path)
        if wait_live:
            monitor.wait_live()
        return monitor

    yield open_page

    report = request.node.stash.get(CALL_REPORT, None)
    failed = report is not None and report.failed
    problems: list[str] = []
    for monitor in opened:
        if failed:
            shots = artifacts / "failures"
            shots.mkdir(exist_ok=True)
            try:
                monitor.page.screenshot(path=str(shots / f"{monitor.console.name}.png"), full_page=True)
            except Error:
                pass  # the page is gone: the failure says why
        problems += [f"[{monitor.console.name}] {p}" for p in monitor.console.unexpected()]
        monitor.context.close()
    if problems and not failed:
        pytest.fail("the monitor logged console errors:\n" + "\n".join(problems))
