"""The provider's balance on the console overview in a real browser: the reading the workers
stored, the warning once it falls below the threshold, and a failed reading, each appearing
without a reload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.support.browser import OPERATOR_KEY, Service, running_service, screenshot
from tests.support.databases import copy_sqlite

pytestmark = pytest.mark.browser

WAIT_MS = 20_000  # a reading every second, the overview refreshed every 5 s


@pytest.fixture(scope="module")
async def service(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> AsyncIterator[Service]:
    """The service reading the built-in simulator's balance every second, warning below 100."""
    directory = tmp_path_factory.mktemp("browser-balance")
    async with running_service(
        directory,
        copy_sqlite(sqlite_template, directory),
        provider_credits_poll_seconds=1,
        provider_credits_warn_below=100,
    ) as running:
        yield running


async def test_the_overview_follows_the_providers_balance(page: Page, service: Service) -> None:
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    await page.goto("/console/login")
    await page.fill("form#login input[name=key]", OPERATOR_KEY)
    async with page.expect_navigation():
        await page.click("form#login button[type=submit]")
    assert page.url == f"{service.url}/console"
    balance = page.locator("[data-testid=provider-balance]")
    await expect(balance.locator(".user-remaining")).to_have_text(
        "100,000 credits", timeout=WAIT_MS
    )
    await expect(balance.locator(".threshold")).to_have_text("100 credits")
    await expect(page.locator("[data-testid=balance-warning]")).to_have_count(0)
    await page.evaluate("window.openedOnce = true")  # gone if the page were loaded again

    response = await service.api.put(
        "/_simulator/_sim/credits", json={"remaining_credits": 12.5, "used_credits": 99987.5}
    )
    assert response.status_code == 200, response.text
    warning = page.locator("[data-testid=balance-warning]")
    await expect(warning).to_contain_text(
        "Provider balance low: 12.5 credits left, below the threshold of 100", timeout=WAIT_MS
    )
    await expect(warning).to_be_visible()
    await expect(balance.locator(".user-remaining")).to_have_text("12.5 credits")
    assert await page.evaluate("window.openedOnce === true")
    await screenshot(page, "overview-balance-low")

    await service.set_faults(down=True)
    failed = page.locator("[data-testid=balance-error]")
    await expect(failed).to_contain_text("Could not read: HTTP 503", timeout=WAIT_MS)
    await expect(failed).to_contain_text("Below: the last good reading.")
    await expect(balance.locator(".user-remaining")).to_have_text("12.5 credits")
    await screenshot(page, "overview-balance-unreadable")
    await service.set_faults(down=False)
    assert problems == []
