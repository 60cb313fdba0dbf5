"""All queries on the task table. Functions flush at most; the caller's boundary commits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Update, and_, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import matched_any, upsert_insert
from app.tasks.models import Task
from app.tasks.states import TaskState, TaskStatus

ACTIVE_STATUSES = tuple(status.value for status in TaskStatus if not status.is_terminal)
# The first key of the advisory lock that serializes a caller's creates (lock_caller_creates).
CALLER_LOCK_CLASS = 16_0001


async def insert_if_new(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert a task unless (caller, idempotency_key) exists; True when inserted."""
    insert = upsert_insert(session)
    statement = (
        insert(Task)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[Task.caller, Task.idempotency_key])
        .returning(Task.id)
    )
    inserted = await session.scalar(statement)
    return inserted is not None


async def get(session: AsyncSession, task_id: str) -> Task | None:
    """A task by id, freshly read."""
    return await session.get(Task, task_id, populate_existing=True)


async def get_for_caller(session: AsyncSession, caller: str, task_id: str) -> Task | None:
    """A task by id, only if it belongs to `caller`."""
    return await session.scalar(select(Task).where(Task.id == task_id, Task.caller == caller))


async def get_by_idempotency_key(session: AsyncSession, caller: str, key: str) -> Task | None:
    """The caller's task created with this key."""
    return await session.scalar(
        select(Task).where(Task.caller == caller, Task.idempotency_key == key)
    )


async def list_for_caller(
    session: AsyncSession,
    caller: str,
    *,
    status: str | None,
    limit: int,
    before: tuple[datetime, str] | None,
) -> Sequence[Task]:
    """The caller's tasks, newest first, strictly after the keyset position `before`."""
    query = select(Task).where(Task.caller == caller)
    if status is not None:
        query = query.where(Task.status == status)
    return (await session.scalars(newest_first(query, before=before, limit=limit))).all()


def newest_first(
    query: Select[Task], *, before: tuple[datetime, str] | None, limit: int
) -> Select[Task]:
    """`query` ordered newest first, strictly after the keyset position `before`."""
    if before is not None:
        created_at, task_id = before
        query = query.where(
            # The first bound is implied by the second; it lets an index scan on
            # (…, created_at, id) start at the cursor instead of filtering every newer row.
            Task.created_at <= created_at,
            or_(
                Task.created_at < created_at,
                and_(Task.created_at == created_at, Task.id < task_id),
            ),
        )
    return query.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)


async def update_if_state(
    session: AsyncSession,
    task_id: str,
    *,
    expected: TaskState,
    values: dict[str, Any],
) -> bool:
    """Write `values` only if the row still has the expected status and progress."""
    statement = update_if_state_statement(
        task_id,
        status=expected.status.value,
        progress=expected.progress,
        final_claimed=expected.final_claimed,
        values=values,
    )
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return matched_any(result)


def update_if_state_statement(
    task_id: Any, *, status: Any, progress: Any, final_claimed: Any, values: Mapping[str, Any]
) -> Update:
    """The guarded UPDATE of a transition (values or bound parameters): it writes only if the
    row still has the state the decision was made on. The callback fast path composes it too."""
    return (
        update(Task)
        .where(
            Task.id == task_id,
            Task.status == status,
            Task.progress == progress,
            Task.final_claimed_at.is_not(None) == final_claimed,
        )
        .values(**values)
    )


async def update_fields(
    session: AsyncSession, task_id: str, values: dict[str, Any], **conditions: Any
) -> bool:
    """Write `values` where the row still matches `conditions` (column=value)."""
    clauses = [Task.id == task_id]
    clauses += [getattr(Task, name) == value for name, value in conditions.items()]
    result = await session.execute(
        update(Task).where(*clauses).values(**values).execution_options(synchronize_session=False)
    )
    return matched_any(result)


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    """How many tasks are in each status (one GROUP BY over the table)."""
    rows = await session.execute(select(Task.status, func.count()).group_by(Task.status))
    return {status: int(count) for status, count in rows}


async def lock_caller_creates(session: AsyncSession, caller: str) -> None:
    """Serialize the creates of one caller until the transaction ends, across every replica:
    a PostgreSQL transaction-scoped advisory lock on a hash of the caller (two callers whose
    hashes collide only wait for each other). SQLite needs none: every transaction there
    begins IMMEDIATE and holds the database's one write lock (app/core/db.py)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    await session.execute(
        select(func.pg_advisory_xact_lock(CALLER_LOCK_CLASS, func.hashtext(caller)))
    )


async def recent_usage(
    session: AsyncSession,
    caller: str,
    *,
    since: datetime,
    minute_start: datetime,
    day_start: datetime,
) -> tuple[int, float, float]:
    """(creates since `minute_start`, credits since `day_start`, credits since `since`) of the
    caller's tasks created since `since` (the earliest of the three): one range scan of
    ix_tasks_caller_created, index-only on PostgreSQL."""
    recent = case((Task.created_at > minute_start, 1), else_=0)
    today = case((Task.created_at >= day_start, Task.credits), else_=0.0)
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(recent), 0),
                func.coalesce(func.sum(today), 0.0),
                func.coalesce(func.sum(Task.credits), 0.0),
            ).where(Task.caller == caller, Task.created_at >= since)
        )
    ).one()
    return int(row[0]), float(row[1]), float(row[2])


async def nth_newest_created_at(
    session: AsyncSession, caller: str, *, after: datetime, n: int
) -> datetime | None:
    """The creation time of the caller's n-th newest task (1 = the newest) created after
    `after`: when the rate window frees a slot."""
    return await session.scalar(
        select(Task.created_at)
        .where(Task.caller == caller, Task.created_at > after)
        .order_by(Task.created_at.desc(), Task.id.desc())
        .offset(n - 1)
        .limit(1)
    )


async def count_active(session: AsyncSession, caller: str) -> int:
    """How many of the caller's tasks are not terminal (ix_tasks_caller_active)."""
    count = await session.scalar(
        select(func.count()).where(
            Task.caller == caller,
            Task.completed_at.is_(None),
            Task.status.in_(ACTIVE_STATUSES),
        )
    )
    return int(count or 0)
