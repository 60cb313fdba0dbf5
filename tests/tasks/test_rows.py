"""A task read and marked by `TaskRows`: through a session (any database) and straight on asyncpg
(`LazyPool`, PostgreSQL), the same detached task with the same values, flags and marks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import inspect, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import asyncpg_dsn, create_engine, create_sessionmaker
from app.core.pg_compiled import LazyPool
from app.provider.types import ProviderStatus, ProviderTask
from app.tasks import repository, service
from app.tasks.models import SubmitState, Task
from app.tasks.rows import HAS_REFERENCES, TaskRows
from app.tasks.states import ProviderNews, TaskStatus
from tests.support.rows import make_task

ATTRIBUTES = [attribute.key for attribute in inspect(Task).column_attrs]


@dataclass
class Setup:
    sessions: async_sessionmaker[AsyncSession]
    rows: TaskRows


@pytest.fixture(
    params=[("sqlite", False), ("pg", False), ("pg", True)],
    ids=["sqlite", "postgresql-session", "postgresql-asyncpg"],
)
def rows_database(request: pytest.FixtureRequest) -> tuple[str, bool]:
    database, direct = request.param
    url: str = request.getfixturevalue(f"{database}_database_url")
    return url, direct


@pytest.fixture
async def setup(rows_database: tuple[str, bool]) -> AsyncIterator[Setup]:
    url, direct = rows_database
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    pool = LazyPool(asyncpg_dsn(url), max_size=2) if direct else None
    try:
        yield Setup(sessions, TaskRows(sessions, pool))
    finally:
        if pool is not None:
            await pool.aclose()
        await engine.dispose()


async def a_task_with_every_column_set(sessions: async_sessionmaker[AsyncSession]) -> Task:
    task = await make_task(sessions, prompt="a lighthouse — ünïcode")
    now = utcnow()
    async with sessions.begin() as session:
        await session.execute(
            update(Task)
            .where(Task.id == task.id)
            .values(
                metadata_={"team": "design", "nested": {"n": [1, 2]}},
                image_urls=["https://example.com/a.png"],
                result_urls=["https://files.example.com/r.png"],
                provider_task_id="task-unified-1",
                submitted_at=now - timedelta(seconds=3),
                final_claimed_at=now,
                credits=1.25,
                notify_url="https://hooks.example.com/x",
            )
        )
    return task


async def test_a_task_reads_as_the_orm_loads_it(setup: Setup) -> None:
    task = await a_task_with_every_column_set(setup.sessions)
    async with setup.sessions() as session:
        loaded = await repository.get(session, task.id)
    assert loaded is not None

    found = await setup.rows.read(task.id, HAS_REFERENCES)

    assert found is not None
    read, flags = found
    assert flags == (False,)
    assert {key: getattr(read, key) for key in ATTRIBUTES} == {
        key: getattr(loaded, key) for key in ATTRIBUTES
    }
    assert read.created_at.tzinfo is not None
    assert inspect(read).detached  # as a task read in a session that has ended


async def test_a_missing_task_is_none(setup: Setup) -> None:
    assert await setup.rows.get("no-such-task") is None


async def test_the_mark_matches_only_the_expected_state(setup: Setup) -> None:
    task = await make_task(setup.sessions)
    now = utcnow()
    values = {"submit_state": SubmitState.IN_FLIGHT, "submit_attempts": 1, "updated_at": now}

    stale = await setup.rows.update_fields(
        task.id, values, status=TaskStatus.QUEUED.value, submit_state=SubmitState.RETRY
    )
    marked = await setup.rows.update_fields(
        task.id, values, status=TaskStatus.QUEUED.value, submit_state=SubmitState.NONE
    )

    assert (stale, marked) == (False, True)
    read = await setup.rows.get(task.id)
    assert read is not None
    assert (read.submit_state, read.submit_attempts, read.updated_at) == (
        SubmitState.IN_FLIGHT,
        1,
        now,
    )


async def test_a_task_read_here_moves_on_in_a_session(setup: Setup) -> None:
    task = await make_task(setup.sessions)
    read = await setup.rows.get(task.id)
    assert read is not None
    news = ProviderNews(
        ProviderTask(
            id="task-unified-2",
            status=ProviderStatus.PROCESSING,
            raw_status="processing",
            progress=40,
        ),
        confirmed=True,
    )

    async with setup.sessions() as session:
        decision = await service.apply_event(session, read, news, now=utcnow(), source="test")
        await session.commit()

    assert decision.changed
    async with setup.sessions() as session:
        stored = await repository.get(session, task.id)
    assert stored is not None
    assert (stored.status, stored.progress) == (TaskStatus.PROCESSING.value, 40)
