"""The worker loop's statements on each queue: the sessions (SQLite, PostgreSQL) and the asyncpg
pool of its own (`PgJobQueue`, PostgreSQL): the same claims, fair turns, outcomes and leases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import asyncpg_dsn, create_engine, create_sessionmaker
from app.core.pg_compiled import LazyPool
from app.core.retry import RetryStrategy
from app.workers import repository
from app.workers.models import Job, JobKind, JobState
from app.workers.outcomes import Done, Outcome, RetryAt
from app.workers.pg_queue import PgJobQueue
from app.workers.queues import JobQueue, SessionJobQueue
from app.workers.runner import Worker
from tests.support.rows import make_task
from tests.workers.test_fair_claiming import backlog, callers_of
from tests.workers.test_runner import all_jobs, job_in, run_worker_until

LEASE = timedelta(minutes=5)
SUBMIT = repository.KindGroup((JobKind.SUBMIT.value,), 1)


@dataclass
class Setup:
    sessions: async_sessionmaker[AsyncSession]
    make_queue: Callable[[], JobQueue]


@pytest.fixture(
    params=[("sqlite", "sessions"), ("pg", "sessions"), ("pg", "asyncpg")],
    ids=["sqlite", "postgresql-sessions", "postgresql-asyncpg"],
)
def queue_database(request: pytest.FixtureRequest) -> tuple[str, str]:
    """A fresh database, and the queue to run on it."""
    database, kind = request.param
    url: str = request.getfixturevalue(f"{database}_database_url")
    return url, kind


@pytest.fixture
async def setup(queue_database: tuple[str, str]) -> AsyncIterator[Setup]:
    url, kind = queue_database
    engine = create_engine(url)
    sessions = create_sessionmaker(engine)
    pools: list[LazyPool] = []

    def make_queue() -> JobQueue:  # each with a pool of its own, as in another process
        if kind == "sessions":
            return SessionJobQueue(sessions)
        pools.append(LazyPool(asyncpg_dsn(url), max_size=3))
        return PgJobQueue(pools[-1])

    try:
        yield Setup(sessions, make_queue)
    finally:
        for pool in pools:
            await pool.aclose()
        await engine.dispose()


async def cycle(
    queue: JobQueue,
    worker: str,
    outcomes: list[tuple[int, Outcome]] | None = None,
    group: repository.KindGroup = SUBMIT,
    **options: Any,
) -> tuple[set[int], list[Job]]:
    return await queue.cycle(
        outcomes or [],
        worker=worker,
        groups=[group],
        total=options.get("total", group.limit),
        now=options.get("now", utcnow()),
        lease=options.get("lease", LEASE),
    )


async def test_callers_take_turns_on_every_queue(setup: Setup) -> None:
    alpha = await backlog(setup.sessions, "alpha", 6, minutes_ago=60)
    beta = await backlog(setup.sessions, "beta", 3, minutes_ago=10)
    queue = setup.make_queue()

    order = []
    for index in range(9):
        _, [job] = await cycle(queue, f"w{index}")  # each worker holds one job
        order.append(job)

    assert await callers_of(setup.sessions, order) == [
        "alpha", "beta", "alpha", "beta", "alpha", "beta", "alpha", "alpha", "alpha",
    ]  # fmt: skip
    assert [job.task_id for job in order if job.task_id in alpha] == alpha
    assert [job.task_id for job in order if job.task_id in beta] == beta


async def test_one_cycle_of_several_jobs_interleaves_callers(setup: Setup) -> None:
    await backlog(setup.sessions, "alpha", 5, minutes_ago=60)
    await backlog(setup.sessions, "beta", 2, minutes_ago=10)
    await backlog(setup.sessions, "gamma", 1, minutes_ago=5)

    _, jobs = await cycle(setup.make_queue(), "w", group=repository.KindGroup(("submit",), 6))

    assert await callers_of(setup.sessions, jobs) == [
        "alpha", "beta", "gamma", "alpha", "beta", "alpha",
    ]  # fmt: skip
    assert all(job.lease_owner == "w" and job.attempts == 1 for job in jobs)


async def test_concurrent_cycles_never_share_a_job(setup: Setup) -> None:
    for index in range(40):
        await make_task(setup.sessions, prompt=f"p{index}")
    claimed: list[int] = []

    async def claimer(name: str) -> None:
        queue = setup.make_queue()
        while True:
            _, jobs = await cycle(queue, name, group=repository.KindGroup(("submit",), 3))
            if not jobs:
                return
            claimed.extend(job.id for job in jobs)
            await asyncio.sleep(0)

    await asyncio.gather(*(claimer(f"w{i}") for i in range(6)))

    assert sorted(claimed) == sorted(set(claimed))
    assert len(claimed) == 40


async def test_outcomes_done_rerun_and_retry(setup: Setup) -> None:
    for index in range(3):
        await make_task(setup.sessions, prompt=f"p{index}")
    queue = setup.make_queue()
    _, (first, second, third) = await cycle(queue, "w", group=repository.KindGroup(("submit",), 3))
    async with setup.sessions.begin() as session:  # enqueued again while it ran
        await session.execute(update(Job).where(Job.id == second.id).values(rerun=True))
    retry_at = utcnow() + timedelta(minutes=7)
    outcomes: list[tuple[int, Outcome]] = [
        (first.id, Done()),
        (second.id, Done()),
        (third.id, RetryAt(retry_at, "not yet")),
    ]

    kept, again = await cycle(queue, "w", outcomes)

    assert kept == {first.id, second.id, third.id}
    assert [job.id for job in again] == [second.id]  # due at once, in the same cycle
    assert again[0].attempts == 2
    jobs = {job.id: job for job in await all_jobs(setup.sessions)}
    assert (jobs[first.id].state, jobs[first.id].lease_owner) == (JobState.DONE, None)
    assert jobs[first.id].finished_at is not None
    assert jobs[third.id].state == JobState.QUEUED
    assert (jobs[third.id].run_at, jobs[third.id].last_error) == (retry_at, "not yet")
    assert jobs[third.id].lease_owner is None


async def test_the_outcome_of_a_lost_lease_changes_nothing(setup: Setup) -> None:
    await make_task(setup.sessions)
    queue = setup.make_queue()
    now = utcnow()
    _, [job] = await cycle(queue, "a", lease=timedelta(seconds=1), now=now)
    later = now + timedelta(seconds=5)
    _, [taken] = await cycle(queue, "b", now=later)  # a's lease expired: b takes it over

    kept, _ = await cycle(queue, "a", [(job.id, Done())], now=later)

    assert kept == set()
    [row] = await all_jobs(setup.sessions)
    assert (row.state, row.lease_owner, row.attempts) == (JobState.QUEUED, "b", 2)
    assert taken.id == job.id


async def test_leases_are_extended_and_released_with_the_last_outcomes(setup: Setup) -> None:
    for index in range(2):
        await make_task(setup.sessions, prompt=f"p{index}")
    queue = setup.make_queue()
    _, (done, unfinished) = await cycle(queue, "w", group=repository.KindGroup(("submit",), 2))
    until = utcnow() + timedelta(hours=1)

    await queue.extend([done.id, unfinished.id], worker="w", until=until)
    extended = {job.id: job.lease_expires_at for job in await all_jobs(setup.sessions)}
    kept = await queue.finish_and_release(
        [(done.id, Done())], [unfinished.id], worker="w", now=utcnow()
    )

    assert extended == {done.id: until, unfinished.id: until}
    assert kept == {done.id}
    jobs = {job.id: job for job in await all_jobs(setup.sessions)}
    assert jobs[done.id].state == JobState.DONE
    released = jobs[unfinished.id]
    assert (released.state, released.lease_owner, released.lease_expires_at) == (
        JobState.QUEUED,
        None,
        None,
    )
    assert released.attempts == 0  # the interrupted run does not count


async def test_a_worker_on_each_queue_runs_a_job_through_errors_and_retries(setup: Setup) -> None:
    await make_task(setup.sessions)
    calls: list[int] = []

    async def handler(job: Job) -> Outcome:
        calls.append(job.attempts)
        if job.attempts == 1:
            raise RuntimeError("boom")
        if job.attempts == 2:
            return RetryAt(utcnow(), "not yet")
        return Done()

    worker = Worker(
        setup.sessions,
        {JobKind.SUBMIT: handler},
        idle_wait=0.05,
        retry=RetryStrategy(base=timedelta(milliseconds=10)),
        queue=setup.make_queue(),
    )
    await run_worker_until(worker, job_in(setup.sessions, JobState.DONE), "the job done")

    assert calls == [1, 2, 3]
    [job] = await all_jobs(setup.sessions)
    assert (job.state, job.last_error) == (JobState.DONE, "not yet")


async def test_a_claim_that_fails_after_the_outcomes_records_each_once(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await make_task(setup.sessions)
    claims = 0
    real_claim = repository.claim_with

    async def failing_second_claim(*args: Any, **kwargs: Any) -> list[Job]:
        nonlocal claims
        claims += 1
        if claims == 2:  # the cycle that records the job's outcome
            raise ConnectionError("the database went away")
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(repository, "claim_with", failing_second_claim)

    async def handler(_job: Job) -> Outcome:
        return Done()

    worker = Worker(
        setup.sessions, {JobKind.SUBMIT: handler}, idle_wait=0.05, queue=setup.make_queue()
    )
    with caplog.at_level(logging.WARNING, logger="app.workers.runner"):
        await run_worker_until(worker, job_in(setup.sessions, JobState.DONE), "the job done")

    assert claims >= 2
    [job] = await all_jobs(setup.sessions)
    assert (job.state, job.attempts) == (JobState.DONE, 1)
    assert "claiming jobs failed" in caplog.text
    assert "lease was lost" not in caplog.text  # the recorded outcome was not recorded again


async def test_jobs_read_by_each_queue_are_the_rows(setup: Setup) -> None:
    task = await make_task(setup.sessions)
    now = utcnow()
    _, [job] = await cycle(setup.make_queue(), "w", now=now)

    async with setup.sessions() as session:
        row = (await session.scalars(select(Job).where(Job.task_id == task.id))).one()
    assert {c: getattr(job, c) for c in _COLUMNS} == {c: getattr(row, c) for c in _COLUMNS}
    assert job.lease_expires_at == now + LEASE
    assert job.updated_at == now


_COLUMNS = [column.key for column in Job.__table__.columns]
