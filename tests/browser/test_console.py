"""The operator console in a real browser: Debian's Chromium, headless, against `serve` with the
simulator. Each page is saved as a screenshot in var/screenshots/."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect

from tests.notify.receiver import Receiver
from tests.support.browser import ALPHA_KEY, OPERATOR_KEY, Service, screenshot
from tests.support.waiting import eventually

pytestmark = pytest.mark.browser

WAIT_MS = 30_000  # a task takes about 3 s upstream in the simulator, plus the archive copy


async def wait_for_task(
    service: Service, task_id: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The task (REST API) once `predicate` holds for it."""
    return await eventually(
        lambda: service.task(task_id),
        predicate,
        WAIT_MS / 1000,
        what=f"task {task_id}",
        interval=0.1,
    )


def status_count(page: Page, status: str) -> Locator:
    return page.locator(f"[data-testid=status-counts] [data-status={status}] .count")


def rows(page: Page) -> Locator:
    return page.locator("table#tasks tr[data-task-id]")


async def submit_filters(page: Page) -> None:
    """Submit the filter form the way its own button or script would."""
    async with page.expect_navigation():
        await page.locator("form#filters").evaluate("form => form.requestSubmit()")


async def log_in(page: Page, key: str) -> int:
    """Fill the login form and send it; the status of the answer."""
    await page.goto("/console/login")
    await page.fill("form#login input[name=key]", key)
    async with page.expect_response(
        lambda r: r.request.method == "POST" and "/console/login" in r.url
    ) as answer:
        await page.click("form#login button[type=submit]")
    await page.wait_for_load_state()
    return (await answer.value).status


async def test_a_caller_key_cannot_log_in(page: Page, service: Service) -> None:
    assert await log_in(page, ALPHA_KEY) == 401
    assert page.url.endswith("/console/login")
    await screenshot(page, "login-refused")
    await expect(page.locator("#login-error")).to_contain_text("not an operator key")
    await page.goto("/console")
    assert page.url.startswith(f"{service.url}/console/login?")  # still not signed in


async def test_operator_console_flow(page: Page, service: Service, receiver: Receiver) -> None:
    problems: list[str] = []  # script errors and console errors (a CSP refusal shows here)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}") if message.type == "error" else None
        ),
    )

    # Log in.
    await page.goto("/console/login")
    await expect(page.locator("form#login input[name=key]")).to_have_attribute("type", "password")
    await screenshot(page, "login")
    assert await log_in(page, OPERATOR_KEY) == 303  # to /console
    assert page.url == f"{service.url}/console"
    await expect(status_count(page, "succeeded")).to_have_text("0")
    await page.evaluate("window.openedOnce = true")  # gone if the page were loaded again

    # Tasks arrive while the overview is open: its counts follow without a reload.
    await service.set_faults(fail_rate=1.0)
    failed = await service.create({"prompt": "a paper boat in a storm, ink", "size": "1:1"})
    await wait_for_task(service, failed["id"], lambda t: t["provider_task_id"] is not None)
    await service.set_faults(fail_rate=0.0)
    notified = await service.create(
        {
            "prompt": "a lighthouse at dusk, watercolor",
            "size": "3:2",
            "quality": "medium",
            "notify_url": receiver.url,  # answers 500: the notification is given up
        }
    )
    plain = await service.create({"prompt": "a red fox in fresh snow, woodcut", "size": "2:3"})
    await expect(status_count(page, "succeeded")).to_have_text("2", timeout=WAIT_MS)
    await expect(status_count(page, "failed")).to_have_text("1", timeout=WAIT_MS)
    assert await page.evaluate("window.openedOnce === true")  # refreshed by its script
    task = await wait_for_task(
        service, notified["id"], lambda t: (t["notification"] or {}).get("status") == "failed"
    )
    await page.reload()
    await screenshot(page, "overview")

    # The list: every task, thumbnails of the archived images.
    await page.click("a[data-nav=tasks]")
    await expect(rows(page)).to_have_count(3)
    for created in (failed, notified, plain):
        await expect(page.locator(f"tr[data-task-id='{created['id']}']")).to_have_count(1)
    thumbnails = page.locator("img.thumb")
    await expect(thumbnails).to_have_count(2)  # the failed task has no image
    await page.wait_for_function(
        "() => Array.from(document.querySelectorAll('img.thumb'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    await screenshot(page, "tasks")

    # A task made while the list is open appears in it without a reload.
    await page.evaluate("window.listOpened = true")  # gone if the page were loaded again
    later = await service.create({"prompt": "a heron in reeds, linocut", "size": "1:1"})
    await expect(page.locator(f"tr[data-task-id='{later['id']}']")).to_have_count(
        1, timeout=WAIT_MS
    )
    await expect(rows(page)).to_have_count(4)
    assert await page.evaluate("window.listOpened === true")  # refreshed by its script
    await expect(page.locator("#refresh-state")).to_have_text("")

    # Filter by status, then search by id.
    await page.select_option("form#filters select[name=status]", "failed")
    await submit_filters(page)
    await expect(rows(page)).to_have_count(1)
    await expect(page.locator(f"tr[data-task-id='{failed['id']}'] td.status")).to_contain_text(
        "failed"
    )
    await screenshot(page, "tasks-filtered")
    await page.select_option("form#filters select[name=status]", "")
    await page.fill("form#filters input[name=q]", notified["id"])
    await submit_filters(page)
    await expect(rows(page)).to_have_count(1)
    await screenshot(page, "tasks-search")

    # The detail page, and its image as the browser rendered it.
    async with page.expect_navigation():
        await page.click(f"tr[data-task-id='{notified['id']}'] a.task-link")
    assert page.url == f"{service.url}/console/tasks/{notified['id']}"
    await expect(page.locator("[data-testid=task-status]")).to_contain_text("succeeded")
    await expect(page.locator("dl#request")).to_contain_text("a lighthouse at dusk, watercolor")
    await expect(page.locator("[data-testid=sha256-0]")).to_contain_text(
        task["images"][0]["sha256"]
    )
    timeline = page.locator("ol#timeline li[data-kind]")
    await expect(timeline.first).to_have_attribute("data-kind", "created")
    assert await page.locator("ol#timeline li[data-kind=notify]").count() == 2  # both failed
    await page.wait_for_function(
        "() => { const i = document.querySelector('img#image-0');"
        " return i !== null && i.complete && i.naturalWidth > 0; }"
    )
    width = await page.evaluate("document.querySelector('img#image-0').naturalWidth")
    assert width > 0
    await screenshot(page, "task-detail")

    # Retry the given-up notification; this time the receiver accepts it.
    receiver.default = 204
    async with page.expect_navigation():
        await page.click("form#retry button")
    assert page.url.startswith(f"{service.url}/console/tasks/{notified['id']}")
    await expect(page.locator("p[role=status]")).to_contain_text(
        "Retried: the notification step runs again."
    )
    await screenshot(page, "task-retried")
    await wait_for_task(
        service, notified["id"], lambda t: (t["notification"] or {}).get("status") == "delivered"
    )
    await page.reload()
    await expect(page.locator("ol#timeline li[data-kind=redrive]")).to_have_count(1)
    await expect(page.locator("ol#timeline li[data-kind=notify]")).to_have_count(3)

    # Log out: the console sends the browser back to the login page.
    async with page.expect_navigation():
        await page.click("#logout-button")
    assert page.url == f"{service.url}/console/login"
    await page.goto("/console")
    assert page.url.startswith(f"{service.url}/console/login?")  # with next=/console
    await expect(page.locator("form#login")).to_be_visible()
    await screenshot(page, "logged-out")
    assert problems == []
