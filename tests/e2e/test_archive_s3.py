"""Archiving to a real S3-compatible server: bytes checked, signed redirects, store outages."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.archive.models import TaskImage
from app.provider.simulator.config import SimulatorConfig
from app.tasks.events import EventKind, TaskEvent
from tests.conftest import auth
from tests.support.proxy import CuttableProxy, started
from tests.support.s3 import BUCKET, S3Server
from tests.support.stack import Stack, running_stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def aws(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


async def archive_events(stack: Stack, task_id: str) -> list[TaskEvent]:
    async with stack.gateway.sessions() as session:
        query = select(TaskEvent).where(
            TaskEvent.task_id == task_id, TaskEvent.kind == EventKind.ARCHIVE
        )
        return list((await session.scalars(query.order_by(TaskEvent.id))).all())


async def test_images_land_in_s3_with_the_simulators_bytes(
    database_url: str, aws: S3Server
) -> None:
    prefix = aws.new_prefix()
    config = SimulatorConfig(duration_seconds=0.3, image_noise=True)
    async with running_stack(
        database_url, config, storage_url=f"s3://{BUCKET}/{prefix}", poll_after_seconds=3600
    ) as stack:
        created = await stack.create({"prompt": "a fox", "size": "2:3"})

        task = await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")
        served = await stack.gateway.client.get(
            f"/v1/tasks/{created['id']}/images/0", headers=auth()
        )

        [upstream] = await stack.sim_tasks()
        stored = aws.objects(prefix)
        key = f"{prefix}/tasks/{created['id']}/images/0"
        assert sorted(stored) == [key]  # no thumbnail: the console makes it on first view
        assert stored[key] == upstream["image_sha256"]
        async with stack.gateway.sessions() as session:
            [row] = await session.scalars(
                select(TaskImage).where(TaskImage.task_id == created["id"])
            )
        assert (row.thumbnail_key, row.thumbnail_error) == (None, None)
        assert task["images"][0]["sha256"] == upstream["image_sha256"]
        assert served.status_code == 200
        assert hashlib.sha256(served.content).hexdigest() == upstream["image_sha256"]


async def test_cloud_images_can_be_served_by_a_signed_redirect(
    sqlite_database_url: str, aws: S3Server
) -> None:
    prefix = aws.new_prefix()
    async with running_stack(
        sqlite_database_url,
        SimulatorConfig(duration_seconds=0.3),
        storage_url=f"s3://{BUCKET}/{prefix}",
        poll_after_seconds=3600,
        image_redirect_seconds=60,
    ) as stack:
        created = await stack.create()
        task = await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")

        redirect = await stack.gateway.client.get(
            f"/v1/tasks/{created['id']}/images/0", headers=auth()
        )
        async with httpx.AsyncClient() as plain:
            signed = await plain.get(redirect.headers["location"])

        assert redirect.status_code == 307
        assert "X-Amz-Signature=" in redirect.headers["location"]
        assert signed.status_code == 200
        assert hashlib.sha256(signed.content).hexdigest() == task["images"][0]["sha256"]


async def test_the_store_down_for_a_while_is_retried_then_succeeds(
    database_url: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    async with started(CuttableProxy(host, int(port))) as proxy:
        for name, value in s3_server.env(proxy.origin).items():
            monkeypatch.setenv(name, value)
        prefix = s3_server.new_prefix()
        async with running_stack(
            database_url,
            SimulatorConfig(duration_seconds=0.3),
            storage_url=f"s3://{BUCKET}/{prefix}",
            poll_after_seconds=3600,
        ) as stack:
            proxy.cut()
            created = await stack.create()

            def failed_twice(events: list[TaskEvent]) -> bool:
                return len([e for e in events if e.outcome == "error"]) >= 2

            events: list[Any] = await eventually(
                lambda: archive_events(stack, created["id"]), failed_twice, timeout=60
            )
            assert (await stack.task(created["id"]))["status"] == "archiving"
            proxy.restore()

            task = await stack.wait_for(
                created["id"], lambda t: t["status"] == "succeeded", timeout=60
            )

            [upstream] = await stack.sim_tasks()
            key = f"{prefix}/tasks/{created['id']}/images/0"
            objects = s3_server.objects(prefix)
            assert sorted(objects) == [key]
            assert objects[key] == upstream["image_sha256"]
            assert task["images"][0]["sha256"] == upstream["image_sha256"]
            assert events[0].detail == {"index": 0}
            assert events[0].message
