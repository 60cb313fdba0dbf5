"""Queries on tasks' reference images (`task_references`). Functions flush at most."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.tasks.references import ResolvedReference, TaskReference


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
