"""Queries on tasks' reference images (`task_references`): written at create, read by the
presenter, the submission and `/inputs/`. Functions flush at most."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import matched_any
from app.tasks.models import Task
from app.tasks.references import ReferenceSource, ResolvedReference, TaskReference
from app.tasks.states import TaskStatus


async def add_all(
    session: AsyncSession, task_id: str, references: Sequence[ResolvedReference]
) -> None:
    """Write a new task's references as rows at positions 0, 1, … in the order given."""
    if not references:
        return
    rows = [
        {**asdict(reference), "source": reference.source.value, "task_id": task_id, "position": i}
        for i, reference in enumerate(references)
    ]
    await session.execute(insert(TaskReference), rows)


async def references_of(
    session: AsyncSession, task_ids: Sequence[str]
) -> dict[str, list[TaskReference]]:
    """The references of several tasks (one query), by task id, each list in position order."""
    found: dict[str, list[TaskReference]] = {task_id: [] for task_id in task_ids}
    if not task_ids:
        return found
    rows = await session.scalars(
        select(TaskReference)
        .where(TaskReference.task_id.in_(task_ids))
        .order_by(TaskReference.task_id, TaskReference.position)
    )
    for row in rows:
        found[row.task_id].append(row)
    return found


@dataclass(frozen=True, slots=True)
class ServedReference:
    """What the `/inputs/` endpoint needs to serve one reference: its task's status and its
    object."""

    task_status: str
    source: str
    key: str | None
    content_type: str | None


async def in_order(session: AsyncSession, task_id: str) -> Sequence[TaskReference]:
    """The task's references in upstream order (one query)."""
    query = (
        select(TaskReference)
        .where(TaskReference.task_id == task_id)
        .order_by(TaskReference.position)
    )
    return (await session.scalars(query)).all()


async def served(session: AsyncSession, task_id: str, position: int) -> ServedReference | None:
    """The reference at `position` with its task's status (one query on two primary keys)."""
    query = (
        select(Task.status, TaskReference.source, TaskReference.key, TaskReference.content_type)
        .join(Task, Task.id == TaskReference.task_id)
        .where(TaskReference.task_id == task_id, TaskReference.position == position)
    )
    row = (await session.execute(query)).one_or_none()
    return None if row is None else ServedReference(*row)


async def record_provider_file(
    session: AsyncSession,
    task_id: str,
    position: int,
    *,
    file_id: str,
    file_url: str,
    uploaded_at: datetime,
) -> bool:
    """Record the provider's copy of a reference, only while its task is still queued (not yet
    submitted); True when recorded."""
    still_queued = exists().where(Task.id == task_id, Task.status == TaskStatus.QUEUED.value)
    result = await session.execute(
        update(TaskReference)
        .where(
            TaskReference.task_id == task_id,
            TaskReference.position == position,
            TaskReference.source != ReferenceSource.URL.value,
            still_queued,
        )
        .values(
            provider_file_id=file_id,
            provider_file_url=file_url,
            provider_file_uploaded_at=uploaded_at,
        )
        .execution_options(synchronize_session=False)
    )
    return matched_any(result)
