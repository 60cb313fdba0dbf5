"""Browser tests: Debian's Chromium (through Playwright, never a downloaded browser) against a
real `imagegen-gateway serve` running the simulator provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.notify.receiver import Receiver, receiving
from tests.support.browser import (
    SCREENSHOTS,
    TAKEN,
    Service,
    launch_chromium,
    running_service,
)
from tests.support.databases import copy_sqlite


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless system Chromium for the run; var/screenshots/ holds this run's pages only."""
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    async with async_playwright() as playwright:
        chromium = await launch_chromium(playwright)
        yield chromium
        await chromium.close()


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    """A caller's notification endpoint; answers 500 until told otherwise."""
    async with receiving(default=500) as running:
        yield running


@pytest.fixture(scope="module")
async def service(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> AsyncIterator[Service]:
    """The service on a fresh SQLite file and a local image directory, shared by a module.

    Notifications are tried twice, 0.2 s apart, then given up (a retryable step)."""
    directory = tmp_path_factory.mktemp("browser-service")
    async with running_service(
        directory,
        copy_sqlite(sqlite_template, directory),
        notify_retry_schedule="0.2",
        notify_timeout_seconds=2,
    ) as running:
        yield running


@pytest.fixture
async def page(browser: Browser, service: Service) -> AsyncIterator[Page]:
    """A fresh browser context (no cookies) on the service."""
    context = await browser.new_context(
        base_url=service.url, viewport={"width": 1280, "height": 800}
    )
    context.set_default_timeout(15_000)
    opened = await context.new_page()
    yield opened
    await context.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TAKEN:
        terminalreporter.section("browser screenshots")
        for path in TAKEN:
            terminalreporter.write_line(str(path))
