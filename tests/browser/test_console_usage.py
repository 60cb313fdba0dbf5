"""The console's usage page in a real browser: the chart and tables render with no script or
console error (a CSP refusal of the inline SVG would show here)."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from tests.support.browser import OPERATOR_KEY, Service, screenshot

pytestmark = pytest.mark.browser


async def test_the_usage_page_draws_its_chart(page: Page, service: Service) -> None:
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}") if message.type == "error" else None
        ),
    )
    for prompt, size in (("a lighthouse at dusk", "3:2"), ("a red fox in snow", "1:1")):
        await service.create({"prompt": prompt, "size": size})

    await page.goto("/console/login")
    await page.fill("form#login input[name=key]", OPERATOR_KEY)
    async with page.expect_navigation():
        await page.click("form#login button[type=submit]")
    await page.click("a[data-nav=usage]")
    await page.wait_for_load_state()

    assert "/console/usage" in page.url
    await expect(page.locator("[data-testid=usage-chart] svg[role=img]")).to_be_visible()
    await expect(page.locator("[data-testid=usage-chart] svg[role=img] rect")).to_have_count(1)
    await expect(page.locator("[data-testid=usage-days] tbody tr")).to_have_count(1)
    await expect(page.locator("[data-testid=usage-budgets] tr[data-caller=alpha]")).to_be_visible()
    await screenshot(page, "usage")
    assert problems == []
