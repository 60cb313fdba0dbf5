"""A worker killed with SIGKILL in the middle of a copy: another worker takes over after the
lease expires, and each image ends up stored once and recorded once."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.archive.models import TaskImage
from app.core.db import create_engine, create_sessionmaker
from app.tasks.events import EventKind, TaskEvent
from tests.conftest import auth
from tests.e2e.conftest import Processes, gateway_env, simulator_args
from tests.support.s3 import BUCKET, S3Server
from tests.support.servers import free_port
from tests.support.waiting import eventually, until, wait_until_up

pytestmark = pytest.mark.e2e


async def count(database_url: str, query: Any) -> int:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return int(await session.scalar(query) or 0)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("store", ["file", "s3"])
async def test_a_copy_killed_midway_is_finished_by_another_worker_exactly_once(
    processes: Processes, database_url: str, s3_server: S3Server, tmp_path: Path, store: str
) -> None:
    prefix = s3_server.new_prefix()
    storage = f"s3://{BUCKET}/{prefix}" if store == "s3" else f"file://{tmp_path / 'images'}"
    sim_port, api_port = free_port(), free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
    # About 3 MB served at 600 kB/s: a copy takes ~5 s, plenty of time to kill it midway.
    simulator = processes.start(
        "simulator",
        simulator_args(
            sim_port, "--duration", "0.3", "--image-noise", "--file-bytes-per-second", "600000"
        ),
        {},
    )
    env = (
        gateway_env(
            database_url, sim_url, api_url, storage_url=storage, IMAGEGEN_JOB_LEASE_SECONDS=2
        )
        | s3_server.env()
    )
    api = processes.start(
        "api", ["serve", "--port", str(api_port)], env | {"IMAGEGEN_RUN_WORKERS": "false"}
    )
    await wait_until_up(f"{sim_url}/_sim/stats", simulator)
    await wait_until_up(f"{api_url}/healthz", api)
    first = processes.start("worker", ["worker"], env)
    async with httpx.AsyncClient() as client:
        created = (
            await client.post(
                f"{api_url}/v1/images/generations",
                json={"prompt": "p", "size": "1:1"},
                headers=auth(),
            )
        ).json()

        async def sim_task() -> dict[str, Any]:
            tasks: list[dict[str, Any]] = (await client.get(f"{sim_url}/_sim/tasks")).json()
            return tasks[0] if tasks else {}

        async def task() -> dict[str, Any]:
            answer = await client.get(f"{api_url}/v1/tasks/{created['id']}", headers=auth())
            result: dict[str, Any] = answer.json()
            return result

        async def copying() -> bool:
            """The download has begun and nothing is stored yet: the copy is in flight."""
            upstream, ours = await sim_task(), await task()
            in_flight = ours["status"] == "archiving" and not ours.get("images")
            return upstream.get("downloads", 0) >= 1 and in_flight

        await until(copying, what="the first worker midway through the copy", timeout=30)
        first.kill()
        processes.start("worker", ["worker"], env)

        finished = await eventually(task, lambda t: t["status"] == "succeeded", timeout=60)
        served = await client.get(f"{api_url}/v1/tasks/{created['id']}/images/0", headers=auth())
        upstream = await sim_task()

    assert upstream["downloads"] == 2
    assert finished["images"][0]["sha256"] == upstream["image_sha256"]
    assert hashlib.sha256(served.content).hexdigest() == upstream["image_sha256"]
    if store == "s3":
        key = f"{prefix}/tasks/{created['id']}/images/0"
        objects = s3_server.objects(prefix)
        assert sorted(objects) == [key]  # the image alone (thumbnails: on the console's view)
        assert objects[key] == upstream["image_sha256"]
    else:
        stored = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
        complete = [p for p in stored if p.name == "0"]
        assert len(complete) == 1
        assert hashlib.sha256(complete[0].read_bytes()).hexdigest() == upstream["image_sha256"]
        assert [p.name for p in stored if p.name.endswith(".thumb.webp")] == []
    images = select(func.count()).select_from(TaskImage)
    stored_events = (
        select(func.count())
        .select_from(TaskEvent)
        .where(TaskEvent.kind == EventKind.ARCHIVE, TaskEvent.outcome == "stored")
    )
    assert await count(database_url, images) == 1
    assert await count(database_url, stored_events) == 1


async def test_two_workers_record_exactly_one_success_per_image(
    processes: Processes, database_url: str, tmp_path: Path
) -> None:
    sim_port, api_port = free_port(), free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
    simulator = processes.start(
        "simulator", simulator_args(sim_port, "--duration", "0.5", "--callback-duplicates", "3"), {}
    )
    storage = tmp_path / "images"
    env = gateway_env(
        database_url, sim_url, api_url, storage_url=f"file://{storage}", poll_after_seconds=1
    )
    api = processes.start(
        "api", ["serve", "--port", str(api_port)], env | {"IMAGEGEN_RUN_WORKERS": "false"}
    )
    await wait_until_up(f"{sim_url}/_sim/stats", simulator)
    await wait_until_up(f"{api_url}/healthz", api)
    for _ in range(2):
        processes.start("worker", ["worker"], env)
    async with httpx.AsyncClient() as client:
        ids = [
            (
                await client.post(
                    f"{api_url}/v1/images/generations", json={"prompt": f"p{i}"}, headers=auth()
                )
            ).json()["id"]
            for i in range(12)
        ]

        async def statuses() -> list[str]:
            answer = await client.get(f"{api_url}/v1/tasks?limit=100", headers=auth())
            return [task["status"] for task in answer.json()["data"]]

        await eventually(statuses, lambda found: found == ["succeeded"] * 12, timeout=60)
        upstream = (await client.get(f"{sim_url}/_sim/tasks")).json()

    assert len(upstream) == 12
    assert len(ids) == 12
    assert len([p for p in storage.rglob("*") if p.is_file() and p.name == "0"]) == 12
    images = select(func.count()).select_from(TaskImage)
    stored_events = (
        select(func.count())
        .select_from(TaskEvent)
        .where(TaskEvent.kind == EventKind.ARCHIVE, TaskEvent.outcome == "stored")
    )
    assert await count(database_url, images) == 12
    assert await count(database_url, stored_events) == 12
