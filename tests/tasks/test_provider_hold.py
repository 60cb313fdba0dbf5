"""A 429 to a create holds the creates of every replica (the hold is in the database), and
when it lifts the backlog is submitted, every task once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from app.core.clock import utcnow
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.provider.simulator.config import SimulatorConfig, SimulatorFaults
from app.runtime import Runtime
from app.tasks.provider_hold import CREATE, HoldWatch, ProviderHold, hold
from app.workers.models import Job, JobKind, JobState
from tests.support.stack import Stack, running_stack
from tests.support.waiting import eventually


async def rejected_429(stack: Stack) -> int:
    stats: dict[str, Any] = (await stack.sim.get("/_sim/stats")).json()
    return int(stats["creates_rejected_429"])


async def submit_jobs(stack: Stack) -> list[Job]:
    async with stack.gateway.sessions() as session:
        query = select(Job).where(Job.kind == JobKind.SUBMIT, Job.state == JobState.QUEUED)
        return list((await session.scalars(query)).all())


async def the_hold(stack: Stack) -> ProviderHold | None:
    async with stack.gateway.sessions() as session:
        return await session.get(ProviderHold, CREATE, populate_existing=True)


async def test_a_429_holds_the_creates_of_every_replica_until_it_lifts(
    database_url: str,
) -> None:
    config = SimulatorConfig(duration_seconds=0.2, faults=SimulatorFaults(create_429_rate=1.0))
    async with running_stack(database_url, config, worker_concurrency=2) as stack:
        # A second worker replica on the same database and provider.
        settings: Settings = stack.gateway.app.state.settings
        second = Runtime.open(settings)
        stop = asyncio.Event()
        replica = asyncio.create_task(second.run_workers(second.build_worker(), stop))
        try:
            started = utcnow()
            created = [await stack.create({"prompt": f"p{index}"}) for index in range(8)]

            hold = await eventually(lambda: the_hold(stack), lambda row: row is not None)
            assert hold is not None
            # No Retry-After from the simulator: the configured wait (a minute by default).
            assert hold.not_before >= started + timedelta(seconds=60) - timedelta(seconds=1)
            assert "HTTP 429" in hold.reason
            # Every submit job, on either replica, now waits out the provider's minute. (Not
            # `>= hold.not_before` as read above: a create refused a moment later moves the
            # hold later, past the run_at a job already took from the earlier hold.)
            wait = settings.provider_rate_limit_wait_seconds
            jobs = await eventually(
                lambda: submit_jobs(stack),
                lambda jobs: (
                    len(jobs) == 8
                    and all(
                        job.run_at >= started + wait and job.lease_owner is None for job in jobs
                    )
                ),
            )
            assert {job.task_id for job in jobs} == {task["id"] for task in created}
            # Only creates already under way when the first 429 came were refused: at most one
            # per slot of the two replicas (2 + 2), not one series of retries per task.
            refused = await rejected_429(stack)
            assert 1 <= refused <= 4
            for task in created:
                assert (await stack.task(task["id"]))["status"] == "queued"

            # The provider recovers and the hold lifts (brought forward here rather than waited
            # for): the backlog is submitted, each task exactly once.
            await stack.set_faults(create_429_rate=0.0)
            async with stack.gateway.sessions.begin() as session:
                past = utcnow() - timedelta(seconds=1)
                await session.execute(update(ProviderHold).values(not_before=past))
                await session.execute(
                    update(Job).where(Job.kind == JobKind.SUBMIT).values(run_at=past)
                )
            stack.gateway.app.state.wake_workers()
            for task in created:
                await stack.wait_for(
                    task["id"], lambda t: t["status"] in ("pending", "processing", "succeeded")
                )
            assert len(await stack.sim_tasks()) == 8
            assert await rejected_429(stack) == refused
        finally:
            stop.set()
            await replica
            await second.close()


async def test_a_process_reads_a_missing_hold_at_most_once_a_second(database_url: str) -> None:
    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    clock = FakeClock()
    watch = HoldWatch(CREATE, recheck=1.0, clock=clock)
    now = utcnow()
    until = now + timedelta(minutes=1)
    try:
        async with sessions() as session:
            assert await watch.active_until(session, now) is None
            # Another replica records a hold: this process sees it once its clear read is a
            # second old, not before.
            await hold(session, CREATE, until, "HTTP 429", now)
            await session.commit()
            assert await watch.active_until(session, now) is None
            clock.seconds += 1.0
            assert await watch.active_until(session, now) == until
            # A hold found is read again every time: lifted, it is gone at once.
            await session.execute(update(ProviderHold).values(not_before=now))
            await session.commit()
            assert await watch.active_until(session, now) is None
            # A hold this process records is seen at once (it forgets its clear read).
            await hold(session, CREATE, until, "HTTP 429", now)
            await session.commit()
            watch.forget()
            assert await watch.active_until(session, now) == until
    finally:
        await engine.dispose()


class FakeClock:
    def __init__(self) -> None:
        self.seconds = 100.0

    def __call__(self) -> float:
        return self.seconds
