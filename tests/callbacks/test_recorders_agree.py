"""The PostgreSQL fast path and the ORM recorder write the same rows for the same deliveries.

The same sequences of callbacks go through the fast path (PostgreSQL), the ORM recorder on
PostgreSQL and the ORM recorder on SQLite, each on a database of its own holding the same task; then
every row of tasks, jobs, the inbox and the timeline is compared."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.callbacks import pg_recorder
from app.callbacks import service as callback_service
from app.callbacks.models import CallbackDelivery
from app.callbacks.orm_recorder import OrmRecorder
from app.callbacks.service import CallbackRecorder, CallbackService
from app.core import pg_compiled
from app.core.callback_tokens import callback_token
from app.core.db import asyncpg_dsn, create_engine, create_sessionmaker
from app.tasks.events import TaskEvent
from app.tasks.models import Task
from app.workers import repository as jobs
from app.workers.models import Job, JobKind, JobState
from app.workers.repository import RetryAt
from tests.conftest import CALLBACK_SECRET
from tests.support import databases
from tests.support.callbacks import body

pytestmark = pytest.mark.postgres

TASK_ID = "0b6f2a52-3b1e-4c38-9d7e-2f1c5b9a8e01"
NONCE = "00112233445566778899aabbccddeeff"
PROVIDER_ID = "task-unified-1757156493-agree001"
TOKEN = callback_token(CALLBACK_SECRET.encode(), TASK_ID, NONCE)
STALE_NONCE = "ffeeddccbbaa99887766554433221100"
START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
WORKER = "worker-1"


@dataclass
class Target:
    """One database and the service receiving callbacks on it."""

    sessions: async_sessionmaker[AsyncSession]
    service: CallbackService


Step = Callable[[Target], Awaitable[None]]


def deliver(content: bytes, *, nonce: str | None = NONCE) -> Step:
    """A delivery to the task's path (`nonce` None: the older path without it)."""

    async def step(target: Target) -> None:
        answer = await target.service.receive(TASK_ID, nonce, TOKEN, content)
        assert 200 <= answer.status_code < 500

    return step


def deliver_stale(content: bytes) -> Step:
    """A delivery to a path signed for another nonce of the task: refused, nothing written."""

    async def step(target: Target) -> None:
        token = callback_token(CALLBACK_SECRET.encode(), TASK_ID, STALE_NONCE)
        answer = await target.service.receive(TASK_ID, STALE_NONCE, token, content)
        assert answer.status_code == 401

    return step


def at(minutes: float) -> datetime:
    return START + timedelta(minutes=minutes)


async def worker_takes_the_poll(target: Target) -> None:
    async with target.sessions.begin() as session:
        [job] = await jobs.claim(
            session,
            worker=WORKER,
            kinds=[JobKind.POLL],
            now=at(2),
            lease=timedelta(minutes=5),
            limit=1,
        )
        assert job.task_id == TASK_ID


async def worker_retries_the_poll_later(target: Target) -> None:
    async with target.sessions.begin() as session:
        job_id = await session.scalar(select(Job.id).where(Job.kind == JobKind.POLL))
        assert job_id is not None
        outcome = RetryAt(at(30), "the provider still says processing")
        assert await jobs.finish(session, job_id, worker=WORKER, outcome=outcome, now=at(3))


SEQUENCES: dict[str, list[Step]] = {
    "new, duplicate, stale, final, stale after final": [
        deliver(body(PROVIDER_ID, "processing", 10)),
        deliver(body(PROVIDER_ID, "processing", 10)),
        deliver(body(PROVIDER_ID, "processing", 40)),
        deliver(body(PROVIDER_ID, "processing", 20)),
        deliver(body(PROVIDER_ID, "completed")),
        deliver(body(PROVIDER_ID, "completed")),
        deliver(body(PROVIDER_ID, "processing", 60)),
        deliver(b"{not json"),
        deliver(body("task-unified-1757156493-elsewhere", "completed")),
    ],
    # The confirmation a final callback asks for must survive the running poll's retry time.
    "final while a worker runs the poll": [
        deliver(body(PROVIDER_ID, "processing", 30)),
        worker_takes_the_poll,
        deliver(body(PROVIDER_ID, "completed")),
        deliver(body(PROVIDER_ID, "completed")),
        worker_retries_the_poll_later,
    ],
    "progress while a worker runs the poll": [
        worker_takes_the_poll,
        deliver(body(PROVIDER_ID, "processing", 30)),
        deliver(body(PROVIDER_ID, "failed", error={"code": "service_error", "message": "x"})),
        worker_retries_the_poll_later,
    ],
    "the older path without the nonce, the new one, another nonce's": [
        deliver(body(PROVIDER_ID, "processing", 10), nonce=None),
        deliver(body(PROVIDER_ID, "processing", 10), nonce=None),
        deliver_stale(body(PROVIDER_ID, "processing", 30)),
        deliver(body(PROVIDER_ID, "processing", 40)),
        deliver(body(PROVIDER_ID, "completed"), nonce=None),
        deliver(body(PROVIDER_ID, "completed")),
        deliver_stale(body(PROVIDER_ID, "failed", error={"code": "service_error", "message": "x"})),
        deliver(b"{not json", nonce=None),
        deliver_stale(b"{not json either"),
    ],
    "more distinct bodies than the inbox keeps": [
        *(deliver(body(PROVIDER_ID, "processing", p)) for p in range(1, 21)),
        deliver(body(PROVIDER_ID, "processing", 2)),
        deliver(body(PROVIDER_ID, "completed")),
        deliver(body(PROVIDER_ID, "completed")),
    ],
}


