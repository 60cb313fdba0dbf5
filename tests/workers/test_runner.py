"""Claiming with leases, take-over of expired leases, outcomes, draining."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import create_engine, create_sessionmaker
from app.core.retry import RetryStrategy
from app.workers import repository, signals
from app.workers.models import Job, JobKind, JobState
from app.workers.outcomes import Done, Outcome, RetryAt
from app.workers.queues import SessionJobQueue
from app.workers.runner import Worker
from tests.support.rows import make_task
from tests.support.waiting import until


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


async def all_jobs(sessions: async_sessionmaker[AsyncSession]) -> list[Job]:
    async with sessions() as session:
        return list((await session.scalars(select(Job).order_by(Job.id))).all())


async def test_concurrent_claimers_never_share_a_job(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for index in range(40):
        await make_task(sessions, prompt=f"p{index}")
    claimed: list[int] = []

    async def claimer(name: str) -> None:
        while True:
            async with sessions.begin() as session:
                jobs = await repository.claim(
                    session,
                    worker=name,
                    kinds=[JobKind.SUBMIT],
                    now=utcnow(),
                    lease=timedelta(minutes=5),
                    limit=3,
                )
            if not jobs:
                return
            claimed.extend(job.id for job in jobs)
            await asyncio.sleep(0)

    await asyncio.gather(*(claimer(f"w{i}") for i in range(6)))

    assert len(claimed) == 40
    assert len(set(claimed)) == 40
    assert all(job.attempts == 1 for job in await all_jobs(sessions))


async def test_an_expired_lease_is_taken_over_and_the_old_holder_loses_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await make_task(sessions)
    now = utcnow()
    async with sessions.begin() as session:
        [job] = await repository.claim(
            session,
            worker="a",
            kinds=[JobKind.SUBMIT],
            now=now,
            lease=timedelta(seconds=5),
            limit=1,
        )
    async with sessions.begin() as session:
        during = await repository.claim(
            session,
            worker="b",
            kinds=[JobKind.SUBMIT],
            now=now + timedelta(seconds=4),
            lease=timedelta(seconds=5),
            limit=1,
        )
    async with sessions.begin() as session:
        after = await repository.claim(
            session,
            worker="b",
            kinds=[JobKind.SUBMIT],
            now=now + timedelta(seconds=6),
            lease=timedelta(seconds=5),
            limit=1,
        )

    assert during == []
    assert [taken.id for taken in after] == [job.id]
    assert after[0].attempts == 2
    async with sessions.begin() as session:
        kept_by_a = await repository.finish(session, job.id, worker="a", outcome=Done(), now=now)
        kept_by_b = await repository.finish(session, job.id, worker="b", outcome=Done(), now=now)
    assert (kept_by_a, kept_by_b) == (False, True)
    [finished] = await all_jobs(sessions)
    assert finished.state == JobState.DONE
    assert finished.lease_owner is None


async def test_enqueue_twice_keeps_one_open_job_and_the_earlier_time(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    task = await make_task(sessions)
    now = utcnow()
    async with sessions.begin() as session:
        await repository.enqueue(session, JobKind.POLL, task.id, now + timedelta(minutes=5))
        await repository.enqueue(session, JobKind.POLL, task.id, now + timedelta(minutes=1))
        await repository.enqueue(session, JobKind.POLL, task.id, now + timedelta(minutes=9))

    polls = [job for job in await all_jobs(sessions) if job.kind == JobKind.POLL]
    assert len(polls) == 1
    assert polls[0].run_at == now + timedelta(minutes=1)


async def test_a_finished_job_does_not_block_a_new_one_of_the_same_kind(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    task = await make_task(sessions)
    async with sessions.begin() as session:
        await session.execute(update(Job).values(state=JobState.DONE))
        await repository.enqueue(session, JobKind.SUBMIT, task.id, utcnow())

    states = sorted(job.state for job in await all_jobs(sessions))
    assert states == [JobState.DONE, JobState.QUEUED]


async def run_worker_until(
    worker: Worker, condition: Callable[[], bool | Awaitable[bool]], what: str
) -> None:
    """Run `worker` until `condition` holds, then stop it."""
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        await until(condition, what=what, timeout=10.0, interval=0.02)
    finally:
        stop.set()
        await runner


def job_in(sessions: async_sessionmaker[AsyncSession], state: str) -> Callable[[], Awaitable[bool]]:
    """Whether the only job is in `state` (committed)."""

    async def check() -> bool:
        return [job.state for job in await all_jobs(sessions)] == [state]

    return check


async def test_worker_records_retry_then_done_and_survives_handler_errors(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await make_task(sessions)
    calls: list[int] = []

    async def handler(job: Job) -> Outcome:
        calls.append(job.attempts)
        if job.attempts == 1:
            raise RuntimeError("boom")
        if job.attempts == 2:
            return RetryAt(utcnow(), "not yet")
        return Done()

    worker = Worker(
        sessions,
        {JobKind.SUBMIT: handler},
        idle_wait=0.05,
        retry=RetryStrategy(base=timedelta(milliseconds=10)),
    )
    await run_worker_until(worker, job_in(sessions, JobState.DONE), "the job done")

    assert calls == [1, 2, 3]
    [job] = await all_jobs(sessions)
    assert job.state == JobState.DONE
    assert job.last_error == "not yet"


async def test_stopping_releases_the_leases_of_unfinished_jobs(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await make_task(sessions)
    started = asyncio.Event()

    async def handler(_job: Job) -> Outcome:
        started.set()
        await asyncio.sleep(3600)
        return Done()

    worker = Worker(sessions, {JobKind.SUBMIT: handler}, idle_wait=0.05, grace=0.1)
    await run_worker_until(worker, started.is_set, "the handler started")

    [job] = await all_jobs(sessions)
    assert job.state == JobState.QUEUED
    assert job.lease_owner is None
    assert job.lease_expires_at is None


async def test_heartbeat_keeps_the_lease_of_a_long_job(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await make_task(sessions)
    release = asyncio.Event()
    started = asyncio.Event()
    runs: list[int] = []  # the attempts the handler ran

    async def handler(job: Job) -> Outcome:
        runs.append(job.attempts)
        started.set()
        await release.wait()
        return Done()

    lease = timedelta(milliseconds=300)
    worker = Worker(sessions, {JobKind.SUBMIT: handler}, idle_wait=0.05, lease=lease)
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    await started.wait()
    [claimed] = await all_jobs(sessions)
    assert claimed.lease_expires_at is not None
    # Several lease lengths: the heartbeat has pushed the expiry that far past the first one,
    # so without it the lease would have expired by now.
    renewed_past = claimed.lease_expires_at + 3 * lease

    async def renewed() -> bool:
        [job] = await all_jobs(sessions)
        return job.lease_expires_at is not None and job.lease_expires_at >= renewed_past

    await until(renewed, what="the lease renewed three lease lengths on", interval=0.02)
    async with sessions.begin() as session:
        stolen = await repository.claim(
            session, worker="thief", kinds=[JobKind.SUBMIT], now=utcnow(), lease=lease, limit=1
        )
    release.set()
    await until(job_in(sessions, JobState.DONE), what="the job done after its release")
    stop.set()
    await runner

    assert stolen == []
    assert runs == [1]  # not taken over either, not even by its own worker
    [job] = await all_jobs(sessions)
    assert (job.state, job.attempts) == (JobState.DONE, 1)


def test_retry_delays_grow_are_capped_and_jittered() -> None:
    strategy = RetryStrategy(base=timedelta(seconds=1), cap=timedelta(seconds=60), jitter=0.5)
    rng = random.Random(7)

    delays = [strategy.delay(attempt, rng).total_seconds() for attempt in range(1, 12)]

    for attempt, delay in enumerate(delays, start=1):
        full = min(2 ** (attempt - 1), 60)
        assert full * 0.5 <= delay <= full
    assert max(delays) <= 60
    no_jitter = RetryStrategy(jitter=0.0)
    assert [no_jitter.delay(n).total_seconds() for n in (1, 2, 3, 4)] == [1, 2, 4, 8]


class CountingQueue(SessionJobQueue):
    """The sessions' queue, counting the cycles that claimed (were asked for jobs)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions)
        self.claims = 0
        self.cycles = 0

    async def cycle(self, outcomes: Any, **kwargs: Any) -> list[Job]:
        self.cycles += 1
        if kwargs["groups"] and kwargs.get("claim", True):
            self.claims += 1
        return await super().cycle(outcomes, **kwargs)


