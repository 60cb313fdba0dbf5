"""All queries on the job table: enqueue, claim with a lease, finish, extend, release."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    Table,
    Text,
    any_,
    bindparam,
    case,
    column,
    func,
    literal_column,
    or_,
    select,
    table,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import literal, null

from app.core.db import UTCDateTime, as_expression, upsert_insert
from app.workers import signals
from app.workers.models import Job, JobKind, JobState
from app.workers.outcomes import Done, Outcome
from app.workers.outcomes import RetryAt as RetryAt  # tests/callbacks import it from here still


async def enqueue(session: AsyncSession, kind: JobKind, task_id: str, run_at: datetime) -> None:
    """Add a job, or bring the open job of this kind for this task forward to `run_at`."""
    # On the session's connection (through the session, parameters make an ORM bulk insert),
    # after the flush the session would have made (the task row the job references, say).
    await session.flush()
    signals.note_enqueued(run_at)
    await (await session.connection()).execute(
        enqueue_upsert(upsert_insert(session)), enqueue_parameters(kind, task_id, run_at)
    )


def enqueue_parameters(kind: JobKind, task_id: str, run_at: datetime) -> dict[str, Any]:
    """The parameters of `enqueue_upsert`'s statement."""
    return {"kind": kind.value, "task_id": task_id, "run_at": run_at}


@functools.cache
def enqueue_upsert(insert: Any) -> Any:
    """The enqueue upsert with bound parameters, built once per dialect's `insert` (every step of
    a task enqueues the next: built per call, the statement cost more than its round trip)."""
    return enqueue_statement(
        insert,
        bindparam("kind", type_=String(16)),
        bindparam("task_id", type_=String(36)),
        bindparam("run_at", type_=UTCDateTime()),
    )


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


# The worker loop's statements (claim, finish, lease renewal and release) are SQLAlchemy Core,
# built once at import with bound parameters: they run several times per task, and building and
# cache-keying an ORM statement per call cost more than running it.
JOBS = cast(Table, Job.__table__)
_NOW = bindparam("now", type_=UTCDateTime())
_WORKER = bindparam("worker", type_=String(64))


# Queued, due and not leased (or leased by a worker that is gone).
_FREE_TO_TAKE = (
    JOBS.c.state == JobState.QUEUED,
    JOBS.c.run_at <= _NOW,
    or_(JOBS.c.lease_expires_at.is_(None), JOBS.c.lease_expires_at < _NOW),
)
_HELD_BY_WORKER = (JOBS.c.lease_owner == _WORKER, JOBS.c.state == JobState.QUEUED)

Run = Callable[[Any, Mapping[str, Any]], Awaitable[Sequence[Mapping[str, Any]]]]
"""Runs one of the queue's statements with its parameters; its rows, as mappings. On a session
(`session_runner`), or compiled once on a plain asyncpg connection (app/workers/pg_queue.py)."""


