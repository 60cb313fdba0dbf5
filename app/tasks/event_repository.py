"""All queries on the task timeline: add a line, look one up, read a task's lines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.tasks.events import EventKind, TaskEvent


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
    """Add a timeline line in the caller's transaction (`operator_message`: for the console
    only, when it says more than `message`)."""
    session.add(
        TaskEvent(
            task_id=task_id,
            at=at,
            kind=kind,
            source=source,
            outcome=outcome,
            from_status=from_status,
            to_status=to_status,
            message=None if message is None else message[:2000],
            detail=detail,
            operator_message=None if operator_message is None else operator_message[:2000],
        )
    )
    await session.flush()


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
