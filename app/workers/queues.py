"""Where the worker loop's statements run: `SessionJobQueue` on the SQLAlchemy sessions (SQLite,
and any database), `PgJobQueue` (app/workers/pg_queue.py) straight on asyncpg (PostgreSQL).
Both run the same statements (app/workers/repository.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import autocommit
from app.workers import repository
from app.workers.models import Job
from app.workers.outcomes import Done, Outcome

Recorded = Callable[[set[int]], None]
"""Told, once, that a cycle's outcomes are committed: the ids this worker still held."""


def one_statement(outcomes: Sequence[tuple[int, Outcome]]) -> bool:
    """Whether recording `outcomes` takes one statement at most (only jobs done; each retry
    has one of its own)."""
    return all(isinstance(outcome, Done) for _, outcome in outcomes)


class JobQueue(Protocol):
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
        """Record `outcomes`, all or none, and call `recorded` as soon as they are committed
        (whatever happens next: a claim that fails or is cancelled never records them again);
        then lease due jobs: with `claim`, or when one of the outcomes left its job due again
        at once (enqueued again while it ran)."""

    async def extend(self, job_ids: Sequence[int], *, worker: str, until: datetime) -> None:
        """Keep the leases of jobs this worker still runs."""

    async def finish_and_release(
        self,
        outcomes: Sequence[tuple[int, Outcome]],
        unfinished: Sequence[int],
        *,
        worker: str,
        now: datetime,
    ) -> set[int]:
        """At shutdown, in one transaction: record `outcomes`, give back `unfinished`."""


class SessionJobQueue:
    """The statements on the application's sessions."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

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
        """One transaction on SQLite, and on PostgreSQL when some outcome is a retry; else, on
        PostgreSQL, each statement commits by itself (the outcomes' update, the claim's ranking
        read, its conditional take: each atomic on its own), with no BEGIN or COMMIT."""
        async with self._sessions() as session:
            alone = one_statement(outcomes) and await autocommit(session)
            due: set[int] = set()
            kept = (
                await repository.finish_many(session, outcomes, worker=worker, now=now, due=due)
                if outcomes
                else set()
            )
            if alone:
                recorded(kept)
            jobs = []
            if claim or due:
                jobs = await repository.claim_groups(
                    session, worker=worker, groups=groups, total=total, now=now, lease=lease
                )
            await session.commit()
        if not alone:
            recorded(kept)
        return jobs

    async def extend(self, job_ids: Sequence[int], *, worker: str, until: datetime) -> None:
        async with self._sessions.begin() as session:
            await repository.extend_leases(session, job_ids, worker=worker, until=until)

    async def finish_and_release(
        self,
        outcomes: Sequence[tuple[int, Outcome]],
        unfinished: Sequence[int],
        *,
        worker: str,
        now: datetime,
    ) -> set[int]:
        async with self._sessions.begin() as session:
            kept = (
                await repository.finish_many(session, outcomes, worker=worker, now=now)
                if outcomes
                else set()
            )
            await repository.release(session, unfinished, worker=worker)
        return kept
