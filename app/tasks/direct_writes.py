"""PostgreSQL: the writes every task's jobs make, straight on asyncpg.

The submit job's answer and acceptance, the poll's answer and the archive's image row with its
`succeeded` run once or twice per task each; through an SQLAlchemy session each cost several
times its round trips in CPU (the session, its connection checkout, BEGIN and COMMIT, execution
and result machinery). Here they run the same Core statements, compiled once
(app/core/pg_compiled.py), on the handlers' `LazyPool`: a block of one statement as that
statement alone (it commits by itself), a block of several in one asyncpg transaction.

`Writes.run` takes both forms of a write: the direct one, and the session one it falls back to
where there is no pool (SQLite; tests of one handler) or where the direct one raises
`NotComposable` (a decision the one-statement transition does not cover: a notification's outbox
row, a transition that changes nothing). A fallback starts from scratch: nothing the direct
attempt wrote was committed (its transaction rolls back; a block of one statement raises before
it writes). A direct form must not raise `NotComposable` after its `apply_event` wrote: the task
object then holds a row that was rolled back, and `Writes.run` refuses (a RuntimeError) rather
than let the session path decide from it. Every direct form here ends with its transition."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.pg_compiled import LazyPool, compiled_once
from app.tasks import event_repository, pg_transition, repository, service
from app.tasks.models import Task
from app.tasks.states import Decision, Event, decide

log = logging.getLogger(__name__)

T = TypeVar("T")


class NotComposable(Exception):
    """This write needs the session path; the direct attempt committed nothing."""


@dataclass
class Direct:
    """One asyncpg connection of a direct write, and what to do once it has committed."""

    connection: asyncpg.Connection
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # A transition was written into a task object: the write can no longer fall back to the
    # session path, whose decision would start from what this one wrote (see `Writes.run`).
    wrote_task: bool = False

    async def fetch(self, statement: Any, parameters: Mapping[str, Any]) -> list[asyncpg.Record]:
        """The rows of `statement` (compiled once) with `parameters` by name."""
        query = compiled_once(statement)
        rows: list[asyncpg.Record] = await self.connection.fetch(
            query.sql, *query.arguments(parameters)
        )
        return rows

    async def execute(self, statement: Any, parameters: Mapping[str, Any]) -> int:
        """Run `statement`; the number of rows it wrote."""
        query = compiled_once(statement)
        status: str = await self.connection.execute(query.sql, *query.arguments(parameters))
        return int(status.rsplit(" ", 1)[-1])  # "UPDATE 1", "INSERT 0 1"


class Writes:
    """Runs the writes of one kind of job: direct on PostgreSQL, else through a session."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], direct: LazyPool | None = None
    ) -> None:
        self._sessions = sessions
        self._direct = direct

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self._sessions

    async def run(
        self,
        direct: Callable[[Direct], Awaitable[T]] | None,
        in_session: Callable[[AsyncSession], Awaitable[T]],
        *,
        transaction: bool,
    ) -> T:
        """`direct` on the pool (in one transaction with `transaction`, else each statement its
        own: give False only to a write of one statement, before which it may read), else
        `in_session` in a session it commits. The same result either way."""
        if self._direct is not None and direct is not None:
            async with self._direct.acquire() as connection:
                target = Direct(connection)
                try:
                    block = connection.transaction() if transaction else contextlib.nullcontext()
                    async with block:
                        result = await direct(target)
                except NotComposable:
                    if target.wrote_task:
                        raise RuntimeError(
                            "a direct write fell back after it wrote a transition: the session "
                            "path would decide from a task holding what was rolled back"
                        ) from None
                else:
                    _run_all(target.after_commit)
                    return result
        async with self._sessions() as session:
            result = await in_session(session)
            await session.commit()
            return result


def _run_all(actions: list[Callable[[], None]]) -> None:
    for action in actions:
        try:
            action()
        except Exception:  # the commit stands: an action must not make it look failed
            log.exception("an after-commit action failed")


async def reload(direct: Direct, task: Task) -> bool:
    """`repository.reload` on a direct connection."""
    rows = await direct.fetch(repository.row_statement(()), {"w_id": task.id})
    if not rows:
        return False
    repository.refresh_from(task, tuple(rows[0]))
    return True


async def apply_event(
    direct: Direct,
    task: Task,
    event: Event,
    *,
    now: datetime,
    source: str,
    extra: dict[str, Any] | None = None,
    line: dict[str, Any] | None = None,
) -> Decision:
    """`service.apply_event` for a transition written in one statement (`pg_transition`):
    the guarded update with its lines and jobs, decided again from a fresh read when the row
    moved on meanwhile. `NotComposable` (before anything is written) for a decision that needs
    the session path: one that changes nothing, or that opens a notification."""
    lines = [] if line is None else [line]
    for _ in range(10):
        current = service.state_of(task)
        decision = decide(current, event)
        if decision.state is None:
            raise NotComposable
        kinds = service.composable_jobs(task, decision)
        if kinds is None:
            raise NotComposable
        new = decision.state
        values = service.transition_values(current, new, now=now, extra=extra)
        moved = service.transition_event(current, new)
        written = list(lines)
        if moved is not None:
            written.append(event_repository.line(task.id, source=source, at=now, **moved))
        statement, parameters = pg_transition.statement(
            task.id, current, values, written, kinds, now
        )
        rows = await direct.fetch(statement, parameters)
        if rows:
            repository.refresh_from(task, tuple(rows[0]))
            direct.wrote_task = True
            if moved is not None:
                fields = service.transition_log_fields(
                    task.id, task.caller, task.provider_task_id, current, new, source
                )
                direct.after_commit.append(
                    functools.partial(service.log.info, "task transition", extra=fields)
                )
            return decision
        if not await reload(direct, task):
            return Decision(None)
    raise RuntimeError(f"task {task.id} kept changing under a transition")
