"""The task page's reference images in a real browser: an upload, an earlier task's result and a
URL, made through the REST API of a real `serve` on the simulator. Needs the uploads API and
`reference_images` on create."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image, ImageDraw
from playwright.async_api import Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import auth
from tests.support.browser import OPERATOR_KEY, Service, screenshot
from tests.support.servers import serve_app
from tests.support.waiting import eventually

pytestmark = pytest.mark.browser

WAIT_S = 30.0  # a task takes about 3 s upstream in the simulator, plus the archive copy


def picture(size: tuple[int, int], colours: tuple[str, str]) -> bytes:
    """A small PNG with something to see in a thumbnail."""
    image = Image.new("RGB", size, colours[0])
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.ellipse((width // 5, height // 5, width * 4 // 5, height * 4 // 5), fill=colours[1])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


UPLOADED = picture((480, 320), ("#0f766e", "#fde68a"))
PUBLISHED = picture((256, 256), ("#1e3a8a", "#fca5a5"))


@pytest.fixture
async def published() -> AsyncIterator[str]:
    """The URL of an image on a caller's own web server (the provider downloads it)."""

    async def image(request: Request) -> Response:
        return Response(PUBLISHED, media_type="image/png")

    async with serve_app(Starlette(routes=[Route("/art/ref.png", image)])) as base:
        yield f"{base}/art/ref.png"


async def finished(service: Service, task_id: str) -> dict[str, Any]:
    return await eventually(
        lambda: service.task(task_id),
        lambda task: task["status"] in ("succeeded", "failed", "cancelled"),
        WAIT_S,
        what=f"task {task_id}",
        interval=0.1,
    )


async def log_in(page: Page) -> None:
    await page.goto("/console/login")
    await page.fill("form#login input[name=key]", OPERATOR_KEY)
    async with page.expect_navigation():
        await page.click("form#login button[type=submit]")


async def test_the_task_page_shows_its_reference_images(
    page: Page, service: Service, published: str
) -> None:
    problems: list[str] = []  # script errors and console errors (a CSP refusal shows here)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}") if message.type == "error" else None
        ),
    )
    uploaded = await service.api.post(
        "/v1/uploads", content=UPLOADED, headers=auth() | {"Content-Type": "image/png"}
    )
    assert uploaded.status_code == 201, uploaded.text
    upload = uploaded.json()
    source = await service.create({"prompt": "a lighthouse at dusk, watercolor", "size": "3:2"})
    assert (await finished(service, source["id"]))["status"] == "succeeded"
    edit = await service.create(
        {
            "prompt": "the lighthouse in the colours of the photo, under the moon of the poster",
            "size": "3:2",
            "reference_images": [
                {"upload_id": upload["id"]},
                {"task_id": source["id"], "index": 0},
                {"url": published},
            ],
        }
    )
    done = await finished(service, edit["id"])
    assert done["status"] == "succeeded", done

    await log_in(page)
    await page.goto(f"/console/tasks/{edit['id']}")

    figures = page.locator("#references figure.reference")
    await expect(figures).to_have_count(3)
    assert [await figure.get_attribute("data-source") for figure in await figures.all()] == [
        "upload",
        "task",
        "url",
    ]
    await expect(figures.nth(0).locator("[data-field=upload_id]")).to_have_text(upload["id"])
    await expect(figures.nth(0).locator("[data-field=sha256]")).to_have_text(upload["sha256"])
    await expect(figures.nth(1).locator("a.task-link")).to_have_attribute(
        "href", f"/console/tasks/{source['id']}"
    )
    await expect(figures.nth(2).locator("[data-field=url]")).to_have_text(published)
    await expect(figures.nth(2).locator("img")).to_have_count(0)  # never fetched for display
    await expect(page.locator("img.reference-thumb")).to_have_count(2)
    await page.wait_for_function(
        "() => Array.from(document.querySelectorAll('img.reference-thumb, img#image-0'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    kinds = await page.evaluate(
        "() => Promise.all(Array.from(document.querySelectorAll('img.reference-thumb'))"
        ".map(i => fetch(i.src).then(r => r.headers.get('content-type'))))"
    )
    assert kinds == ["image/webp", "image/webp"]  # thumbnails, not placeholders
    await screenshot(page, "task-references")

    async with page.expect_navigation():
        await figures.nth(1).locator("a.task-link").click()
    await expect(page.locator("h1 code")).to_have_text(source["id"])
    assert problems == []
