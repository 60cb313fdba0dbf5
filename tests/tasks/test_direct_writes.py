"""The writes of the jobs straight on asyncpg (app/tasks/direct_writes.py): `Writes.run` takes the
direct form on a pool and the session form without one or when the direct one is not composable
(nothing of the direct attempt committed); `apply_event` writes a transition in one statement,
decides again on a row that moved on, and leaves to the session path what it does not cover."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import bindparam, func, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import asyncpg_dsn, create_engine, create_sessionmaker
from app.core.pg_compiled import LazyPool
from app.provider.types import ProviderStatus, ProviderTask, ProviderTaskError
from app.tasks import direct_writes, event_repository, repository, service
from app.tasks.direct_writes import Direct, NotComposable, Writes
from app.tasks.events import EventKind, TaskEvent
from app.tasks.models import Task
from app.tasks.notifications import Notification
from app.tasks.states import Effect, ProviderNews, TaskStatus
from app.workers.models import Job, JobKind
from tests.support.rows import make_task

ATTRIBUTES = [attribute.key for attribute in inspect(Task).column_attrs]

# Written by the direct forms of the tests of `Writes.run` (compiled once: built once).
SET_PROGRESS = (
    update(Task).where(Task.id == bindparam("t_id")).values(progress=bindparam("t_progress"))
)


@dataclass
class Setup:
    sessions: async_sessionmaker[AsyncSession]
    pool: LazyPool


@pytest.fixture
async def setup(pg_database_url: str) -> AsyncIterator[Setup]:
    engine = create_engine(pg_database_url)
    pool = LazyPool(asyncpg_dsn(pg_database_url), max_size=2)
    try:
        yield Setup(create_sessionmaker(engine), pool)
    finally:
        await pool.aclose()
        await engine.dispose()


class CountingDirect(Direct):
    """A `Direct` that counts the statements it runs."""

    statements = 0

    async def fetch(self, statement: Any, parameters: Any) -> Any:
        self.statements += 1
        return await super().fetch(statement, parameters)

    async def execute(self, statement: Any, parameters: Any) -> int:
        self.statements += 1
        return await super().execute(statement, parameters)


def news(status: ProviderStatus, progress: int = 0) -> ProviderNews:
    results = ("https://files.example.com/a.png",) if status is ProviderStatus.COMPLETED else ()
    failed = status is ProviderStatus.FAILED
    error = ProviderTaskError(code="content_policy", message="no") if failed else None
    task = ProviderTask(
        id="task-unified-1",
        status=status,
        raw_status=status.value,
        progress=progress,
        results=results,
        error=error,
    )
    return ProviderNews(task, confirmed=True)


async def pending(sessions: async_sessionmaker[AsyncSession], **values: Any) -> Task:
    """A task accepted upstream (pending), as read in a session that has ended."""
    task = await make_task(sessions)
    async with sessions.begin() as session:
        await session.execute(
            update(Task)
            .where(Task.id == task.id)
            .values(status=TaskStatus.PENDING.value, provider_task_id="task-unified-1", **values)
        )
        read = await repository.get(session, task.id)
    assert read is not None
    return read


async def stored(sessions: async_sessionmaker[AsyncSession], task_id: str) -> Task:
    async with sessions() as session:
        row = await repository.get(session, task_id)
    assert row is not None
    return row


async def timeline(sessions: async_sessionmaker[AsyncSession], task_id: str) -> list[Any]:
    async with sessions() as session:
        rows = await session.execute(
            select(TaskEvent.kind, TaskEvent.outcome, TaskEvent.from_status, TaskEvent.to_status)
            .where(TaskEvent.task_id == task_id)
            .order_by(TaskEvent.id)
        )
        return [tuple(row) for row in rows]


async def job_kinds(sessions: async_sessionmaker[AsyncSession], task_id: str) -> list[str]:
    async with sessions() as session:
        kinds = await session.scalars(
            select(Job.kind).where(Job.task_id == task_id).order_by(Job.kind)
        )
        return [str(kind) for kind in kinds]


async def notifications(sessions: async_sessionmaker[AsyncSession], task_id: str) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Notification).where(Notification.task_id == task_id)
        )
    return int(count or 0)


def transitions(caplog: pytest.LogCaptureFixture, task_id: str) -> list[tuple[str, str, str]]:
    return [
        (
            getattr(record, "from_status", ""),
            getattr(record, "to_status", ""),
            getattr(record, "source", ""),
        )
        for record in caplog.records
        if record.name == "app.tasks.service"
        and record.getMessage() == "task transition"
        and getattr(record, "task_id", None) == task_id
    ]


class Forms:
    """Both forms of a write of a task's columns, counting their runs."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.direct_runs = 0
        self.session_runs = 0

    async def direct(self, target: Direct) -> str:
        self.direct_runs += 1
        await target.execute(SET_PROGRESS, {"t_id": self.task_id, "t_progress": 30})
        return "direct"

    async def in_session(self, session: AsyncSession) -> str:
        self.session_runs += 1
        await session.execute(update(Task).where(Task.id == self.task_id).values(credits=2.5))
        return "session"


