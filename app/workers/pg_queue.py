"""The worker loop's statements on PostgreSQL, on an asyncpg pool of the loop's own.

They run several times per task (every job is claimed, and finished, by one of them), and each
is atomic by itself; through SQLAlchemy's session each cost several times its round trip. Here
each is compiled once (app/core/pg_compiled.py) from the very statements the session queue runs
(app/workers/repository.py, in their `= ANY(array)` form) and sent as it is: no session, no
BEGIN or COMMIT (but around the outcomes when some are retries: then all are recorded or none).
The pool (`LazyPool`) is the loop's own: a cycle and the lease heartbeat never wait for a busy
job handler's connection. A claim that commits a first batch of leases and then fails leaves
those jobs to be taken over once their leases expire, as a worker that died would."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from app.core.pg_compiled import Compiled, LazyPool
from app.workers import repository
from app.workers.models import Job
from app.workers.outcomes import Outcome
from app.workers.queues import Recorded, one_statement

STATEMENTS = repository.queue_statements(arrays=True)


@functools.cache
def _compiled(statement: Any) -> Compiled:
    return Compiled.of_named(statement)


def _runner(connection: asyncpg.Connection) -> repository.Run:
    async def run(statement: Any, parameters: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        compiled = _compiled(statement)
        rows: list[asyncpg.Record] = await connection.fetch(
            compiled.sql, *compiled.arguments(parameters)
        )
        return rows

    return run


class PgJobQueue:
    """The worker loop's statements straight on asyncpg (PostgreSQL)."""

    def __init__(self, pool: LazyPool) -> None:
        self._pool = pool

    async def cycle(
        self,
        outcomes: Sequence[tuple[int, Outcome]],
        *,
        recorded: Recorded,
        worker: str,
        groups: Sequence[repository.KindGroup],
        total: int,
        now: datetime,
        lease: timedelta,
        claim: bool = True,
    ) -> list[Job]:
        async with self._pool.acquire() as connection:
            run = _runner(connection)
            kept: set[int] = set()
            due: set[int] = set()
            if outcomes:
                # Several statements (a retry each) in a transaction: all recorded or none.
                async with contextlib.AsyncExitStack() as stack:
                    if not one_statement(outcomes):
                        await stack.enter_async_context(connection.transaction())
                    kept = await repository.finish_many_with(
                        run, STATEMENTS, outcomes, worker=worker, now=now, due=due
                    )
            recorded(kept)
            if not claim and not due:
                return []
            return await repository.claim_with(
                run, STATEMENTS, worker=worker, groups=groups, total=total, now=now, lease=lease
            )

    async def extend(self, job_ids: Sequence[int], *, worker: str, until: datetime) -> None:
        async with self._pool.acquire() as connection:
            await repository.extend_leases_with(
                _runner(connection), STATEMENTS, job_ids, worker=worker, until=until
            )

    async def finish_and_release(
        self,
        outcomes: Sequence[tuple[int, Outcome]],
        unfinished: Sequence[int],
        *,
        worker: str,
        now: datetime,
    ) -> set[int]:
        async with self._pool.acquire() as connection, connection.transaction():
            run = _runner(connection)
            kept = (
                await repository.finish_many_with(run, STATEMENTS, outcomes, worker=worker, now=now)
                if outcomes
                else set()
            )
            await repository.release_with(run, STATEMENTS, unfinished, worker=worker)
        return kept
