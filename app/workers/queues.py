"""Where the worker loop's statements run: `SessionJobQueue` on the SQLAlchemy sessions (SQLite,
and any database), `PgJobQueue` (app/workers/pg_queue.py) straight on asyncpg (PostgreSQL).
Both run the same statements (app/workers/repository.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import autocommit
from app.workers import repository
from app.workers.models import Job
from app.workers.outcomes import Outcome


class ClaimFailed(Exception):
    """The outcomes of a cycle were recorded (committed), then its claim failed."""

    def __init__(self, kept: set[int]) -> None:
        super().__init__("claiming jobs failed after their outcomes were recorded")
        self.kept = kept


class JobQueue(Protocol):
    async def cycle(
        self,
        outcomes: Sequence[tuple[int, Outcome]],
        *,
        worker: str,
        groups: Sequence[repository.KindGroup],
        total: int,
        now: datetime,
        lease: timedelta,
    ) -> tuple[set[int], list[Job]]:
        """Record `outcomes` (the ids this worker still held), then lease due jobs. Raises
        ClaimFailed when the outcomes stay recorded although the claim failed."""

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
        worker: str,
        groups: Sequence[repository.KindGroup],
        total: int,
        now: datetime,
        lease: timedelta,
    ) -> tuple[set[int], list[Job]]:
        """One transaction on SQLite; on PostgreSQL each statement commits by itself."""
        async with self._sessions() as session:
            # Each statement is atomic on its own (an outcome's update, the claim's ranking
            # read, its conditional take): on PostgreSQL none waits for a BEGIN or a COMMIT.
            alone = await autocommit(session)
            kept = (
                await repository.finish_many(session, outcomes, worker=worker, now=now)
                if outcomes
                else set()
            )
            try:
                jobs = await repository.claim_groups(
                    session, worker=worker, groups=groups, total=total, now=now, lease=lease
                )
                await session.commit()
            except Exception as exc:
                if alone and outcomes:
                    raise ClaimFailed(kept) from exc
                raise
        return kept, jobs

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
