"""The harness itself: the service comes up and the system Chromium reaches it."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import Page

from tests.support.browser import Service

pytestmark = pytest.mark.browser


async def test_chromium_loads_the_running_service(page: Page, service: Service) -> None:
    response = await page.goto("/healthz")
    assert response is not None
    assert response.status == 200
    assert json.loads(await page.inner_text("body"))["status"] == "ok"
    browser = page.context.browser
    assert browser is not None
    assert "HeadlessChrome" in await page.evaluate("navigator.userAgent")