# Writes.run


async def test_with_a_pool_the_direct_form_runs_alone_and_commits(setup: Setup) -> None:
    task = await make_task(setup.sessions)
    forms = Forms(task.id)

    result = await Writes(setup.sessions, setup.pool).run(
        forms.direct, forms.in_session, transaction=True
    )

    assert result == "direct"
    assert (forms.direct_runs, forms.session_runs) == (1, 0)
    row = await stored(setup.sessions, task.id)
    assert row.progress == 30  # committed: read back in another session
    assert row.credits == task.credits  # the session form did not run


async def test_without_a_pool_the_session_form_runs_and_commits(setup: Setup) -> None:
    task = await make_task(setup.sessions)
    forms = Forms(task.id)

    result = await Writes(setup.sessions, None).run(
        forms.direct, forms.in_session, transaction=True
    )

    assert result == "session"
    assert (forms.direct_runs, forms.session_runs) == (0, 1)
    row = await stored(setup.sessions, task.id)
    assert row.credits == 2.5
    assert row.progress == 0


async def test_a_direct_form_not_composable_after_a_write_rolls_back_and_the_session_form_runs(
    setup: Setup,
) -> None:
    task = await make_task(setup.sessions)
    forms = Forms(task.id)

    async def direct(target: Direct) -> str:
        await forms.direct(target)
        raise NotComposable

    result = await Writes(setup.sessions, setup.pool).run(
        direct, forms.in_session, transaction=True
    )

    assert result == "session"
    assert (forms.direct_runs, forms.session_runs) == (1, 1)
    row = await stored(setup.sessions, task.id)
    assert row.progress == 0  # the direct write was rolled back
    assert row.credits == 2.5  # the session's is there


async def test_another_error_of_the_direct_form_propagates_rolled_back_without_the_session_form(
    setup: Setup,
) -> None:
    task = await make_task(setup.sessions)
    forms = Forms(task.id)

    async def direct(target: Direct) -> str:
        await forms.direct(target)
        raise RuntimeError("the connection broke")

    with pytest.raises(RuntimeError, match="the connection broke"):
        await Writes(setup.sessions, setup.pool).run(direct, forms.in_session, transaction=True)

    assert (forms.direct_runs, forms.session_runs) == (1, 0)
    row = await stored(setup.sessions, task.id)
    assert row.progress == 0
    assert row.credits == task.credits


# apply_event


