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
from app.workers import repository, signals
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
    """One cycle: (the ids whose outcomes were recorded as still held, the jobs leased)."""
    told: list[set[int]] = []
    jobs = await queue.cycle(
        outcomes or [],
        recorded=told.append,
        worker=worker,
        groups=[group],
        total=options.get("total", group.limit),
        now=options.get("now", utcnow()),
        lease=options.get("lease", LEASE),
    )
    assert len(told) == 1  # told once
    return told[0], jobs


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


def fail_the_claim_after_outcomes(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> list[int]:
    """Make the first claim that follows a record of outcomes raise `error`; the list counts
    the claims so failed."""
    failed: list[int] = []
    recorded_now = False
    real_finish = repository.finish_many_with
    real_claim = repository.claim_with

    async def finish(*args: Any, **kwargs: Any) -> set[int]:
        nonlocal recorded_now
        kept = await real_finish(*args, **kwargs)
        recorded_now = recorded_now or bool(args[2])  # args: run, statements, outcomes
        return kept

    async def claim(*args: Any, **kwargs: Any) -> list[Job]:
        nonlocal recorded_now
        if recorded_now and not failed:
            failed.append(1)
            raise error
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(repository, "finish_many_with", finish)
    monkeypatch.setattr(repository, "claim_with", claim)
    return failed


async def test_a_claim_that_fails_after_the_outcomes_records_each_once(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await make_task(setup.sessions)
    failed = fail_the_claim_after_outcomes(monkeypatch, ConnectionError("the database went away"))

    async def handler(_job: Job) -> Outcome:
        # Work due at once enqueued by the handler: the cycle that records it claims next.
        signals.note_enqueued(utcnow())
        return Done()

    worker = Worker(
        setup.sessions, {JobKind.SUBMIT: handler}, idle_wait=0.05, queue=setup.make_queue()
    )
    with caplog.at_level(logging.WARNING, logger="app.workers.runner"):
        await run_worker_until(worker, job_in(setup.sessions, JobState.DONE), "the job done")

    assert failed == [1]
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


async def test_a_closed_pool_is_not_opened_again(pg_database_url: str) -> None:
    pool = LazyPool(asyncpg_dsn(pg_database_url), max_size=1)
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT 1") == 1
    await pool.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        async with pool.acquire():
            pass


async def test_a_claim_cancelled_after_the_outcomes_never_records_them_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await make_task(setup.sessions)
    failed = fail_the_claim_after_outcomes(monkeypatch, asyncio.CancelledError())

    async def handler(job: Job) -> Outcome:
        async with setup.sessions.begin() as session:  # enqueued again while it ran
            await session.execute(update(Job).where(Job.id == job.id).values(rerun=True))
        return Done()

    worker = Worker(
        setup.sessions, {JobKind.SUBMIT: handler}, idle_wait=0.05, queue=setup.make_queue()
    )
    with (
        caplog.at_level(logging.WARNING, logger="app.workers.runner"),
        pytest.raises(asyncio.CancelledError),
    ):
        await worker.run(asyncio.Event())

    assert failed == [1]
    [job] = await all_jobs(setup.sessions)
    # Recorded once: due again for its rerun, leased by no one (the drain did not finish it).
    assert (job.state, job.lease_owner, job.attempts) == (JobState.QUEUED, None, 1)
    assert "lease was lost" not in caplog.text
