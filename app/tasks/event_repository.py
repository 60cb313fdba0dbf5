"""All queries on the task timeline: add a line, look one up, read a task's lines."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.tasks.events import EventKind, TaskEvent

# A Core INSERT built once (no ORM unit of work, no RETURNING of the id nobody reads): every
# call passes every column, so each one is the same compiled statement.
EVENTS = cast(Table, TaskEvent.__table__)
_INSERT = insert(EVENTS)
# A line's columns, as line() gives them.
LINE_COLUMNS = (
    "task_id",
    "at",
    "kind",
    "source",
    "outcome",
    "from_status",
    "to_status",
    "message",
    "detail",
    "operator_message",
)


def line(
    task_id: str,
    *,
    kind: EventKind,
    source: str,
    at: datetime,
    outcome: str | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    message: str | None = None,
    detail: dict[str, Any] | None = None,
    operator_message: str | None = None,
) -> dict[str, Any]:
    """A timeline line as a row to write (`operator_message`: for the console only, when it
    says more than `message`)."""
    return {
        "task_id": task_id,
        "at": at,
        "kind": kind,
        "source": source,
        "outcome": outcome,
        "from_status": from_status,
        "to_status": to_status,
        "message": None if message is None else message[:2000],
        "detail": detail,
        "operator_message": None if operator_message is None else operator_message[:2000],
    }


async def record(
    session: AsyncSession,
    task_id: str,
    *,
    kind: EventKind,
    source: str,
    at: datetime,
    outcome: str | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    message: str | None = None,
    detail: dict[str, Any] | None = None,
    operator_message: str | None = None,
) -> None:
    """Add a timeline line in the caller's transaction (the fields: line())."""
    row = line(
        task_id,
        kind=kind,
        source=source,
        at=at,
        outcome=outcome,
        from_status=from_status,
        to_status=to_status,
        message=message,
        detail=detail,
        operator_message=operator_message,
    )
    await session.execute(_INSERT, row)


async def record_lines(session: AsyncSession, lines: Sequence[dict[str, Any]]) -> None:
    """Add lines made by line() in the caller's transaction, in order, in one statement."""
    if len(lines) == 1:
        await session.execute(_INSERT, lines[0])
    elif lines:
        await session.execute(_INSERT, list(lines))


async def exists(session: AsyncSession, task_id: str, *, kind: EventKind, outcome: str) -> bool:
    """Whether the task's timeline has a line of this kind and outcome."""
    found = await session.scalar(
        select(TaskEvent.id)
        .where(TaskEvent.task_id == task_id, TaskEvent.kind == kind, TaskEvent.outcome == outcome)
        .limit(1)
    )
    return found is not None


async def note(
    sessions: async_sessionmaker[AsyncSession], task_id: str, *, kind: EventKind, **line: Any
) -> None:
    """Add a timeline line in a transaction of its own (`line`: record()'s keywords)."""
    async with sessions() as session:
        await record(session, task_id, kind=kind, source=kind, at=utcnow(), **line)
        await session.commit()


async def timeline(session: AsyncSession, task_id: str) -> list[TaskEvent]:
    """A task's events, oldest first."""
    result = await session.scalars(
        select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.at, TaskEvent.id)
    )
    return list(result.all())
