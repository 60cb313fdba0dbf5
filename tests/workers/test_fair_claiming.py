"""Fair claiming: callers with backlogs take turns, the caller holding the fewest slots goes
first, and a worker keeps notify jobs under their share of its slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import create_engine, create_sessionmaker
from app.tasks.models import Task
from app.workers import repository
from app.workers.models import Job, JobKind
from app.workers.outcomes import Done, Outcome
from app.workers.runner import Worker
from tests.support.rows import make_task
from tests.support.waiting import eventually


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


async def backlog(
    sessions: async_sessionmaker[AsyncSession], caller: str, count: int, *, minutes_ago: int
) -> list[str]:
    """`count` tasks of `caller` whose submit jobs fell due `minutes_ago` (oldest first)."""
    ids = []
    for index in range(count):
        task = await make_task(sessions, prompt=f"{caller} {index}", caller=caller)
        due = utcnow() - timedelta(minutes=minutes_ago) + timedelta(seconds=index)
        async with sessions.begin() as session:
            await session.execute(update(Job).where(Job.task_id == task.id).values(run_at=due))
        ids.append(task.id)
    return ids


async def callers_of(sessions: async_sessionmaker[AsyncSession], jobs: list[Job]) -> list[str]:
    async with sessions() as session:
        by_task = dict((await session.execute(select(Task.id, Task.caller))).all())
    return [by_task[job.task_id] for job in jobs]


async def claim_one(sessions: async_sessionmaker[AsyncSession], worker: str) -> list[Job]:
    async with sessions.begin() as session:
        return await repository.claim(
            session,
            worker=worker,
            kinds=[JobKind.SUBMIT],
            now=utcnow(),
            lease=timedelta(minutes=5),
            limit=1,
        )


async def test_callers_with_backlogs_take_turns_one_claim_at_a_time(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # alpha's 6 jobs are all older than beta's 3: first-come would hand alpha 6 slots first.
    alpha = await backlog(sessions, "alpha", 6, minutes_ago=60)
    beta = await backlog(sessions, "beta", 3, minutes_ago=10)

    order = []
    for index in range(9):
        [job] = await claim_one(sessions, f"w{index}")  # each worker holds one job
        order.append(job)

    assert await callers_of(sessions, order) == [
        "alpha", "beta", "alpha", "beta", "alpha", "beta", "alpha", "alpha", "alpha",
    ]  # fmt: skip
    # Within a caller, oldest first.
    assert [job.task_id for job in order if job.task_id in alpha] == alpha
    assert [job.task_id for job in order if job.task_id in beta] == beta


async def test_one_claim_of_several_jobs_interleaves_callers(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await backlog(sessions, "alpha", 5, minutes_ago=60)
    await backlog(sessions, "beta", 2, minutes_ago=10)
    await backlog(sessions, "gamma", 1, minutes_ago=5)

    async with sessions.begin() as session:
        jobs = await repository.claim(
            session,
            worker="w",
            kinds=[JobKind.SUBMIT],
            now=utcnow(),
            lease=timedelta(minutes=5),
            limit=6,
        )

    assert await callers_of(sessions, jobs) == ["alpha", "beta", "gamma", "alpha", "beta", "alpha"]


async def test_a_caller_already_holding_slots_waits_for_one_holding_none(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await backlog(sessions, "alpha", 6, minutes_ago=60)
    for index in range(3):  # alpha holds three slots (on any replica)
        await claim_one(sessions, f"busy{index}")
    await backlog(sessions, "beta", 3, minutes_ago=1)

    order = [(await claim_one(sessions, f"w{index}"))[0] for index in range(6)]

    # beta has turns 1, 2, 3; alpha's remaining jobs have turns 4, 5, 6.
    assert await callers_of(sessions, order) == ["beta"] * 3 + ["alpha"] * 3


async def test_an_expired_lease_does_not_count_as_a_held_slot(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await backlog(sessions, "alpha", 3, minutes_ago=60)
    await claim_one(sessions, "gone")
    async with sessions.begin() as session:  # its worker died long ago
        await session.execute(
            update(Job)
            .where(Job.lease_owner == "gone")
            .values(lease_expires_at=utcnow() - timedelta(minutes=1))
        )
    await backlog(sessions, "beta", 1, minutes_ago=1)

    [first] = await claim_one(sessions, "w")

    # alpha holds nothing alive: its oldest job (the abandoned one) comes first by age.
    assert await callers_of(sessions, [first]) == ["alpha"]
    assert first.lease_owner == "w"


async def test_concurrent_fair_claimers_never_share_a_job(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await backlog(sessions, "alpha", 20, minutes_ago=60)
    await backlog(sessions, "beta", 10, minutes_ago=30)
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

    await asyncio.gather(*(claimer(f"w{i}") for i in range(5)))

    assert len(claimed) == 30
    assert len(set(claimed)) == 30


async def test_notify_jobs_hold_at_most_their_share_of_the_slots(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Four slots, notify capped at two: with notifications that hang and submissions waiting,
    two notify jobs run, and the submissions get the other slots."""
    notify_tasks = await backlog(sessions, "alpha", 6, minutes_ago=60)
    now = utcnow() - timedelta(minutes=60)
    async with sessions.begin() as session:
        for task_id in notify_tasks:
            await repository.enqueue(session, JobKind.NOTIFY, task_id, now)
        await session.execute(update(Job).where(Job.kind == JobKind.SUBMIT).values(state="done"))
    await backlog(sessions, "alpha", 4, minutes_ago=1)  # submissions, all younger
    hang = asyncio.Event()
    notifying: set[str] = set()
    submitted: set[str] = set()
    active = most_active = 0

    async def notify(job: Job) -> Outcome:
        nonlocal active, most_active
        notifying.add(job.task_id)
        active += 1
        most_active = max(most_active, active)
        await hang.wait()
        active -= 1
        return Done()

    async def submit(job: Job) -> Outcome:
        submitted.add(job.task_id)
        return Done()

    worker = Worker(
        sessions,
        {JobKind.NOTIFY: notify, JobKind.SUBMIT: submit},
        concurrency=4,
        idle_wait=0.05,
        grace=0.1,
        caps={JobKind.NOTIFY: 2},
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: asyncio.sleep(0, len(submitted)), lambda n: n == 4)
        assert len(notifying) == 2
        hang.set()
        await eventually(lambda: asyncio.sleep(0, len(notifying)), lambda n: n == 6)
    finally:
        hang.set()
        stop.set()
        await running
    assert most_active == 2
