"""Which uploads and stored objects tasks still use, read from `task_references`.

An upload is *in use* while a task that is not terminal (queued, pending, processing,
archiving) has a reference to it: it may not be deleted then. A store key is *referenced*
while any task, terminal or not, has a reference naming it: its object is kept for that task
(the console and the task object show a terminal task's references)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import ColumnElement, and_, exists, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.tasks.models import Task
from app.tasks.references import TaskReference
from app.tasks.states import TERMINAL

_TERMINAL_VALUES = sorted(status.value for status in TERMINAL)


def upload_in_use_clause(
    upload_id: ColumnElement[str] | InstrumentedAttribute[str],
) -> ColumnElement[bool]:
    """SQL: a non-terminal task references the upload `upload_id` (a column or a value)."""
    return exists().where(
        and_(
            TaskReference.upload_id == upload_id,
            TaskReference.task_id == Task.id,
            Task.status.not_in(_TERMINAL_VALUES),
        )
    )


async def upload_in_use(session: AsyncSession, upload_id: str) -> bool:
    """Whether a task that is not terminal references the upload."""
    return bool(await session.scalar(select(upload_in_use_clause(literal(upload_id)))))


async def referenced_keys(session: AsyncSession, keys: Collection[str]) -> set[str]:
    """Those of `keys` that a reference of some task (any status) names."""
    if not keys:
        return set()
    found = await session.scalars(
        select(TaskReference.key).where(TaskReference.key.in_(list(keys))).distinct()
    )
    return {key for key in found if key is not None}


async def key_referenced(session: AsyncSession, key: str) -> bool:
    """Whether a reference of some task (any status) names the store key `key`."""
    return bool(await referenced_keys(session, [key]))
