"""The real path over HTTP: simulator -> gateway -> object store, then served to the caller."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.archive.models import TaskImage
from app.provider.simulator.config import SimulatorConfig, SimulatorFaults
from app.tasks.events import EventKind
from tests.conftest import BETA_KEY, auth
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e


async def fetch_image(
    stack: Stack, task_id: str, index: int = 0, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    response = await stack.gateway.client.get(
        f"/v1/tasks/{task_id}/images/{index}", headers=auth() | (headers or {})
    )
    return response.status_code, response.content, dict(response.headers)


async def test_a_completed_task_is_archived_served_and_succeeds(
    database_url: str, tmp_path: Path
) -> None:
    storage = tmp_path / "images"
    config = SimulatorConfig(duration_seconds=0.3)
    async with running_stack(
        database_url, config, storage_url=f"file://{storage}", poll_after_seconds=3600
    ) as stack:
        created = await stack.create({"prompt": "a heron", "size": "3:2"})

        task = await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")
        status, content, headers = await fetch_image(stack, created["id"])
        cached, _, _ = await fetch_image(
            stack, created["id"], headers={"If-None-Match": f'"{task["images"][0]["sha256"]}"'}
        )
        other_caller = await stack.gateway.client.get(
            f"/v1/tasks/{created['id']}/images/0", headers=auth(BETA_KEY)
        )
        missing, _, _ = await fetch_image(stack, created["id"], index=1)

        [upstream] = await stack.sim_tasks()
        [image] = task["images"]
        assert image["sha256"] == upstream["image_sha256"]
        assert image["bytes"] == upstream["image_bytes"]
        assert image["content_type"] == "image/png"
        assert image["url"] == f"/v1/tasks/{created['id']}/images/0"
        assert task["completed_at"] is not None
        assert status == 200
        assert hashlib.sha256(content).hexdigest() == upstream["image_sha256"]
        assert headers["content-type"] == "image/png"
        assert headers["content-length"] == str(upstream["image_bytes"])
        assert headers["etag"] == f'"{upstream["image_sha256"]}"'
        assert cached == 304
        assert other_caller.status_code == 404
        assert missing == 404
        stored = sorted(p for p in storage.rglob("*") if p.is_file())
        # The image alone: its thumbnail is made on the console's first view (issue 17).
        assert [p.name for p in stored] == ["0"]
        assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == upstream["image_sha256"]
        async with stack.gateway.sessions() as session:
            row_image = await session.get(TaskImage, (created["id"], 0))
        assert row_image is not None
        assert (row_image.thumbnail_key, row_image.thumbnail_error) == (None, None)
        row = await stack.gateway.task_row(created["id"])
        assert (row.status, row.progress) == ("succeeded", 100)


async def test_an_image_is_404_until_archived(sqlite_database_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(duration_seconds=3600)
    async with running_stack(
        sqlite_database_url, config, storage_url=f"file://{tmp_path}", poll_after_seconds=3600
    ) as stack:
        created = await stack.create()
        await stack.wait_for(created["id"], lambda t: t["status"] == "pending")

        status, content, _ = await fetch_image(stack, created["id"])

        assert status == 404
        assert b"not archived" in content


async def test_expired_links_fail_the_task_with_links_expired(
    database_url: str, tmp_path: Path
) -> None:
    config = SimulatorConfig(duration_seconds=0.3, faults=SimulatorFaults(link_ttl_seconds=0.0))
    storage = tmp_path / "images"
    async with running_stack(
        database_url, config, storage_url=f"file://{storage}", poll_after_seconds=3600
    ) as stack:
        created = await stack.create()

        task = await stack.wait_for(created["id"], lambda t: t["status"] == "failed")

        assert task["error"]["code"] == "links_expired"
        assert "404" in task["error"]["message"] or "gone" in task["error"]["message"]
        assert task["images"] == []
        assert [p for p in storage.rglob("*") if p.is_file()] == []


async def test_many_tasks_each_get_exactly_one_image(database_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(duration_seconds=0.3, faults=SimulatorFaults(callback_duplicates=3))
    storage = tmp_path / "images"
    async with running_stack(
        database_url, config, storage_url=f"file://{storage}", poll_after_seconds=1
    ) as stack:
        created = [await stack.create({"prompt": f"p{i}"}) for i in range(8)]

        finished = [
            await stack.wait_for(t["id"], lambda t: t["status"] == "succeeded") for t in created
        ]

        upstream = {u["id"]: u for u in await stack.sim_tasks()}
        for task in finished:
            assert task["images"][0]["sha256"] == upstream[task["provider_task_id"]]["image_sha256"]
            events = [
                e
                for e in await _timeline(stack, task["id"])
                if e.kind == EventKind.ARCHIVE and e.outcome == "stored"
            ]
            assert len(events) == 1
        stored = [p.name for p in storage.rglob("*") if p.is_file()]
        assert sorted(stored) == ["0"] * 8  # no thumbnails: the console makes them


async def _timeline(stack: Stack, task_id: str) -> list:  # type: ignore[type-arg]
    from sqlalchemy import select

    from app.tasks.events import TaskEvent

    async with stack.gateway.sessions() as session:
        query = select(TaskEvent).where(TaskEvent.task_id == task_id)
        return list((await session.scalars(query)).all())
