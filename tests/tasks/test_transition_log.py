"""A transition is logged once it is committed, never for a write that did not commit: an
operator reading the log must be able to trust that the task had each state it shows."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import create_engine, create_sessionmaker
from app.provider.simulator.config import SimulatorConfig, SimulatorFaults
from app.tasks import repository, service
from app.tasks.direct_writes import Direct
from app.tasks.states import ServiceFailure
from app.workers import repository as jobs
from app.workers.models import JobKind
from tests.support.rows import make_task
from tests.support.stack import running_stack

FAILURE = ServiceFailure("provider_timeout", "no news")


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


def transitions(caplog: pytest.LogCaptureFixture, task_id: str) -> list[tuple[str, str]]:
    return [
        (getattr(record, "from_status", ""), getattr(record, "to_status", ""))
        for record in caplog.records
        if record.getMessage() == "task transition" and getattr(record, "task_id", "") == task_id
    ]


async def test_a_transition_is_logged_after_its_commit_and_not_when_rolled_back(
    sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    task = await make_task(sessions)

    async with sessions() as session:
        row = await repository.get(session, task.id)
        assert row is not None
        await service.apply_event(session, row, FAILURE, now=utcnow(), source="test")
        await session.rollback()
    async with sessions() as session:  # closed without a commit, as by a dying worker
        row = await repository.get(session, task.id)
        assert row is not None
        await service.apply_event(session, row, FAILURE, now=utcnow(), source="test")
    assert transitions(caplog, task.id) == []

    async with sessions() as session:
        row = await repository.get(session, task.id)
        assert row is not None
        await service.apply_event(session, row, FAILURE, now=utcnow(), source="test")
        assert transitions(caplog, task.id) == []  # written, not committed yet
        await session.commit()
    assert transitions(caplog, task.id) == [("queued", "failed")]


async def test_an_accepted_create_whose_first_write_failed_logs_its_transition_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The write of the provider's answer fails once (a killed connection) and is written again:
    # the attempt that was rolled back must leave no 'queued -> pending' behind.
    caplog.set_level(logging.INFO)
    original = jobs.enqueue
    failed: list[str] = []

    async def failing_once(
        session: AsyncSession, kind: JobKind, task_id: str, at: datetime
    ) -> None:
        if kind == JobKind.POLL and not failed:
            failed.append(task_id)
            raise OperationalError("INSERT INTO jobs", {}, ConnectionResetError("reset"))
        await original(session, kind, task_id, at)

    real_fetch = Direct.fetch

    async def fetch_failing_once(self: Direct, statement: Any, parameters: Any) -> Any:
        # PostgreSQL writes the answer (the id with its poll job, one statement) straight on
        # asyncpg (app/tasks/direct_writes.py).
        if "v_provider_task_id" in parameters and not failed:
            failed.append(parameters["w_id"])
            raise ConnectionResetError("reset")
        return await real_fetch(self, statement, parameters)

    monkeypatch.setattr(jobs, "enqueue", failing_once)
    monkeypatch.setattr(Direct, "fetch", fetch_failing_once)
    config = SimulatorConfig(duration_seconds=0.3, faults=SimulatorFaults(callback_drop_rate=1.0))
    async with running_stack(database_url, config) as stack:
        created = await stack.create()

        task = await stack.wait_for(created["id"], lambda task: task["status"] == "succeeded")

    assert failed == [task["id"]]
    logged = transitions(caplog, task["id"])
    assert logged.count(("queued", "pending")) == 1
    assert logged[-1] == ("archiving", "succeeded")