async def test_a_transition_its_lines_and_its_job_are_written_in_one_statement_and_logged_after(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.tasks.service")
    task = await pending(setup.sessions)
    now = utcnow()
    line = event_repository.line(
        task.id, kind=EventKind.POLL, source="poll", at=now, outcome="completed"
    )
    queries: list[str] = []
    logged_before_commit: list[Any] = []

    async def direct(target: Direct) -> TaskStatus | None:
        def record(query: Any) -> None:
            queries.append(query.query)

        target.connection.add_query_logger(record)
        try:
            decision = await direct_writes.apply_event(
                target,
                task,
                news(ProviderStatus.COMPLETED, 100),
                now=now,
                source="poll",
                extra={"last_news_at": now},
                line=line,
            )
        finally:
            target.connection.remove_query_logger(record)
        logged_before_commit.extend(transitions(caplog, task.id))
        return None if decision.state is None else decision.state.status

    async def in_session(session: AsyncSession) -> TaskStatus | None:
        raise AssertionError("the session form must not run")

    status = await Writes(setup.sessions, setup.pool).run(direct, in_session, transaction=False)

    assert status is TaskStatus.ARCHIVING
    assert len(queries) == 1
    assert logged_before_commit == []
    assert transitions(caplog, task.id) == [("pending", "archiving", "poll")]
    row = await stored(setup.sessions, task.id)
    assert row.status == TaskStatus.ARCHIVING.value
    assert row.last_news_at == now
    # `task` holds the row as written (RETURNING), as a read of it afterwards.
    assert {key: getattr(task, key) for key in ATTRIBUTES} == {
        key: getattr(row, key) for key in ATTRIBUTES
    }
    assert await timeline(setup.sessions, task.id) == [
        (EventKind.POLL, "completed", None, None),
        (EventKind.TRANSITION, None, TaskStatus.PENDING.value, TaskStatus.ARCHIVING.value),
    ]
    assert await job_kinds(setup.sessions, task.id) == [JobKind.ARCHIVE, JobKind.SUBMIT]


async def test_a_transition_rolled_back_by_a_later_not_composable_is_refused_not_kept_nor_logged(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    # The task object holds the transition that was rolled back: falling back to the session
    # path would decide from it (a pending task taken for archiving: the transition lost).
    caplog.set_level(logging.INFO, logger="app.tasks.service")
    task = await pending(setup.sessions)
    session_runs: list[str] = []

    async def direct(target: Direct) -> str:
        decision = await direct_writes.apply_event(
            target, task, news(ProviderStatus.COMPLETED, 100), now=utcnow(), source="poll"
        )
        assert decision.changed  # written in the transaction
        raise NotComposable

    async def in_session(session: AsyncSession) -> str:
        session_runs.append(task.id)
        return "session"

    with pytest.raises(RuntimeError, match="fell back after it wrote"):
        await Writes(setup.sessions, setup.pool).run(direct, in_session, transaction=True)

    assert session_runs == []
    assert transitions(caplog, task.id) == []  # the after-commit actions did not run
    row = await stored(setup.sessions, task.id)
    assert (row.status, row.progress) == (TaskStatus.PENDING.value, 0)
    assert await timeline(setup.sessions, task.id) == []
    assert await job_kinds(setup.sessions, task.id) == [JobKind.SUBMIT]


async def test_a_row_that_moved_on_is_read_again_and_decided_anew(setup: Setup) -> None:
    stale = await pending(setup.sessions)
    async with setup.sessions() as session:  # a callback moved the task on since `stale`
        fresh = await repository.get(session, stale.id)
        assert fresh is not None
        await service.apply_event(
            session, fresh, news(ProviderStatus.PROCESSING, 40), now=utcnow(), source="callback"
        )
        await session.commit()

    async with setup.pool.acquire() as connection:
        target = CountingDirect(connection)
        decision = await direct_writes.apply_event(
            target, stale, news(ProviderStatus.COMPLETED, 100), now=utcnow(), source="poll"
        )

    assert decision.state is not None
    assert decision.state.status is TaskStatus.ARCHIVING
    assert target.statements == 3  # the update that missed, the read, the update
    assert await timeline(setup.sessions, stale.id) == [
        (EventKind.TRANSITION, None, TaskStatus.PENDING.value, TaskStatus.PROCESSING.value),
        # decided on the row as it was, not on the stale `pending`
        (EventKind.TRANSITION, None, TaskStatus.PROCESSING.value, TaskStatus.ARCHIVING.value),
    ]
    row = await stored(setup.sessions, stale.id)
    assert (row.status, row.progress) == (TaskStatus.ARCHIVING.value, 100)
    assert stale.status == TaskStatus.ARCHIVING.value
    assert await job_kinds(setup.sessions, stale.id) == [JobKind.ARCHIVE, JobKind.SUBMIT]


async def test_a_row_that_moved_on_to_where_the_news_changes_nothing_is_not_written_again(
    setup: Setup,
) -> None:
    stale = await pending(setup.sessions)
    async with setup.sessions() as session:  # a callback completed the task since `stale`
        fresh = await repository.get(session, stale.id)
        assert fresh is not None
        await service.apply_event(
            session, fresh, news(ProviderStatus.COMPLETED, 100), now=utcnow(), source="callback"
        )
        await session.commit()
    before = await stored(setup.sessions, stale.id)
    lines_before = await timeline(setup.sessions, stale.id)

    async with setup.pool.acquire() as connection:
        with pytest.raises(NotComposable):
            await direct_writes.apply_event(
                Direct(connection),
                stale,
                news(ProviderStatus.PROCESSING, 60),
                now=utcnow(),
                source="poll",
            )

    after = await stored(setup.sessions, stale.id)
    assert (after.status, after.progress, after.updated_at) == (
        TaskStatus.ARCHIVING.value,
        100,
        before.updated_at,
    )
    assert stale.status == TaskStatus.ARCHIVING.value  # read again
    assert await timeline(setup.sessions, stale.id) == lines_before
    assert await job_kinds(setup.sessions, stale.id) == [JobKind.ARCHIVE, JobKind.SUBMIT]


async def test_news_that_changes_nothing_is_not_composable_and_writes_nothing(
    setup: Setup,
) -> None:
    task = await pending(setup.sessions)
    async with setup.pool.acquire() as connection:
        target = Direct(connection)
        first = await direct_writes.apply_event(
            target, task, news(ProviderStatus.PROCESSING, 40), now=utcnow(), source="poll"
        )
        assert first.changed
        before = await stored(setup.sessions, task.id)
        lines_before = await timeline(setup.sessions, task.id)
        line = event_repository.line(
            task.id, kind=EventKind.POLL, source="poll", at=utcnow(), outcome="processing"
        )

        with pytest.raises(NotComposable):
            await direct_writes.apply_event(
                target,
                task,
                news(ProviderStatus.PROCESSING, 40),
                now=utcnow(),
                source="poll",
                extra={"last_news_at": utcnow()},
                line=line,
            )

    after = await stored(setup.sessions, task.id)
    assert {key: getattr(after, key) for key in ATTRIBUTES} == {
        key: getattr(before, key) for key in ATTRIBUTES
    }
    assert await timeline(setup.sessions, task.id) == lines_before  # not even the caller's line
    assert len(lines_before) == 1
    assert target.after_commit != []  # the first transition's log line, and no other
    assert len(target.after_commit) == 1


@pytest.mark.parametrize(
    "failed",
    [news(ProviderStatus.FAILED), news(ProviderStatus.CANCELLED)],
    ids=["failed", "cancelled"],
)
async def test_a_transition_that_opens_a_notification_is_not_composable_and_writes_nothing(
    setup: Setup, failed: ProviderNews
) -> None:
    task = await pending(setup.sessions, notify_url="https://hooks.example.com/x")
    # A terminal state's effect is a notification, a job of its own where there is a notify_url.
    assert service.job_for(Effect.NOTIFY, task.notify_url) is JobKind.NOTIFY
    line = event_repository.line(
        task.id, kind=EventKind.POLL, source="poll", at=utcnow(), outcome="failed"
    )

    async with setup.pool.acquire() as connection:
        target = Direct(connection)
        with pytest.raises(NotComposable):
            await direct_writes.apply_event(
                target, task, failed, now=utcnow(), source="poll", line=line
            )

    assert target.after_commit == []
    row = await stored(setup.sessions, task.id)
    assert row.status == TaskStatus.PENDING.value
    assert row.completed_at is None
    assert await timeline(setup.sessions, task.id) == []
    assert await job_kinds(setup.sessions, task.id) == [JobKind.SUBMIT]
    assert await notifications(setup.sessions, task.id) == 0


async def test_a_terminal_transition_without_a_notify_url_is_composable(setup: Setup) -> None:
    # The contrast of the test above: the same decision, no webhook to open, written directly.
    task = await pending(setup.sessions)
    failed = news(ProviderStatus.FAILED)
    async with setup.pool.acquire() as connection:
        decision = await direct_writes.apply_event(
            Direct(connection), task, failed, now=utcnow(), source="poll"
        )

    assert decision.effects == (Effect.NOTIFY,)
    assert service.job_for(Effect.NOTIFY, None) is None
    row = await stored(setup.sessions, task.id)
    assert (row.status, row.error_code) == (TaskStatus.FAILED.value, "content_policy")
    assert row.completed_at is not None
    assert await job_kinds(setup.sessions, task.id) == [JobKind.SUBMIT]
    assert await notifications(setup.sessions, task.id) == 0


# Direct.execute


async def test_execute_returns_the_number_of_rows_written(setup: Setup) -> None:
    task = await make_task(setup.sessions)
    other = await make_task(setup.sessions, prompt="a harbour")

    async with setup.pool.acquire() as connection:
        target = Direct(connection)
        matched = await target.execute(SET_PROGRESS, {"t_id": task.id, "t_progress": 55})
        missed = await target.execute(SET_PROGRESS, {"t_id": "no-such-task", "t_progress": 77})

    assert (matched, missed) == (1, 0)
    assert (await stored(setup.sessions, task.id)).progress == 55
    assert (await stored(setup.sessions, other.id)).progress == 0
