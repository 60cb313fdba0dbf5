"""The job handlers' reads of a task, and the submit job's mark: the statements every job of
every task runs first. On PostgreSQL they go straight to asyncpg (compiled once, on the
process's `LazyPool`: app/core/pg_compiled.py), each its own transaction; otherwise, and where a
context has no pool (tests of one handler), through a session (in autocommit on PostgreSQL; on
SQLite every transaction takes the write lock, see app/core/db.py). Both read the same
statement (`repository.row_statement`) and give the same detached `Task`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import exists
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import autocommit, matched_any
from app.core.pg_compiled import LazyPool, compiled_once
from app.tasks import repository
from app.tasks.models import Task
from app.tasks.references import TaskReference

HAS_REFERENCES = exists().where(TaskReference.task_id == Task.id).label("has_references")


class TaskRows:
    """Reads a task and marks it, through asyncpg when given a pool, else through sessions."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], direct: LazyPool | None = None
    ) -> None:
        self._sessions = sessions
        self._direct = direct

    async def read(self, task_id: str, *flags: Any) -> tuple[Task, tuple[Any, ...]] | None:
        """The task, freshly read, and the values of `flags` (labelled boolean expressions on
        its row, built once: an EXISTS of the rows of another table, say); None when gone."""
        statement = repository.row_statement(flags)
        parameters = {"w_id": task_id}
        if self._direct is not None:
            rows: list[Any] = await self._direct.fetch(compiled_once(statement), parameters)
        else:
            async with self._sessions() as session:
                await autocommit(session)  # one read
                rows = list((await session.execute(statement, parameters)).all())
        if not rows:
            return None
        row = tuple(rows[0])
        return repository.task_of_row(row), row[len(row) - len(flags) :]

    async def get(self, task_id: str) -> Task | None:
        found = await self.read(task_id)
        return None if found is None else found[0]

    async def update_fields(
        self, task_id: str, values: Mapping[str, Any], **conditions: Any
    ) -> bool:
        """`repository.update_fields` as a statement of its own (committed): True when the row
        still matched `conditions`."""
        statement, parameters = repository.fields_statement(task_id, values, **conditions)
        if self._direct is not None:
            compiled = compiled_once(statement)
            async with self._direct.acquire() as connection:
                status: str = await connection.execute(
                    compiled.sql, *compiled.arguments(parameters)
                )
            return status.split()[-1] != "0"  # "UPDATE <rows>"
        async with self._sessions() as session:
            matched = matched_any(await session.execute(statement, parameters))
            await session.commit()
        return matched
