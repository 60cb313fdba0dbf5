"""PostgreSQL writes a transition, its timeline lines and its jobs in one statement
(app/tasks/pg_transition.py): all or nothing, the lines in order, the jobs only when the guarded
update matched, and news that came in meanwhile decided again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import create_engine, create_sessionmaker
from app.provider.types import ProviderStatus, ProviderTask
from app.tasks import event_repository, pg_transition, repository, service
from app.tasks.events import EventKind, TaskEvent
from app.tasks.models import Task
from app.tasks.states import ProviderNews, TaskStatus
from app.workers.models import Job, JobKind, JobState
from tests.support.rows import make_task


@pytest.fixture
async def sessions(pg_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(pg_database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


def completed(progress: int = 100) -> ProviderNews:
    task = ProviderTask(
        id="task-unified-1",
        status=ProviderStatus.COMPLETED,
        raw_status="completed",
        progress=progress,
        results=("https://files.example.com/a.png",),
    )
    return ProviderNews(task, confirmed=True)


async def submitted(sessions: async_sessionmaker[AsyncSession]) -> Task:
    task = await make_task(sessions)
    async with sessions.begin() as session:
        await session.execute(
            update(Task)
            .where(Task.id == task.id)
            .values(status=TaskStatus.PENDING.value, provider_task_id="task-unified-1")
        )
        read = await repository.get(session, task.id)
    assert read is not None
    return read


async def timeline(sessions: async_sessionmaker[AsyncSession], task_id: str) -> list[Any]:
    async with sessions() as session:
        rows = await session.execute(
            select(TaskEvent.kind, TaskEvent.outcome, TaskEvent.to_status)
            .where(TaskEvent.task_id == task_id)
            .order_by(TaskEvent.id)
        )
        return [tuple(row) for row in rows]


async def archive_jobs(sessions: async_sessionmaker[AsyncSession], task_id: str) -> int:
    async with sessions() as session:
        found = await session.scalars(
            select(Job).where(
                Job.task_id == task_id, Job.kind == JobKind.ARCHIVE, Job.state == JobState.QUEUED
            )
        )
        return len(found.all())


async def test_a_transition_its_lines_and_its_job_are_one_statement(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    task = await submitted(sessions)
    now = utcnow()
    line = event_repository.line(
        task.id, kind=EventKind.POLL, source="poll", at=now, outcome="completed"
    )
    statements: list[str] = []

    async with sessions() as session:
        connection = await session.connection()
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(connection.sync_connection, "before_cursor_execute", listener)
        decision = await service.apply_event(
            session, task, completed(), now=now, source="poll", line=line
        )
        await session.commit()

    assert decision.changed
    assert len(statements) == 1
    assert task.status == TaskStatus.ARCHIVING.value  # the row as written, from RETURNING
    assert await timeline(sessions, task.id) == [
        (EventKind.POLL, "completed", None),
        (EventKind.TRANSITION, None, TaskStatus.ARCHIVING.value),
    ]
    assert await archive_jobs(sessions, task.id) == 1


async def test_news_that_came_in_meanwhile_is_decided_again_and_nothing_is_doubled(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    stale = await submitted(sessions)
    async with sessions() as session:  # a callback moved the task on since `stale` was read
        fresh = await repository.get(session, stale.id)
        assert fresh is not None
        await service.apply_event(session, fresh, completed(), now=utcnow(), source="callback")
        await session.commit()
    lines_before = await timeline(sessions, stale.id)

    async with sessions() as session:
        decision = await service.apply_event(
            session, stale, completed(), now=utcnow(), source="poll"
        )
        await session.commit()

    assert not decision.changed  # decided again on the row as it is: nothing to do
    assert stale.status == TaskStatus.ARCHIVING.value
    assert await timeline(sessions, stale.id) == lines_before
    assert await archive_jobs(sessions, stale.id) == 1


async def test_a_rolled_back_transition_leaves_no_line_and_no_job(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    task = await submitted(sessions)
    async with sessions() as session:
        await service.apply_event(session, task, completed(), now=utcnow(), source="poll")
        await session.rollback()

    async with sessions() as session:
        row = await repository.get(session, task.id)
    assert row is not None
    assert row.status == TaskStatus.PENDING.value
    assert await timeline(sessions, task.id) == []
    assert await archive_jobs(sessions, task.id) == 0


async def poll_jobs(sessions: async_sessionmaker[AsyncSession], task_id: str) -> list[Any]:
    async with sessions() as session:
        found = await session.scalars(
            select(Job.run_at).where(
                Job.task_id == task_id, Job.kind == JobKind.POLL, Job.state == JobState.QUEUED
            )
        )
        return list(found.all())


async def test_fields_with_a_job_write_both_when_the_row_matches_and_neither_when_not(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # The submit job's answer: the upstream id only where none is recorded, with its poll job.
    task = await make_task(sessions)
    poll_at = utcnow()
    values = {"provider_task_id": "task-unified-1", "updated_at": poll_at}

    async with sessions() as session:
        statement, parameters = pg_transition.fields_with_job(
            task.id, values, JobKind.POLL, poll_at, provider_task_id=None
        )
        first = (await (await session.connection()).execute(statement, parameters)).all()
        values = {"provider_task_id": "task-unified-2", "updated_at": utcnow()}
        statement, parameters = pg_transition.fields_with_job(
            task.id, values, JobKind.POLL, utcnow(), provider_task_id=None
        )
        second = (await (await session.connection()).execute(statement, parameters)).all()
        await session.commit()

    assert (len(first), len(second)) == (1, 0)
    async with sessions() as session:
        row = await repository.get(session, task.id)
    assert row is not None
    assert row.provider_task_id == "task-unified-1"
    assert await poll_jobs(sessions, task.id) == [poll_at]
