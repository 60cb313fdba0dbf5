"""The same delivery fired truly concurrently at two server processes on one PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.callbacks.models import CallbackDelivery
from app.core.db import create_engine, create_sessionmaker
from app.tasks.events import EventKind, TaskEvent
from app.tasks.models import Task
from app.workers.models import Job, JobKind, JobState
from tests.e2e.conftest import Processes, gateway_env
from tests.support.callbacks import accepted_task, body, callback_path
from tests.support.servers import free_port
from tests.support.waiting import until, wait_until_up

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PROVIDER_ID = "task-unified-1-racecar1"
COPIES = 24


@pytest.fixture
async def sessions(pg_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(pg_database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def two_servers(processes: Processes, database_url: str) -> list[str]:
    urls = []
    for _ in range(2):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = gateway_env(database_url, "http://127.0.0.1:9", url, run_workers=False)
        server = processes.start("api", ["serve", "--port", str(port)], env)
        await wait_until_up(f"{url}/healthz", server)
        urls.append(url)
    return urls


async def fire(urls: list[str], path: str, content: bytes) -> list[int]:
    """COPIES posts of one body, spread over both servers, each on its own connection."""
    clients = [httpx.AsyncClient(base_url=urls[i % 2]) for i in range(COPIES)]
    try:
        # Open every connection first so the posts leave together.
        await asyncio.gather(*(client.get("/healthz") for client in clients))
        go = asyncio.Event()
        ready: list[httpx.AsyncClient] = []

        async def post(client: httpx.AsyncClient) -> int:
            ready.append(client)
            await go.wait()
            response = await client.post(
                path, content=content, headers={"Content-Type": "application/json"}
            )
            return response.status_code

        posts = [asyncio.create_task(post(client)) for client in clients]
        await until(lambda: len(ready) == len(clients), what="every post waiting to leave")
        go.set()
        return list(await asyncio.gather(*posts))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


async def rows(
    sessions: async_sessionmaker[AsyncSession],
    model: type[CallbackDelivery] | type[TaskEvent] | type[Job],
    task_id: str,
) -> list[Any]:
    async with sessions() as session:
        result = await session.scalars(select(model).where(model.task_id == task_id))
        return list(result.all())


async def test_one_progress_delivery_makes_exactly_one_transition(
    processes: Processes, pg_database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    urls = await two_servers(processes, pg_database_url)
    task = await accepted_task(sessions, PROVIDER_ID)

    statuses = await fire(urls, callback_path(task), body(PROVIDER_ID, "processing", 40))

    assert statuses == [200] * COPIES
    [delivery] = await rows(sessions, CallbackDelivery, task.id)
    assert delivery.deliveries == COPIES
    events = await rows(sessions, TaskEvent, task.id)
    assert [(e.from_status, e.to_status) for e in events if e.kind == EventKind.TRANSITION] == [
        ("pending", "processing")
    ]
    async with sessions() as session:
        row = await session.get(Task, task.id)
        assert row is not None
        assert (row.status, row.progress) == ("processing", 40)


async def test_one_final_delivery_queues_exactly_one_confirmation(
    processes: Processes, pg_database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    urls = await two_servers(processes, pg_database_url)
    task = await accepted_task(sessions, PROVIDER_ID)

    statuses = await fire(urls, callback_path(task), body(PROVIDER_ID, "completed"))

    assert statuses == [200] * COPIES
    [delivery] = await rows(sessions, CallbackDelivery, task.id)
    assert delivery.deliveries == COPIES
    jobs: list[Job] = await rows(sessions, Job, task.id)
    open_polls = [j for j in jobs if j.kind == JobKind.POLL and j.state == JobState.QUEUED]
    assert len(open_polls) == 1
    events = await rows(sessions, TaskEvent, task.id)
    assert [e for e in events if e.kind == EventKind.TRANSITION] == []
    async with sessions() as session:
        row = await session.get(Task, task.id)
        assert row is not None
        assert row.status == "pending"
        assert row.final_claimed_at is not None
