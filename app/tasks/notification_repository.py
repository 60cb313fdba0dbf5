"""All queries on notifications. Functions flush at most; the caller's boundary commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import matched_any, upsert_insert
from app.tasks.notifications import Notification, NotificationState

_REOPENABLE = (NotificationState.FAILED, NotificationState.SUPERSEDED)


def new_webhook_id() -> str:
    """A message id in the style of Standard Webhooks (`msg_` and 128 random bits)."""
    return f"msg_{uuid.uuid4().hex}"


async def open_for(session: AsyncSession, task_id: str, event_type: str, now: datetime) -> None:
    """Make the notification of a terminal state pending: a new row, or a new attempt series of
    one that was given up or superseded. A pending or delivered one is left as it is."""
    insert = upsert_insert(session)
    statement = insert(Notification).values(
        id=new_webhook_id(),
        task_id=task_id,
        type=event_type,
        state=NotificationState.PENDING,
        series=1,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[Notification.task_id, Notification.type],
        set_=_new_series(now),
        where=Notification.state.in_(_REOPENABLE),
    )
    await session.execute(statement)


def _new_series(now: datetime) -> dict[str, Any]:
    return {
        "state": NotificationState.PENDING,
        "series": Notification.series + 1,
        "attempts": 0,
        "next_attempt_at": now,
        "last_status_code": None,
        "last_error": None,
        "updated_at": now,
    }


async def get(session: AsyncSession, notification_id: str) -> Notification | None:
    """A notification, freshly read."""
    return await session.get(Notification, notification_id, populate_existing=True)


async def for_tasks(
    session: AsyncSession, task_ids: Sequence[str]
) -> dict[str, list[Notification]]:
    """The notifications of several tasks, by task id, oldest first."""
    found: dict[str, list[Notification]] = {task_id: [] for task_id in task_ids}
    if not task_ids:
        return found
    rows = await session.scalars(
        select(Notification)
        .where(Notification.task_id.in_(task_ids))
        .order_by(Notification.created_at, Notification.id)
        .execution_options(populate_existing=True)
    )
    for row in rows:
        found[row.task_id].append(row)
    return found


async def record_attempt(
    session: AsyncSession, notification: Notification, values: dict[str, Any]
) -> bool:
    """Write an attempt's outcome unless another attempt or a redrive got there first."""
    result = await session.execute(
        update(Notification)
        .where(
            Notification.id == notification.id,
            Notification.state == NotificationState.PENDING,
            Notification.series == notification.series,
            Notification.attempts == notification.attempts,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return matched_any(result)


async def supersede_pending(session: AsyncSession, task_id: str, now: datetime) -> list[str]:
    """Stop the undelivered notifications of a task that a redrive moves on; their types."""
    result = await session.execute(
        update(Notification)
        .where(
            Notification.task_id == task_id,
            Notification.state == NotificationState.PENDING,
        )
        .values(state=NotificationState.SUPERSEDED, next_attempt_at=None, updated_at=now)
        .returning(Notification.type)
        .execution_options(synchronize_session=False)
    )
    return list(result.scalars().all())


async def redrive(session: AsyncSession, notification_id: str, now: datetime) -> bool:
    """Start a new attempt series of a given-up notification; False if it is not given up."""
    result = await session.execute(
        update(Notification)
        .where(
            Notification.id == notification_id,
            Notification.state == NotificationState.FAILED,
        )
        .values(**_new_series(now))
        .execution_options(synchronize_session=False)
    )
    return matched_any(result)
