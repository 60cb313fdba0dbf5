"""The task timeline: every transition and every attempt at upstream work, for operators."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from app.core.clock import utcnow
from app.core.db import Base, UTCDateTime


class EventKind(StrEnum):
    """What happened."""

    TRANSITION = "transition"  # the status or progress changed
    SUBMIT = "submit"  # a create call upstream and its outcome
    POLL = "poll"  # a query upstream and its outcome
    ARCHIVE = "archive"  # a copy of a result image and its outcome
    NOTIFY = "notify"  # a notification to the caller and its outcome
    REDRIVE = "redrive"  # a caller asked to run a failed step again


class TaskEvent(Base):
    """One line of a task's timeline."""

    __tablename__ = "task_events"
    __table_args__ = (
        Index("ix_task_events_task_at", "task_id", "at"),
        # The console overview: failed upstream calls (kind submit/poll) and poll-found final
        # transitions (kind transition) since a moment.
        Index("ix_task_events_kind_at", "kind", "at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("tasks.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)  # shown to the caller (`/events`)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # For operators only (console, never the caller API): what `message` leaves out because it
    # describes the service's network, e.g. the addresses a notify_url resolved to.
    operator_message: Mapped[str | None] = mapped_column(Text)


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
