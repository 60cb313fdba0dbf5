"""Queries on archived images."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.archive.models import TaskImage
from app.core.db import matched_any, upsert_insert
from app.tasks.models import Task

_IMAGES = cast(Table, TaskImage.__table__)
# Read with the task (app/tasks/rows.py): whether any of its images is stored already.
HAS_IMAGES = exists().where(_IMAGES.c.task_id == Task.id).label("has_images")


@functools.cache
def _record_once_statement(insert: Any, keys: tuple[str, ...]) -> Any:
    """The insert-unless-present of the columns `keys`, built once per database and columns."""
    # Prefixed: a bound parameter may not take the name of a column the statement sets.
    values = {key: bindparam(f"v_{key}", type_=_IMAGES.c[key].type) for key in keys}
    return (
        insert(_IMAGES)
        .values(values)
        .on_conflict_do_nothing(index_elements=[_IMAGES.c.task_id, _IMAGES.c.index])
        .returning(_IMAGES.c.index)
    )


async def record_once(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert an image row unless one exists for (task, index); True when this call wrote it."""
    statement, parameters = record_once_statement(upsert_insert(session), values)
    return await session.scalar(statement, parameters) is not None


def record_once_statement(insert: Any, values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """`record_once`'s statement for the `insert` of a database (built once per shape; it
    returns a row when it wrote one) and its parameters."""
    parameters = {f"v_{key}": value for key, value in values.items()}
    return _record_once_statement(insert, tuple(values)), parameters


_INDEXES = select(_IMAGES.c.index).where(_IMAGES.c.task_id == bindparam("task_id"))


async def indexes_of(session: AsyncSession, task_id: str) -> set[int]:
    """Which images of a task are archived (their indexes)."""
    return set((await session.scalars(_INDEXES, {"task_id": task_id})).all())


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


_RECORD_THUMBNAIL = (
    update(_IMAGES)
    .where(
        _IMAGES.c.task_id == bindparam("w_task_id"),
        _IMAGES.c.index == bindparam("w_index"),
        _IMAGES.c.thumbnail_key.is_(None),
        _IMAGES.c.thumbnail_error.is_(None),
    )
    .values(thumbnail_key=bindparam("v_key"), thumbnail_error=bindparam("v_error"))
)


async def record_thumbnail(
    session: AsyncSession, task_id: str, index: int, key: str | None, error: str | None
) -> bool:
    """Note what became of an image's thumbnail (made on the console's first request) unless a
    concurrent request noted it first; True when this call wrote it. Not committed."""
    parameters = {"w_task_id": task_id, "w_index": index, "v_key": key, "v_error": error}
    return matched_any(await session.execute(_RECORD_THUMBNAIL, parameters))
