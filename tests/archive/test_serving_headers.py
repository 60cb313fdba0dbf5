"""Every answer under /v1 says `X-Content-Type-Options: nosniff`: an archived image (its bytes,
a redirect, 304, 404, 503) must never be sniffed into something a browser runs."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.archive import repository as archived
from app.core.clock import utcnow
from app.core.config import Settings
from app.tasks.models import Task
from tests.conftest import auth, settings_values
from tests.support.gateway import Gateway, running_gateway
from tests.support.rows import make_task
from tests.support.s3 import BUCKET, S3Server

# An HTML page with PNG magic bytes in front: a sniffing browser could render it as a page.
IMAGE = b"\x89PNG\r\n\x1a\n<html><script>alert(document.cookie)</script></html>"


def nosniff(response: httpx.Response) -> bool:
    """Whether the answer carries exactly one `X-Content-Type-Options: nosniff`."""
    return response.headers.get_list("x-content-type-options") == ["nosniff"]


async def archive(gateway: Gateway, task: Task, index: int = 0, *, stored: bool = True) -> str:
    """An archived image row (and its object when `stored`); the image's path."""

    async def chunks() -> AsyncIterator[bytes]:
        yield IMAGE

    key = f"tasks/{task.id}/images/{index}"
    if stored:
        await gateway.app.state.store.put_stream(key, chunks(), content_type="image/png")
    async with gateway.sessions() as session:
        await archived.record_once(
            session,
            {
                "task_id": task.id,
                "index": index,
                "key": key,
                "content_type": "image/png",
                "bytes": len(IMAGE),
                "sha256": hashlib.sha256(IMAGE).hexdigest(),
                "width": 1,
                "height": 1,
                "source_url": "https://cdn.example.com/r.png",
                "created_at": utcnow(),
            },
        )
        await session.commit()
    return f"/v1/tasks/{task.id}/images/{index}"


@pytest.fixture(params=["file", "memory"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The file store and the memory store."""
    return f"file://{tmp_path}/images" if request.param == "file" else "memory://"


async def test_every_image_answer_says_nosniff(database_url: str, storage_url: str) -> None:
    settings = Settings(**settings_values(database_url, storage_url=storage_url))
    async with running_gateway(settings) as gateway:
        task = await make_task(gateway.sessions)
        path = await archive(gateway, task)
        lost = await archive(gateway, task, 1, stored=False)  # the store lost the object
        pending = await make_task(gateway.sessions)
        client = gateway.client

        full = await client.get(path, headers=auth())
        cached = await client.get(path, headers=auth() | {"If-None-Match": full.headers["etag"]})
        answers = {
            "200": full,
            "304": cached,
            "503": await client.get(lost, headers=auth()),
            "404 not archived": await client.get(
                f"/v1/tasks/{pending.id}/images/0", headers=auth()
            ),
            "404 unknown task": await client.get("/v1/tasks/nope/images/0", headers=auth()),
            "422 bad index": await client.get(f"/v1/tasks/{task.id}/images/99", headers=auth()),
            "401": await client.get(path),
        }

    assert {name: r.status_code for name, r in answers.items()} == {
        name: int(name[:3]) for name in answers
    }
    assert (full.content, full.headers["content-type"]) == (IMAGE, "image/png")
    assert [name for name, response in answers.items() if not nosniff(response)] == []


async def test_other_v1_answers_say_nosniff_too(sqlite_database_url: str) -> None:
    # From the one place every answer passes, so routes still to come (uploads) inherit it.
    settings = Settings(**settings_values(sqlite_database_url))
    async with running_gateway(settings) as gateway:
        client = gateway.client
        answers = [
            await client.get("/v1/tasks", headers=auth()),
            await client.post("/v1/images/generations", json={"prompt": ""}, headers=auth()),
            await client.get("/v1/uploads/upl_nope/content", headers=auth()),
            await client.get("/healthz"),
        ]

    assert [r.status_code for r in answers] == [200, 422, 404, 200]
    assert all(nosniff(response) for response in answers)


async def test_a_redirect_to_a_signed_url_says_nosniff(
    database_url: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    storage_url = f"s3://{BUCKET}/{s3_server.new_prefix()}"
    values = settings_values(database_url, storage_url=storage_url, image_redirect_seconds=60)
    async with running_gateway(Settings(**values)) as gateway:
        path = await archive(gateway, await make_task(gateway.sessions))
        redirect = await gateway.client.get(path, headers=auth())

    assert redirect.status_code == 307
    assert redirect.headers["location"].startswith(s3_server.endpoint)
    assert nosniff(redirect)