async def test_a_claim_that_got_fewer_jobs_than_it_asked_for_is_not_repeated_at_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # It found every due job: asking again before a wake-up or the idle tick finds none (a round
    # trip per job, and a query of the whole due set, for nothing).
    await make_task(sessions)
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(job: Job) -> Outcome:
        started.set()
        await release.wait()
        return Done()

    queue = CountingQueue(sessions)
    worker = Worker(sessions, {JobKind.SUBMIT: handler}, concurrency=4, idle_wait=30, queue=queue)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.3)
        claims_while_running = queue.claims
        worker.wake()  # an enqueue elsewhere in the process still claims at once
        await until(lambda: queue.claims > claims_while_running, what="a claim on wake-up")
    finally:
        release.set()
        stop.set()
        await running

    assert claims_while_running == 1


async def test_recording_a_job_that_enqueued_nothing_due_asks_for_no_more(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A submit job enqueues its poll for later: the cycle that records it claims nothing.
    task = await make_task(sessions)

    async def handler(job: Job) -> Outcome:
        async with sessions.begin() as session:
            later = utcnow() + timedelta(minutes=5)
            await repository.enqueue(session, JobKind.POLL, task.id, later)
        return Done()

    queue = CountingQueue(sessions)
    worker = Worker(sessions, {JobKind.SUBMIT: handler}, idle_wait=30, queue=queue)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: queue.cycles >= 2, what="the job recorded")
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await running

    assert (queue.cycles, queue.claims) == (2, 1)  # the claim, then the record alone


