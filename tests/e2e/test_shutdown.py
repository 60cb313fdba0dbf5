"""SIGTERM to a worker process in the middle of archive copies: it finishes what fits in the
grace period, gives back the leases of the rest at once, exits 0, and nothing is lost."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.archive.models import TaskImage
from app.core.db import create_engine, create_sessionmaker
from app.workers.models import Job, JobKind, JobState
from tests.conftest import auth
from tests.e2e.conftest import Processes, gateway_env, simulator_args
from tests.support.s3 import BUCKET, S3Server
from tests.support.servers import Process, free_port
from tests.support.waiting import eventually, wait_until_up

pytestmark = pytest.mark.e2e

TASKS = 4
# Leases far longer than the test: a job left leased by the stopped worker would never be
# taken by the second one in time, so the test fails unless leases are given back.
LEASE_SECONDS = 600
# Time a process may need past the grace period: cancelled uploads abort, connections close.
EXIT_SLACK_SECONDS = 15


async def rows(database_url: str, model: Any) -> list[Any]:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return list((await session.scalars(select(model))).all())
    finally:
        await engine.dispose()


class Load:
    """A simulator serving slow noisy images, an API process and tasks being archived."""

    def __init__(self, processes: Processes, env: dict[str, str], sim_url: str, api_url: str):
        self.processes, self.env, self.sim_url, self.api_url = processes, env, sim_url, api_url
        self.client = httpx.AsyncClient()
        self.ids: list[str] = []

    async def create(self) -> None:
        for index in range(TASKS):
            answer = await self.client.post(
                f"{self.api_url}/v1/images/generations",
                json={"prompt": f"p{index}", "size": "1:1"},
                headers=auth(),
            )
            assert answer.status_code == 202, answer.text
            self.ids.append(answer.json()["id"])

    async def upstream(self) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = (await self.client.get(f"{self.sim_url}/_sim/tasks")).json()
        return tasks

    async def copies_under_way(self) -> None:
        """Every image is being downloaded (so every archive job is running)."""
        await eventually(
            self.upstream,
            lambda tasks: len(tasks) == TASKS and all(t.get("downloads", 0) >= 1 for t in tasks),
            timeout=60,
        )

    async def statuses(self) -> list[str]:
        found = []
        for task_id in self.ids:
            answer = await self.client.get(f"{self.api_url}/v1/tasks/{task_id}", headers=auth())
            found.append(answer.json()["status"])
        return found


async def start_load(
    processes: Processes,
    database_url: str,
    storage_url: str,
    grace: float,
    bytes_per_second: int,
    extra_env: dict[str, str],
) -> tuple[Load, Process]:
    sim_port, api_port = free_port(), free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
    simulator = processes.start(
        "simulator",
        simulator_args(
            sim_port,
            "--duration",
            "0.3",
            "--image-noise",  # about 3 MB a 1024x1024 image: the copies take seconds
            "--file-bytes-per-second",
            str(bytes_per_second),
        ),
        {},
    )
    env = (
        gateway_env(
            database_url,
            sim_url,
            api_url,
            storage_url=storage_url,
            poll_after_seconds=1,
            IMAGEGEN_JOB_LEASE_SECONDS=LEASE_SECONDS,
            IMAGEGEN_SHUTDOWN_GRACE_SECONDS=grace,
        )
        | extra_env
    )
    api = processes.start(
        "api", ["serve", "--port", str(api_port)], env | {"IMAGEGEN_RUN_WORKERS": "false"}
    )
    await wait_until_up(f"{sim_url}/_sim/stats", simulator)
    await wait_until_up(f"{api_url}/healthz", api)
    return Load(processes, env, sim_url, api_url), api


def terminate(process: Process, grace: float) -> int:
    """SIGTERM; the exit status, which must come within the grace period (plus slack)."""
    process.popen.send_signal(signal.SIGTERM)
    try:
        return process.popen.wait(timeout=grace + EXIT_SLACK_SECONDS)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within the grace period:\n{process.output()}") from None


def assert_stopped_cleanly(api: Process) -> None:
    """uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (exit by signal)."""
    status = api.stop()
    log = api.log_path.read_text()
    assert status in (0, -signal.SIGTERM), log
    assert "Application shutdown complete." in log


@pytest.mark.parametrize("store", ["file", "s3"])
async def test_sigterm_gives_back_unfinished_jobs_and_another_worker_finishes_them(
    processes: Processes, pg_database_url: str, s3_server: S3Server, tmp_path: Path, store: str
) -> None:
    prefix = s3_server.new_prefix()
    storage = f"s3://{BUCKET}/{prefix}" if store == "s3" else f"file://{tmp_path / 'images'}"
    grace = 1.0  # far shorter than a copy (~3 MB at 300 kB/s): every copy is interrupted
    load, api = await start_load(
        processes, pg_database_url, storage, grace, 300_000, s3_server.env()
    )
    try:
        first = processes.start("worker", ["worker"], load.env)
        await load.create()
        await load.copies_under_way()

        assert terminate(first, grace) == 0, first.output()

        jobs = await rows(pg_database_url, Job)
        queued = [job for job in jobs if job.state == JobState.QUEUED]
        archive = [job for job in jobs if job.kind == JobKind.ARCHIVE]
        assert [job.lease_owner for job in queued] == [None] * len(queued)
        unfinished = [(job.state, job.lease_owner) for job in archive]
        assert unfinished == [(JobState.QUEUED, None)] * TASKS
        assert "released unfinished jobs" in first.output()

        processes.start("worker", ["worker"], load.env)
        await eventually(load.statuses, lambda found: found == ["succeeded"] * TASKS, timeout=90)
        upstream = {task["id"]: task for task in await load.upstream()}
        tasks = [
            (await load.client.get(f"{load.api_url}/v1/tasks/{i}", headers=auth())).json()
            for i in load.ids
        ]
    finally:
        await load.client.aclose()

    assert_stopped_cleanly(api)
    assert sorted(t["downloads"] for t in upstream.values()) == [2] * TASKS  # one per worker
    for task in tasks:
        expected = upstream[task["provider_task_id"]]["image_sha256"]
        assert task["images"][0]["sha256"] == expected
    assert len(await rows(pg_database_url, TaskImage)) == TASKS
    if store == "s3":
        images = {k: v for k, v in s3_server.objects(prefix).items() if k.endswith("/0")}
        assert sorted(images.values()) == sorted(
            upstream[t["provider_task_id"]]["image_sha256"] for t in tasks
        )


async def test_sigterm_lets_running_jobs_finish_within_the_grace_period(
    processes: Processes, pg_database_url: str, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    grace = 60.0  # far longer than a copy (~3 MB at 1.5 MB/s)
    load, api = await start_load(
        processes, pg_database_url, f"file://{images}", grace, 1_500_000, {}
    )
    try:
        worker = processes.start("worker", ["worker"], load.env)
        await load.create()
        await load.copies_under_way()

        assert terminate(worker, grace) == 0, worker.output()

        # No other worker runs: the stopped one finished every copy it had started.
        assert await load.statuses() == ["succeeded"] * TASKS
        upstream = await load.upstream()
    finally:
        await load.client.aclose()

    assert_stopped_cleanly(api)
    assert "finishing running jobs before stopping" in worker.output()
    assert "released unfinished jobs" not in worker.output()
    assert [t["downloads"] for t in upstream] == [1] * TASKS
    stored = sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in images.rglob("0") if p.is_file()
    )
    assert stored == sorted(t["image_sha256"] for t in upstream)
