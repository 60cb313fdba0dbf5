"""All queries on the job table: enqueue, claim with a lease, finish, extend, release."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    case,
    column,
    func,
    or_,
    select,
    table,
    text,
    true,
    update,
)
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
    """Lease up to `limit` due jobs, shared fairly between callers; rows locked by others are
    skipped, and a row another worker leased meanwhile is never taken (the UPDATE checks again).

    Fair turns: each caller's due jobs are numbered oldest first (1, 2, 3...), and the number
    starts after the jobs of that caller already running on any replica. Jobs are taken by
    that turn, then by age: the caller that holds the fewest slots goes first, and two callers
    with backlogs alternate instead of the older backlog taking every slot."""
    if limit <= 0 or not kinds:
        return []
    order = await _fair_candidates(session, kinds, now, limit * CANDIDATE_SLACK)
    if not order:
        return []
    locked = set(
        (
            await session.scalars(
                select(Job.id)
                .where(Job.id.in_(order), *_due(kinds, now))
                .with_for_update(skip_locked=True)
            )
        ).all()
    )
    chosen = [job_id for job_id in order if job_id in locked][:limit]
    if not chosen:
        return []
    statement = (
        update(Job)
        .where(Job.id.in_(chosen), *_due(kinds, now))
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
    rank = {job_id: index for index, job_id in enumerate(chosen)}
    return sorted(result.all(), key=lambda job: rank[job.id])


# The two columns of the task table that fair claiming reads (jobs.task_id references it): named
# here rather than imported, as the workers room sits below the tasks room.
Task = table("tasks", column("id", String(36)), column("caller", String(64)))

# Candidates looked at per free slot: room for rows that other replicas hold locked right now.
CANDIDATE_SLACK = 4


def _due(kinds: Sequence[JobKind], now: datetime) -> list[ColumnElement[bool]]:
    """Queued, due, of these kinds, and not leased (or leased by a worker that is gone)."""
    return [
        Job.state == JobState.QUEUED,
        Job.kind.in_(kinds),
        Job.run_at <= now,
        or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
    ]


async def _fair_candidates(
    session: AsyncSession, kinds: Sequence[JobKind], now: datetime, count: int
) -> list[int]:
    """Ids of up to `count` due jobs in fair order (see `claim`), read without locks."""
    running = (
        select(Task.c.caller.label("caller"), func.count().label("held"))
        .select_from(Job)
        .join(Task, Task.c.id == Job.task_id)
        .where(Job.state == JobState.QUEUED, Job.lease_expires_at >= now)
        .group_by(Task.c.caller)
        .subquery("running")
    )
    turn = func.row_number().over(
        partition_by=Task.c.caller, order_by=(Job.run_at, Job.id)
    ) + func.coalesce(running.c.held, 0)
    ranked = (
        select(Job.id.label("id"), Job.run_at.label("run_at"), turn.label("turn"))
        .select_from(Job)
        .join(Task, Task.c.id == Job.task_id)
        .outerjoin(running, running.c.caller == Task.c.caller)
        .where(*_due(kinds, now))
        .subquery("ranked")
    )
    rows = await session.scalars(
        select(ranked.c.id).order_by(ranked.c.turn, ranked.c.run_at, ranked.c.id).limit(count)
    )
    return list(rows.all())


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
