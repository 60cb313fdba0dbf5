"""Queries on archived images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.archive.models import TaskImage
from app.core.db import upsert_insert


async def record_once(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert an image row unless one exists for (task, index); True when this call wrote it."""
    insert = upsert_insert(session)
    statement = (
        insert(TaskImage)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[TaskImage.task_id, TaskImage.index])
        .returning(TaskImage.index)
    )
    return await session.scalar(statement) is not None


async def for_tasks(session: AsyncSession, task_ids: Sequence[str]) -> dict[str, list[TaskImage]]:
    """The images of several tasks, by task id, each list ordered by index."""
    found: dict[str, list[TaskImage]] = {task_id: [] for task_id in task_ids}
    if not task_ids:
        return found
    rows = await session.scalars(
        select(TaskImage)
        .where(TaskImage.task_id.in_(task_ids))
        .order_by(TaskImage.task_id, TaskImage.index)
    )
    for row in rows:
        found[row.task_id].append(row)
    return found


async def one(session: AsyncSession, task_id: str, index: int) -> TaskImage | None:
    """One archived image."""
    return await session.get(TaskImage, (task_id, index))
