"""Stopping a worker: running jobs finish within the grace period with their leases kept;
jobs past it are given back at once without counting an attempt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import create_engine, create_sessionmaker
from app.workers import repository
from app.workers.models import Job, JobKind, JobState
from app.workers.outcomes import Done, Outcome
from app.workers.runner import Worker
from tests.support.rows import make_task


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def the_job(sessions: async_sessionmaker[AsyncSession]) -> Job:
    async with sessions() as session:
        return (await session.scalars(select(Job))).one()


async def test_a_job_running_past_its_lease_during_the_drain_keeps_it_and_finishes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await make_task(sessions)
    started, stopping, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    stolen: list[Job] = []

    async def handler(_job: Job) -> Outcome:
        started.set()
        await release.wait()
        return Done()

    lease = timedelta(milliseconds=300)
    worker = Worker(sessions, {JobKind.SUBMIT: handler}, idle_wait=0.05, lease=lease, grace=30)
    runner = asyncio.create_task(worker.run(stopping))
    await started.wait()
    stopping.set()

    async def try_to_steal() -> None:
        async with sessions.begin() as session:
            stolen.extend(
                await repository.claim(
                    session,
                    worker="thief",
                    kinds=[JobKind.SUBMIT],
                    now=utcnow(),
                    lease=lease,
                    limit=1,
                )
            )

    for _ in range(5):  # several lease lengths into the drain
        await asyncio.sleep(lease.total_seconds())
        await try_to_steal()
    release.set()
    await runner

    assert stolen == []
    assert (await the_job(sessions)).state == JobState.DONE


async def test_a_job_given_back_at_shutdown_does_not_count_an_attempt(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await make_task(sessions)
    started = asyncio.Event()

    async def handler(_job: Job) -> Outcome:
        started.set()
        await asyncio.Event().wait()
        return Done()

    stopping = asyncio.Event()
    worker = Worker(sessions, {JobKind.SUBMIT: handler}, idle_wait=0.05, grace=0.1)
    runner = asyncio.create_task(worker.run(stopping))
    await started.wait()
    assert (await the_job(sessions)).attempts == 1
    stopping.set()
    await runner

    job = await the_job(sessions)
    assert (job.state, job.lease_owner, job.attempts) == (JobState.QUEUED, None, 0)