async def test_a_job_whose_handler_enqueued_due_work_is_followed_by_a_claim(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A poll job enqueues the archive, due at once: claimed when the poll is recorded, not at
    # the idle tick (30 s here).
    task = await make_task(sessions)
    ran: list[str] = []

    async def submit(job: Job) -> Outcome:
        async with sessions.begin() as session:
            await repository.enqueue(session, JobKind.POLL, task.id, utcnow())
        ran.append(job.kind)
        return Done()

    async def poll(job: Job) -> Outcome:
        ran.append(job.kind)
        return Done()

    worker = Worker(sessions, {JobKind.SUBMIT: submit, JobKind.POLL: poll}, idle_wait=30)
    await run_worker_until(worker, lambda: len(ran) == 2, "the poll job run")

    assert ran == [JobKind.SUBMIT, JobKind.POLL]


async def test_a_job_enqueued_again_while_it_ran_is_claimed_when_it_is_recorded(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # By another process (no wake-up here): the record of the first run says it is due again.
    await make_task(sessions)
    runs: list[int] = []

    async def handler(job: Job) -> Outcome:
        runs.append(job.id)
        if len(runs) == 1:
            async with sessions.begin() as session:
                await session.execute(update(Job).where(Job.id == job.id).values(rerun=True))
        return Done()

    worker = Worker(sessions, {JobKind.SUBMIT: handler}, idle_wait=30)
    await run_worker_until(worker, lambda: len(runs) == 2, "the second run")

    assert runs[0] == runs[1]


def test_only_work_due_at_once_counts() -> None:
    seen = signals.watch()
    signals.note_enqueued(utcnow() + timedelta(seconds=5))
    later = seen.due
    signals.note_enqueued(utcnow())

    assert (later, seen.due) == (False, True)


async def test_slots_of_a_capped_kind_refill_as_its_jobs_finish(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Eight notifications due, a cap of four: each that finishes makes room for the next at
    # once, not at the idle tick (30 s here), though the notify job enqueues nothing.
    # The claim asks for eight (other kinds could use the rest) and gets the four of the cap.
    for index in range(8):
        task = await make_task(sessions, prompt=f"p{index}")
        async with sessions.begin() as session:
            await repository.enqueue(session, JobKind.NOTIFY, task.id, utcnow())
    async with sessions.begin() as session:
        await session.execute(
            update(Job).where(Job.kind == JobKind.SUBMIT).values(state=JobState.DONE)
        )
    ran: list[int] = []

    async def notify(job: Job) -> Outcome:
        await asyncio.sleep(0.1)
        ran.append(job.id)
        return Done()

    async def submit(job: Job) -> Outcome:
        return Done()

    worker = Worker(
        sessions,
        {JobKind.NOTIFY: notify, JobKind.SUBMIT: submit},
        concurrency=8,
        caps={JobKind.NOTIFY: 4},
        idle_wait=30,
    )
    await run_worker_until(worker, lambda: len(ran) == 8, "every notification sent")

    assert len(set(ran)) == 8


async def test_the_idle_tick_comes_however_often_running_jobs_finish(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Jobs finishing 0.3 s apart (under the 0.5 s idle wait) must not keep pushing the tick
    # back: a job that falls due meanwhile (as a retry or another process's job would) is
    # claimed at the tick, before the last of them finishes.
    for index in range(5):
        await make_task(sessions, prompt=f"slow{index}")
    later = await make_task(sessions, prompt="later")
    async with sessions.begin() as session:
        await repository.enqueue(session, JobKind.POLL, later.id, utcnow() + timedelta(seconds=0.2))
    events: list[str] = []
    delays = iter(0.3 * (n + 1) for n in range(5))

    async def slow(job: Job) -> Outcome:
        await asyncio.sleep(next(delays))
        events.append("slow")
        return Done()

    async def poll(job: Job) -> Outcome:
        events.append("poll")
        return Done()

    worker = Worker(
        sessions, {JobKind.SUBMIT: slow, JobKind.POLL: poll}, concurrency=8, idle_wait=0.5
    )
    await run_worker_until(worker, lambda: len(events) == 6, "every job run")

    assert events.index("poll") < 5  # before the last slow job finished (at 1.5 s)


async def test_a_worker_nothing_wakes_looks_for_due_jobs_after_each_finish(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A `worker` process: the creates and callbacks of the API processes wake it never, so each
    # job it finishes is also a claim (the signals only spare a `serve` process that claim).
    task = await make_task(sessions)

    async def handler(job: Job) -> Outcome:
        async with sessions.begin() as session:
            later = utcnow() + timedelta(minutes=5)
            await repository.enqueue(session, JobKind.POLL, task.id, later)
        return Done()

    queue = CountingQueue(sessions)
    worker = Worker(
        sessions, {JobKind.SUBMIT: handler}, idle_wait=30, queue=queue, claim_on_finish=True
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: queue.cycles >= 2, what="the job recorded")
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await running

    assert (queue.cycles, queue.claims) == (2, 2)
