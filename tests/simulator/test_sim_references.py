"""Reference images: downloaded when a task starts, recorded byte for byte, and a task whose
reference cannot be used fails with image_processing_error, in its query body and callback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.provider.simulator import Simulator, SimulatorConfig, SimulatorFaults
from tests.support.images import ImageHost, image_bytes, sha256
from tests.support.servers import free_port
from tests.support.waiting import until

from .helpers import AUTH, CREATE, Receiver, create_body, running, serve, wait_until_final

REFERENCE_ERROR = "image_processing_error"


@dataclass
class World:
    """A running simulator, a host for reference images and a callback receiver."""

    simulator: Simulator
    client: httpx.AsyncClient
    host: ImageHost
    images: str
    receiver: Receiver
    hooks: str

    async def create(self, urls: list[str], callback: str | None = None) -> str:
        body = create_body(image_urls=urls)
        if callback is not None:
            body["callback_url"] = f"{self.hooks}/{callback}"
        response = await self.client.post(CREATE, json=body)
        assert response.status_code == 200, response.text
        task_id: str = response.json()["id"]
        return task_id

    async def record(self, task_id: str) -> dict[str, Any]:
        found: dict[str, Any] = (await self.client.get(f"/_sim/tasks/{task_id}")).json()
        return found


@contextlib.asynccontextmanager
async def world(**config: Any) -> AsyncIterator[World]:
    host = ImageHost()
    receiver = Receiver()
    settings = SimulatorConfig(duration_seconds=0, allow_private_callbacks=True, **config)
    async with (
        serve(host.app) as images,
        serve(receiver.app) as hooks,
        running(settings) as (simulator, client),
    ):
        yield World(simulator, client, host, images, receiver, hooks)


async def test_references_are_downloaded_when_the_task_starts_and_recorded() -> None:
    png, jpeg, webp = image_bytes("png", seed=1), image_bytes("jpeg", seed=2), image_bytes("webp")
    async with world() as w:
        w.host.add("a.png", png)
        w.host.add("b.jpg", jpeg, "application/octet-stream")  # the bytes decide, not the header
        w.host.add("c.webp", webp, "image/webp")
        urls = [f"{w.images}/a.png", f"{w.images}/redirect/b.jpg", f"{w.images}/c.webp"]
        task_id = await w.create(urls, callback="done")
        final = await wait_until_final(w.client, task_id)
        record = await w.record(task_id)
        stats = (await w.client.get("/_sim/stats")).json()
        [delivery] = await w.receiver.wait_for("done", 1)

    assert final["status"] == "completed"
    assert delivery.body["status"] == "completed"
    expected = [
        (0, urls[0], True, None, 200, len(png), sha256(png), "image/png"),
        (1, urls[1], True, None, 200, len(jpeg), sha256(jpeg), "image/jpeg"),
        (2, urls[2], True, None, 200, len(webp), sha256(webp), "image/webp"),
    ]
    keys = ("index", "url", "ok", "error", "status", "bytes", "sha256", "content_type")
    assert [tuple(fetch[key] for key in keys) for fetch in record["references"]] == expected
    assert record["references"][1]["declared_type"] == "application/octet-stream"
    assert {fetch["task_id"] for fetch in record["references"]} == {task_id}
    assert [tuple(fetch[key] for key in keys) for fetch in stats["reference_fetches"]] == expected
    engine_fetches = w.simulator.engine.stats.reference_fetches
    assert [(f.task_id, f.url, f.sha256) for f in engine_fetches] == [
        (task_id, url, digest) for _, url, _, _, _, _, digest, _ in expected
    ]
    assert (stats["references_fetched"], stats["references_failed"]) == (3, 0)
    assert w.host.hits["/a.png"] == w.host.hits["/b.jpg"] == w.host.hits["/c.webp"] == 1


@pytest.mark.parametrize(
    ("path", "config", "reason"),
    [
        (None, {}, "ConnectError"),
        ("/status/404", {}, "HTTP 404"),
        ("/status/500", {}, "HTTP 500"),
        ("/page.html", {}, "not a JPEG, PNG or WebP image"),
        ("/anim.gif", {}, "not a JPEG, PNG or WebP image (image/gif)"),
        ("/endless", {"max_image_bytes": 1024 * 1024}, f"larger than {1024 * 1024} bytes"),
        ("/hang", {"reference_timeout_seconds": 0.3}, "timed out after 0.3 s"),
    ],
    ids=["unreachable", "404", "500", "not-an-image", "gif", "too-large", "timeout"],
)
async def test_an_unusable_reference_fails_the_task_in_the_query_and_the_callback(
    path: str | None, config: dict[str, Any], reason: str
) -> None:
    async with world(**config) as w:
        w.host.add("page.html", b"<!doctype html><p>a page, not a picture</p>", "image/png")
        w.host.add("anim.gif", image_bytes("gif"), "image/gif")
        url = f"http://127.0.0.1:{free_port()}/a.png" if path is None else f"{w.images}{path}"
        task_id = await w.create([url], callback="hook")
        final = await wait_until_final(w.client, task_id)
        [delivery] = await w.receiver.wait_for("hook", 1)
        record = await w.record(task_id)

    assert final["status"] == "failed"
    assert set(final) == {"id", "object", "status", "model", "progress", "error"}
    error = final["error"]
    assert (error["code"], error["type"]) == (REFERENCE_ERROR, "task_error")
    assert error["message"].startswith("Reference image could not be processed: image_urls[0] (")
    assert reason in error["message"]
    assert delivery.body == final
    assert (record["final_status"], record["error_code"]) == ("failed", REFERENCE_ERROR)
    [fetch] = record["references"]
    assert (fetch["ok"], fetch["url"]) == (False, url)
    assert reason in fetch["error"]
    assert w.simulator.engine.stats.references_failed == 1


async def test_a_mix_of_good_and_bad_references_fails_naming_only_the_bad_ones() -> None:
    good = image_bytes("png")
    async with world() as w:
        w.host.add("good.png", good)
        w.host.add("note.txt", b"plain text", "text/plain")
        urls = [
            f"{w.images}/good.png",
            f"{w.images}/status/404",
            f"{w.images}/good.png",
            f"{w.images}/note.txt",
        ]
        task_id = await w.create(urls)
        final = await wait_until_final(w.client, task_id)
        record = await w.record(task_id)

    message = final["error"]["message"]
    assert final["error"]["code"] == REFERENCE_ERROR
    assert "image_urls[1]" in message
    assert "HTTP 404" in message
    assert "image_urls[3]" in message
    assert "image_urls[0]" not in message
    assert "image_urls[2]" not in message
    assert [fetch["ok"] for fetch in record["references"]] == [True, False, True, False]
    assert record["references"][0]["sha256"] == sha256(good)


async def test_the_create_answer_does_not_wait_for_the_downloads() -> None:
    async with world() as w:
        task_id = await w.create([f"{w.images}/hang"])
        answered = await w.record(task_id)
        await w.client.get(f"/v1/tasks/{task_id}")
        queried = await w.client.get(f"/v1/tasks/{task_id}")
        started = w.host.hits["/hang"]

    assert answered["fetching_references"] is True
    assert answered["status"] in ("pending", "processing")
    body = queried.json()
    assert (body["status"], body["task_info"]["can_cancel"]) == ("processing", True)
    assert started <= 1  # still downloading (or not even started) when the create answered


async def test_a_task_ends_only_once_its_slow_references_are_in() -> None:
    data = image_bytes("jpeg")
    async with world() as w:
        w.host.add("slow.jpg", data, "image/jpeg")
        gate = w.host.gates["slow.jpg"] = asyncio.Event()
        task_id = await w.create([f"{w.images}/slow.jpg"])  # a task of 0 seconds
        await until(lambda: w.host.hits["/slow.jpg"] == 1, what="the download to start")
        during = (await w.client.get(f"/v1/tasks/{task_id}")).json()
        gate.set()
        final = await wait_until_final(w.client, task_id)

    assert (during["status"], during["progress"]) == ("processing", 99)
    assert during["task_info"] == {"can_cancel": True, "estimated_time": 1}
    assert (final["status"], final["progress"]) == ("completed", 100)


async def test_secrets_in_a_reference_url_stay_out_of_the_message() -> None:
    async with world() as w:
        task_id = await w.create([f"{w.images.replace('//', '//user:pw@')}/status/403?sig=s3cret"])
        final = await wait_until_final(w.client, task_id)

    message = final["error"]["message"]
    assert f"({w.images}/status/403)" in message
    assert "s3cret" not in message
    assert "pw@" not in message


async def test_a_failed_reference_wins_over_a_drawn_failure() -> None:
    async with world(faults=SimulatorFaults(fail_rate=1.0)) as w:
        task_id = await w.create([f"{w.images}/status/404"])
        final = await wait_until_final(w.client, task_id)

    assert final["error"]["code"] == REFERENCE_ERROR


async def test_fetch_references_off_is_a_development_shortcut() -> None:
    async with world(fetch_references=False) as w:
        task_id = await w.create([f"{w.images}/status/404"])
        final = await wait_until_final(w.client, task_id)
        record = await w.record(task_id)

    assert final["status"] == "completed"
    assert record["references"] == []
    assert w.host.hits == {}


async def test_a_file_uploaded_to_the_files_api_is_a_reference_over_http() -> None:
    data = image_bytes("png", seed=9)
    simulator = Simulator(SimulatorConfig(duration_seconds=0))
    async with (
        serve(simulator.app) as base,
        httpx.AsyncClient(base_url=base, headers=AUTH) as client,
    ):
        upload = await client.post(
            "/api/v1/files/upload/stream", files={"file": ("ref.png", data, "image/png")}
        )
        file_url = upload.json()["data"]["file_url"]
        created = await client.post(CREATE, json=create_body(image_urls=[file_url]))
        final = await wait_until_final(client, created.json()["id"])

    assert file_url.startswith(f"{base}/files-api/uploads/")
    assert final["status"] == "completed"
    stats = simulator.engine.stats
    [stored] = stats.uploaded_files
    [fetch] = stats.reference_fetches
    assert (fetch.url, fetch.sha256, stored.sha256) == (file_url, sha256(data), sha256(data))
    assert stats.uploads_served == 1
