"""Result images: real, decodable, exact pixel sizes, fast to encode, and links that expire."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time

import pytest
from PIL import Image

from app.provider.simulator import SimulatorConfig, SimulatorFaults
from app.provider.simulator.images import ImageCache, render_image
from app.provider.types import PIXELS, SIZES

from .helpers import CREATE, ManualClock, assert_error, create_body, running, wait_until_final


@pytest.mark.parametrize("size", SIZES)
async def test_png_has_the_exact_pixel_size(size: str) -> None:
    async with running(SimulatorConfig(duration_seconds=0)) as (_, client):
        task_id = (await client.post(CREATE, json=create_body(size=size))).json()["id"]
        (url,) = (await wait_until_final(client, task_id))["results"]
        client.headers.pop("Authorization")
        response = await client.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert int(response.headers["content-length"]) == len(response.content)
        image = Image.open(io.BytesIO(response.content))
        image.load()
        assert image.format == "PNG"
        assert image.size == PIXELS[size]
        record = (await client.get(f"/_sim/tasks/{task_id}")).json()
        assert record["image_sha256"] == hashlib.sha256(response.content).hexdigest()
        assert record["image_bytes"] == len(response.content)
        again = await client.get(url)
        assert again.content == response.content


async def test_image_pixels_overrides_the_size_of_every_result() -> None:
    async with running(SimulatorConfig(duration_seconds=0, image_pixels=(64, 32))) as (_, client):
        task_id = (await client.post(CREATE, json=create_body(size="1536x1024"))).json()["id"]
        (url,) = (await wait_until_final(client, task_id))["results"]
        client.headers.pop("Authorization")
        image = Image.open(io.BytesIO((await client.get(url)).content))
        assert image.size == (64, 32)


@pytest.mark.parametrize(
    ("image_format", "pil_format", "content_type", "suffix"),
    [("jpeg", "JPEG", "image/jpeg", ".jpg"), ("webp", "WEBP", "image/webp", ".webp")],
)
async def test_other_formats(
    image_format: str, pil_format: str, content_type: str, suffix: str
) -> None:
    config = SimulatorConfig(duration_seconds=0, image_format=image_format)
    async with running(config) as (_, client):
        task_id = (await client.post(CREATE, json=create_body(size="3:2"))).json()["id"]
        (url,) = (await wait_until_final(client, task_id))["results"]
        assert url.endswith(suffix)
        response = await client.get(url)
        assert response.headers["content-type"] == content_type
        image = Image.open(io.BytesIO(response.content))
        assert (image.format, image.size) == (pil_format, (1536, 1024))


async def test_noise_images_are_large() -> None:
    config = SimulatorConfig(duration_seconds=0, image_noise=True)
    async with running(config) as (_, client):
        task_id = (await client.post(CREATE, json=create_body())).json()["id"]
        (url,) = (await wait_until_final(client, task_id))["results"]
        response = await client.get(url)
        assert len(response.content) > 1024 * 1024 * 3
        assert Image.open(io.BytesIO(response.content)).size == (1024, 1024)


def test_noise_fraction_sets_the_file_size() -> None:
    two_thirds = render_image("task-unified-1-aaaaaaaa", 1024, 1024, "png", 0.667)
    whole = render_image("task-unified-1-aaaaaaaa", 1024, 1024, "png", 1.0)
    assert 2.0 * 1024 * 1024 < len(two_thirds) < 2.1 * 1024 * 1024
    assert 3.0 * 1024 * 1024 < len(whole) < 3.1 * 1024 * 1024
    assert Image.open(io.BytesIO(two_thirds)).size == (1024, 1024)


def test_render_is_deterministic_per_seed() -> None:
    first = render_image("task-unified-1-aaaaaaaa", 1024, 1536, "png", False)
    assert render_image("task-unified-1-aaaaaaaa", 1024, 1536, "png", False) == first
    assert render_image("task-unified-1-bbbbbbbb", 1024, 1536, "png", False) != first


def test_default_png_encodes_fast_and_small() -> None:
    timings = []
    for attempt in range(5):
        started = time.perf_counter()
        data = render_image(f"task-unified-1-{attempt:08d}", 1536, 1024, "png", False)
        timings.append(time.perf_counter() - started)
        assert len(data) < 200_000
    assert min(timings) < 0.1


async def test_image_cache_renders_once_and_evicts() -> None:
    calls: list[str] = []

    def render(key: str) -> bytes:
        calls.append(key)
        return key.encode() * 10

    cache = ImageCache(budget_bytes=25)
    results = await asyncio.gather(*(cache.get("a", lambda: render("a")) for _ in range(5)))
    assert results == [b"a" * 10] * 5
    assert calls == ["a"]
    await cache.get("b", lambda: render("b"))
    await cache.get("c", lambda: render("c"))
    await cache.get("a", lambda: render("a"))
    assert calls == ["a", "b", "c", "a"]


async def test_link_expires_after_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(monkeypatch)
    config = SimulatorConfig(duration_seconds=0, faults=SimulatorFaults(link_ttl_seconds=0.3))
    async with running(config) as (_, client):
        task_id = (await client.post(CREATE, json=create_body())).json()["id"]
        (url,) = (await wait_until_final(client, task_id))["results"]
        clock.advance(0.29)
        assert (await client.get(url)).status_code == 200
        clock.advance(0.02)
        assert_error(await client.get(url), 404, "file_expired", "invalid_request_error")
        record = (await client.get(f"/_sim/tasks/{task_id}")).json()
        assert record["link_expired"] is True
        assert (await client.get("/_sim/stats")).json()["files_expired"] == 1
        query = await client.get(f"/v1/tasks/{task_id}")
        assert query.json()["results"] == [url]


async def test_link_ttl_can_change_at_runtime() -> None:
    async with running(SimulatorConfig(duration_seconds=0)) as (_, client):
        task_id = (await client.post(CREATE, json=create_body())).json()["id"]
        (url,) = (await wait_until_final(client, task_id))["results"]
        assert (await client.get(url)).status_code == 200
        await client.put("/_sim/faults", json={"link_ttl_seconds": 0})
        assert (await client.get(url)).status_code == 404


async def test_wrong_or_early_links_are_404() -> None:
    async with running(SimulatorConfig(duration_seconds=30)) as (sim, client):
        task_id = (await client.post(CREATE, json=create_body())).json()["id"]
        task = sim.engine.tasks[task_id]
        early = await client.get(f"/files/{task_id}/{task.file_name}")
        assert_error(early, 404, "file_not_found", "invalid_request_error")
        guessed = await client.get(f"/files/{task_id}/aaaaaaaaaaaaaaaa.png")
        assert guessed.status_code == 404
        unknown = await client.get("/files/task-unified-1-aaaaaaaa/x.png")
        assert unknown.status_code == 404