async def seed(sessions: async_sessionmaker[AsyncSession]) -> None:
    """The same accepted task, its poll job due in a minute, in every database."""
    async with sessions.begin() as session:
        await session.execute(
            insert(Task).values(
                id=TASK_ID,
                caller="alpha",
                request_hash="0" * 64,
                model="gpt-image-1.5",
                prompt="p",
                size="1024x1024",
                quality="high",
                image_urls=[],
                n=1,
                metadata_={},
                status="pending",
                progress=0,
                provider_task_id=PROVIDER_ID,
                callback_nonce=NONCE,
                submit_state="accepted",
                submit_attempts=1,
                created_at=START,
                updated_at=START,
            )
        )
        await session.execute(
            insert(Job).values(
                kind=JobKind.POLL,
                task_id=TASK_ID,
                state=JobState.QUEUED,
                run_at=at(1),
                attempts=0,
                created_at=START,
                updated_at=START,
            )
        )


def row(model: Any, instance: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        column.key: getattr(instance, column.key)
        for column in model.__mapper__.column_attrs
        if column.key not in skip
    }


async def every_row(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """Every row the callback path writes, keyed so that the order of ids does not matter."""
    async with sessions() as session:
        tasks = (await session.scalars(select(Task))).all()
        job_rows = (await session.scalars(select(Job).order_by(Job.kind, Job.created_at))).all()
        inbox = (await session.scalars(select(CallbackDelivery))).all()
        events = (await session.scalars(select(TaskEvent).order_by(TaskEvent.id))).all()
    return {
        "tasks": [row(Task, t) for t in tasks],
        "jobs": [row(Job, j, skip=("id",)) for j in job_rows],
        "inbox": sorted(
            (row(CallbackDelivery, d) for d in inbox), key=lambda d: str(d["received_at"])
        ),
        "events": [row(TaskEvent, e, skip=("id",)) for e in events],
    }


@pytest.fixture
async def second_pg_database_url(
    postgres_server: str, postgres_template: str
) -> AsyncIterator[str]:
    url = await databases.create_postgres_database(postgres_server, postgres_template)
    yield url
    await databases.drop_postgres_database(postgres_server, url)


async def run(database_url: str, fast: bool, steps: list[Step]) -> dict[str, Any]:
    engine = create_engine(database_url)
    pool = await pg_compiled.create_pool(asyncpg_dsn(database_url)) if fast else None
    try:
        sessions = create_sessionmaker(engine)
        await seed(sessions)
        recorders: list[CallbackRecorder] = []
        if pool is not None:
            recorders.append(pg_recorder.PostgresRecorder(pool))
        recorders.append(OrmRecorder(sessions))
        target = Target(sessions, CallbackService(CALLBACK_SECRET.encode(), recorders))
        for step in steps:
            await step(target)
        return await every_row(sessions)
    finally:
        if pool is not None:
            await pool.close()
        await engine.dispose()


@pytest.mark.parametrize("name", list(SEQUENCES))
async def test_the_fast_path_and_the_orm_recorder_write_the_same_rows(
    name: str,
    pg_database_url: str,
    second_pg_database_url: str,
    sqlite_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = SEQUENCES[name]
    outcomes = {}
    for recorder, url, fast in [
        ("fast path", pg_database_url, True),
        ("ORM on PostgreSQL", second_pg_database_url, False),
        ("ORM on SQLite", databases.copy_sqlite(sqlite_template, tmp_path), False),
    ]:
        # The same clock for each: delivery n is received n seconds after START.
        clock = (START + timedelta(seconds=n) for n in itertools.count(1))
        monkeypatch.setattr(callback_service, "utcnow", lambda clock=clock: next(clock))
        outcomes[recorder] = await run(url, fast, steps)

    fast_rows = outcomes["fast path"]
    assert fast_rows["inbox"], "deliveries were recorded"
    for recorder in ("ORM on PostgreSQL", "ORM on SQLite"):
        for table, rows in outcomes[recorder].items():
            assert fast_rows[table] == rows, f"{table}: fast path vs {recorder}"
