"""All queries on the job table: enqueue, claim with a lease, finish, extend, release."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, or_, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import literal, null

from app.core.db import as_expression, matched_any, upsert_insert
from app.workers.models import Job, JobKind, JobState
from app.workers.outcomes import Done, Outcome
from app.workers.outcomes import RetryAt as RetryAt  # tests/callbacks import it from here still


async def enqueue(session: AsyncSession, kind: JobKind, task_id: str, run_at: datetime) -> None:
    """Add a job, or bring the open job of this kind for this task forward to `run_at`."""
    await session.execute(enqueue_statement(upsert_insert(session), kind, task_id, run_at))


def enqueue_statement(
    insert: Any,
    kind: Any,
    task_id: Any,
    run_at: Any,
    *,
    when: ColumnElement[bool] | None = None,
) -> Any:
    """The upsert of an open job (values or bound parameters), made only `when` holds: the one
    statement that enqueues, for the ORM paths and composed into the callback fast path."""
    rows = select(
        as_expression(kind, Job.kind),
        as_expression(task_id, Job.task_id),
        literal(JobState.QUEUED, Job.state.type),
        as_expression(run_at, Job.run_at),
        literal(0, Job.attempts.type),
        as_expression(run_at, Job.created_at),
        as_expression(run_at, Job.updated_at),
        literal(False, Job.rerun.type),
    ).where(true() if when is None else when)  # a WHERE also keeps SQLite's parser off ON
    columns = [
        "kind",
        "task_id",
        "state",
        "run_at",
        "attempts",
        "created_at",
        "updated_at",
        "rerun",
    ]
    statement = insert(Job).from_select(columns, rows)
    return statement.on_conflict_do_update(
        index_elements=[Job.kind, Job.task_id],
        index_where=text("state = 'queued'"),
        set_={
            "run_at": case(
                (statement.excluded.run_at < Job.run_at, statement.excluded.run_at),
                else_=Job.run_at,
            ),
            # A worker is running it: what it read may predate this request, so run it again.
            "rerun": or_(Job.lease_owner.is_not(None), Job.rerun),
        },
    )


async def claim(
    session: AsyncSession,
    *,
    worker: str,
    kinds: Sequence[JobKind],
    now: datetime,
    lease: timedelta,
    limit: int,
) -> list[Job]:
    """Lease up to `limit` due jobs in one statement; rows locked by others are skipped."""
    due = (
        select(Job.id)
        .where(
            Job.state == JobState.QUEUED,
            Job.kind.in_(kinds),
            Job.run_at <= now,
            or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
        )
        .order_by(Job.run_at, Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    statement = (
        update(Job)
        .where(Job.id.in_(select(due.c.id)))
        .values(
            lease_owner=worker,
            lease_expires_at=now + lease,
            attempts=Job.attempts + 1,
            rerun=False,
            updated_at=now,
        )
        .returning(Job)
        .execution_options(synchronize_session=False)
    )
    result = await session.scalars(statement)
    return list(result.all())


async def finish(
    session: AsyncSession, job_id: int, *, worker: str, outcome: Outcome, now: datetime
) -> bool:
    """Record the outcome, if this worker still holds the lease. A job enqueued again while it
    ran (`rerun`) stays queued and is due at once."""
    values: dict[str, object] = {
        "lease_owner": None,
        "lease_expires_at": None,
        "updated_at": now,
        "rerun": False,
    }
    if isinstance(outcome, Done):
        values |= {
            "state": case((Job.rerun, JobState.QUEUED), else_=JobState.DONE),
            "finished_at": case((Job.rerun, null()), else_=literal(now, Job.finished_at.type)),
        }
    else:
        values |= {
            "run_at": case(
                (Job.rerun, literal(now, Job.run_at.type)),
                else_=literal(outcome.when, Job.run_at.type),
            ),
            "last_error": outcome.error[:2000],
        }
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker, Job.state == JobState.QUEUED)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return matched_any(result)


async def extend_leases(
    session: AsyncSession, job_ids: Sequence[int], *, worker: str, until: datetime
) -> None:
    """Keep the leases of jobs this worker is still running."""
    if not job_ids:
        return
    await session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.lease_owner == worker)
        .values(lease_expires_at=until)
        .execution_options(synchronize_session=False)
    )


async def release(session: AsyncSession, job_ids: Sequence[int], *, worker: str) -> None:
    """Give back the leases of unfinished jobs so another worker can take them at once.

    The interrupted run does not count as an attempt (nor, on the next claim, as a take-over)."""
    if not job_ids:
        return
    await session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.lease_owner == worker, Job.state == JobState.QUEUED)
        .values(
            lease_owner=None,
            lease_expires_at=None,
            attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
        )
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Due jobs of one kind: waiting for a worker, held by one, and the oldest waiting."""

    waiting: int
    running: int
    oldest_due: datetime | None


async def queue_stats(session: AsyncSession, now: datetime) -> dict[str, QueueStats]:
    """Per kind, the due queued jobs (one statement over the partial index of open jobs)."""
    free = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
    rows = await session.execute(
        select(
            Job.kind,
            func.sum(case((free, 1), else_=0)),
            func.sum(case((free, 0), else_=1)),
            func.min(case((free, Job.run_at), else_=None)),
        )
        .where(Job.state == JobState.QUEUED, Job.run_at <= now)
        .group_by(Job.kind)
    )
    return {
        kind: QueueStats(int(waiting or 0), int(running or 0), oldest)
        for kind, waiting, running, oldest in rows
    }
