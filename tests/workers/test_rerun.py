"""A job enqueued again while a worker runs it runs once more, whatever the running one returns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import create_engine, create_sessionmaker
from app.workers import repository
from app.workers.models import Job, JobKind, JobState
from app.workers.outcomes import Done, Outcome, RetryAt
from tests.support.rows import make_task


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def claim(sessions: async_sessionmaker[AsyncSession]) -> list[Job]:
    async with sessions.begin() as session:
        return await repository.claim(
            session,
            worker="w1",
            kinds=[JobKind.SUBMIT],
            now=utcnow(),
            lease=timedelta(minutes=1),
            limit=5,
        )


async def finish(sessions: async_sessionmaker[AsyncSession], job: Job, outcome: Outcome) -> None:
    async with sessions.begin() as session:
        assert await repository.finish(session, job.id, worker="w1", outcome=outcome, now=utcnow())


async def the_job(sessions: async_sessionmaker[AsyncSession]) -> Job:
    async with sessions() as session:
        return (await session.scalars(select(Job))).one()


OUTCOMES = [
    pytest.param(Done(), id="done"),
    pytest.param(RetryAt(utcnow() + timedelta(hours=1), "later"), id="retry-later"),
]


@pytest.mark.parametrize("outcome", OUTCOMES)
async def test_enqueued_while_running_the_job_is_due_again_at_once(
    sessions: async_sessionmaker[AsyncSession], outcome: Outcome
) -> None:
    task = await make_task(sessions)
    [running] = await claim(sessions)
    async with sessions.begin() as session:
        await repository.enqueue(session, JobKind.SUBMIT, task.id, utcnow())

    await finish(sessions, running, outcome)

    job = await the_job(sessions)
    assert (job.state, job.rerun, job.finished_at) == (JobState.QUEUED, False, None)
    assert job.run_at <= utcnow()
    [again] = await claim(sessions)
    assert again.id == running.id


@pytest.mark.parametrize("outcome", OUTCOMES)
async def test_a_job_nobody_asked_for_again_ends_as_its_outcome_says(
    sessions: async_sessionmaker[AsyncSession], outcome: Outcome
) -> None:
    await make_task(sessions)
    [running] = await claim(sessions)

    await finish(sessions, running, outcome)

    job = await the_job(sessions)
    expected = {Done: JobState.DONE, RetryAt: JobState.QUEUED}
    assert job.state == expected[type(outcome)]
    assert job.rerun is False
    if isinstance(outcome, RetryAt):
        assert job.run_at == outcome.when
        assert await claim(sessions) == []
    else:
        assert job.finished_at is not None


async def test_enqueueing_an_idle_job_only_brings_it_forward(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    task = await make_task(sessions)
    async with sessions.begin() as session:
        await repository.enqueue(session, JobKind.SUBMIT, task.id, utcnow() + timedelta(hours=1))

    job = await the_job(sessions)
    assert job.rerun is False