def session_runner(session: AsyncSession) -> Run:
    async def run(statement: Any, parameters: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        rows = (await session.execute(statement, dict(parameters))).mappings().all()
        return cast(Sequence[Mapping[str, Any]], rows)

    return run


def _one_of(column: Any, name: str, arrays: bool) -> ColumnElement[bool]:
    """`column` is one of the list `name`: `= ANY(array)` (one SQL text for any length, as
    asyncpg binds lists), else an expanding IN (SQLite; rendered for each length)."""
    if arrays:
        return cast(
            ColumnElement[bool],
            column == any_(bindparam(name, type_=postgresql.ARRAY(column.type))),
        )
    return cast(ColumnElement[bool], column.in_(bindparam(name, expanding=True)))


# The two columns of the task table that fair claiming reads (jobs.task_id references it): named
# here rather than imported, as the workers room sits below the tasks room.
Task = table("tasks", column("id", String(36)), column("caller", String(64)))

# Candidates looked at per free slot: room for rows that other replicas hold locked right now.
CANDIDATE_SLACK = 4


@dataclass(frozen=True, slots=True)
class KindGroup:
    """Job kinds claimed together, and the most jobs of them one claim may take."""

    kinds: tuple[str, ...]
    limit: int


async def claim(
    session: AsyncSession,
    *,
    worker: str,
    kinds: Sequence[JobKind],
    now: datetime,
    lease: timedelta,
    limit: int,
) -> list[Job]:
    """Lease up to `limit` due jobs of `kinds`, shared fairly between callers (see
    `claim_with`)."""
    return await claim_groups(
        session,
        worker=worker,
        groups=[KindGroup(tuple(kinds), limit)],
        total=limit,
        now=now,
        lease=lease,
    )


async def claim_groups(
    session: AsyncSession,
    *,
    worker: str,
    groups: Sequence[KindGroup],
    total: int,
    now: datetime,
    lease: timedelta,
) -> list[Job]:
    """`claim_with` on the session."""
    return await claim_with(
        session_runner(session),
        EXPANDING,
        worker=worker,
        groups=groups,
        total=total,
        now=now,
        lease=lease,
    )


async def claim_with(
    run: Run,
    statements: QueueStatements,
    *,
    worker: str,
    groups: Sequence[KindGroup],
    total: int,
    now: datetime,
    lease: timedelta,
) -> list[Job]:
    """Lease up to `total` due jobs, at most `group.limit` of each group's kinds, the groups
    served in the order given; rows locked by others are skipped, and a row another worker
    leased meanwhile is never taken (the UPDATE checks again).

    Fair turns: each caller's due jobs of a group are numbered oldest first (1, 2, 3...), and
    the number starts after the jobs of that caller already running on any replica. Jobs are
    taken by that turn, then by age: the caller that holds the fewest slots goes first, and two
    callers with backlogs alternate instead of the older backlog taking every slot.

    One statement ranks the candidates of every group; then each round leases the first ones
    that fit (one UPDATE whose sub-select locks with SKIP LOCKED), and a further round only
    runs when some were skipped (held by another replica at that moment)."""
    groups = [group for group in groups if group.limit > 0 and group.kinds]
    total = min(total, sum(group.limit for group in groups))
    if total <= 0:
        return []
    params: dict[str, object] = {"now": now}
    for index, group in enumerate(groups):
        params[f"kinds_{index}"] = list(group.kinds)
        params[f"count_{index}"] = min(group.limit, total) * CANDIDATE_SLACK
    rows = await run(statements.candidates(len(groups)), params)
    waiting: list[list[int]] = [[] for _ in groups]
    for row in rows:
        waiting[row["grp"]].append(row["id"])
    rank = {row["id"]: position for position, row in enumerate(rows)}
    group_of = {kind: index for index, group in enumerate(groups) for kind in group.kinds}
    room = [group.limit for group in groups]
    taken: list[Job] = []
    while len(taken) < total:
        batch: list[int] = []
        for index, candidates in enumerate(waiting):
            count = min(room[index], total - len(taken) - len(batch))
            batch += candidates[:count]
            del candidates[:count]
        if not batch:
            break
        taking = {"ids": batch, "now": now, "worker": worker, "until": now + lease}
        for row in await run(statements.take, taking):
            job = Job(**row)
            room[group_of[job.kind]] -= 1
            taken.append(job)
    return sorted(taken, key=lambda job: rank[job.id])


@functools.cache
def _candidates_statement(groups: int, arrays: bool) -> Any:
    """(id, group) of due jobs in fair order (see `claim_groups`), read without locks: for each
    group `i`, the first `count_i` of the kinds `kinds_i`."""
    running = (
        select(Task.c.caller.label("caller"), func.count().label("held"))
        .select_from(JOBS)
        .join(Task, Task.c.id == JOBS.c.task_id)
        .where(JOBS.c.state == JobState.QUEUED, JOBS.c.lease_expires_at >= _NOW)
        .group_by(Task.c.caller)
        .cte("running")
    )
    members = []
    for index in range(groups):
        turn = func.row_number().over(
            partition_by=Task.c.caller, order_by=(JOBS.c.run_at, JOBS.c.id)
        ) + func.coalesce(running.c.held, 0)
        ranked = (
            select(JOBS.c.id.label("id"), JOBS.c.run_at.label("run_at"), turn.label("turn"))
            .select_from(JOBS)
            .join(Task, Task.c.id == JOBS.c.task_id)
            .outerjoin(running, running.c.caller == Task.c.caller)
            .where(_one_of(JOBS.c.kind, f"kinds_{index}", arrays), *_FREE_TO_TAKE)
            .subquery(f"ranked_{index}")
        )
        first = (
            select(
                ranked.c.id,
                literal_column(str(index), Integer).label("grp"),
                ranked.c.turn,
                ranked.c.run_at,
            )
            .order_by(ranked.c.turn, ranked.c.run_at, ranked.c.id)
            .limit(bindparam(f"count_{index}", type_=Integer))
            .subquery(f"first_{index}")
        )
        members.append(select(*first.c))
    candidates = (members[0] if groups == 1 else union_all(*members)).subquery("candidates")
    return select(candidates.c.id, candidates.c.grp).order_by(
        candidates.c.grp, candidates.c.turn, candidates.c.run_at, candidates.c.id
    )


@dataclass(frozen=True, slots=True)
class QueueStatements:
    """The statements of the worker loop, in one of two forms of their id lists (`_one_of`)."""

    arrays: bool
    take: Any
    finish_done: Any
    finish_retry: Any
    extend: Any
    release: Any

    def candidates(self, groups: int) -> Any:
        """(id, grp) of due jobs in fair order (see `claim_groups`)."""
        return _candidates_statement(groups, self.arrays)


@functools.cache
def queue_statements(arrays: bool) -> QueueStatements:
    """Built once per form: with `arrays` for PostgreSQL's asyncpg path, else expanding IN."""
    # Lease the given jobs that are still free to take and not locked by another claimer. The
    # lock is a CTE (never folded into the UPDATE, being a locking SELECT) joined on the primary
    # key: as a sub-select in `id IN (...)`, PostgreSQL's generic plan ran it once per due row.
    locked = (
        select(JOBS.c.id)
        .where(_one_of(JOBS.c.id, "ids", arrays), *_FREE_TO_TAKE)
        .with_for_update(skip_locked=True)
        .cte("locked")
    )
    take = (
        update(JOBS)
        .where(JOBS.c.id == locked.c.id, *_FREE_TO_TAKE)
        .values(
            lease_owner=_WORKER,
            lease_expires_at=bindparam("until", type_=UTCDateTime()),
            attempts=JOBS.c.attempts + 1,
            rerun=False,
            updated_at=_NOW,
        )
        .returning(*JOBS.c)
    )
    # A job enqueued again while it ran (`rerun`) stays queued and is due at once.
    finish_done = (
        update(JOBS)
        .where(_one_of(JOBS.c.id, "ids", arrays), *_HELD_BY_WORKER)
        .values(
            lease_owner=None,
            lease_expires_at=None,
            updated_at=_NOW,
            rerun=False,
            state=case((JOBS.c.rerun, JobState.QUEUED), else_=JobState.DONE),
            finished_at=case((JOBS.c.rerun, null()), else_=_NOW),
        )
        .returning(JOBS.c.id, (JOBS.c.state == JobState.QUEUED).label("due"))
    )
    finish_retry = (
        update(JOBS)
        .where(JOBS.c.id == bindparam("job_id", type_=JOBS.c.id.type), *_HELD_BY_WORKER)
        .values(
            lease_owner=None,
            lease_expires_at=None,
            updated_at=_NOW,
            rerun=False,
            run_at=case((JOBS.c.rerun, _NOW), else_=bindparam("retry_at", type_=UTCDateTime())),
            last_error=bindparam("error", type_=Text()),
        )
        .returning(JOBS.c.id, (JOBS.c.run_at <= _NOW).label("due"))
    )
    extend = (
        update(JOBS)
        .where(_one_of(JOBS.c.id, "ids", arrays), JOBS.c.lease_owner == _WORKER)
        .values(lease_expires_at=bindparam("until", type_=UTCDateTime()))
        .returning(JOBS.c.id)
    )
    release = (
        update(JOBS)
        .where(_one_of(JOBS.c.id, "ids", arrays), *_HELD_BY_WORKER)
        .values(
            lease_owner=None,
            lease_expires_at=None,
            attempts=case((JOBS.c.attempts > 0, JOBS.c.attempts - 1), else_=0),
        )
        .returning(JOBS.c.id)
    )
    return QueueStatements(arrays, take, finish_done, finish_retry, extend, release)


EXPANDING = queue_statements(arrays=False)


async def finish(
    session: AsyncSession, job_id: int, *, worker: str, outcome: Outcome, now: datetime
) -> bool:
    """Record the outcome, if this worker still holds the lease. A job enqueued again while it
    ran (`rerun`) stays queued and is due at once."""
    return job_id in await finish_many(session, [(job_id, outcome)], worker=worker, now=now)


async def finish_many(
    session: AsyncSession,
    outcomes: Sequence[tuple[int, Outcome]],
    *,
    worker: str,
    now: datetime,
    due: set[int] | None = None,
) -> set[int]:
    """`finish_many_with` on the session."""
    return await finish_many_with(
        session_runner(session), EXPANDING, outcomes, worker=worker, now=now, due=due
    )


async def finish_many_with(
    run: Run,
    statements: QueueStatements,
    outcomes: Sequence[tuple[int, Outcome]],
    *,
    worker: str,
    now: datetime,
    due: set[int] | None = None,
) -> set[int]:
    """Record the outcomes of several jobs (one statement for all that are done, one per retry);
    the ids of those this worker still held. `due`, when given, gets the ids of the jobs due
    again at once: enqueued again while they ran (`rerun`), or retried at once."""
    kept: set[int] = set()
    done = [job_id for job_id, outcome in outcomes if isinstance(outcome, Done)]
    rows: list[Any] = []
    if done:
        rows += await run(statements.finish_done, {"ids": done, "worker": worker, "now": now})
    for job_id, outcome in outcomes:
        if isinstance(outcome, Done):
            continue
        params = {
            "job_id": job_id,
            "worker": worker,
            "now": now,
            "retry_at": outcome.when,
            "error": outcome.error[:2000],
        }
        rows += await run(statements.finish_retry, params)
    kept.update(row["id"] for row in rows)
    if due is not None:
        due.update(row["id"] for row in rows if row["due"])
    return kept


async def extend_leases(
    session: AsyncSession, job_ids: Sequence[int], *, worker: str, until: datetime
) -> None:
    """Keep the leases of jobs this worker is still running."""
    await extend_leases_with(
        session_runner(session), EXPANDING, job_ids, worker=worker, until=until
    )


async def extend_leases_with(
    run: Run, statements: QueueStatements, job_ids: Sequence[int], *, worker: str, until: datetime
) -> None:
    if job_ids:
        await run(statements.extend, {"ids": list(job_ids), "worker": worker, "until": until})


async def release(session: AsyncSession, job_ids: Sequence[int], *, worker: str) -> None:
    """Give back the leases of unfinished jobs so another worker can take them at once.

    The interrupted run does not count as an attempt (nor, on the next claim, as a take-over)."""
    await release_with(session_runner(session), EXPANDING, job_ids, worker=worker)


async def release_with(
    run: Run, statements: QueueStatements, job_ids: Sequence[int], *, worker: str
) -> None:
    if job_ids:
        await run(statements.release, {"ids": list(job_ids), "worker": worker})


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
