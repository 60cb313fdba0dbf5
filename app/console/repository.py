"""The console's queries: task search across callers, a task's reference images, and the
overview's counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.archive.models import TaskImage
from app.callbacks.models import CallbackDelivery, DeliveryOutcome
from app.tasks.events import EventKind, TaskEvent
from app.tasks.models import Task
from app.tasks.references import TaskReference
from app.tasks.repository import newest_first
from app.tasks.states import TaskStatus
from app.workers.models import Job, JobKind, JobState

# Outcomes of upstream calls that are not a success (app/tasks/submission.py, polling.py).
UPSTREAM_FAILURES = ("rejected", "retry", "uncertain", "error")
_FINAL_FROM_POLL = (TaskStatus.ARCHIVING.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What the task list shows: every field optional."""

    status: str | None = None
    caller: str | None = None
    since: datetime | None = None
    search: str | None = None


async def list_tasks(
    session: AsyncSession, where: TaskFilter, *, limit: int, before: tuple[datetime, str] | None
) -> Sequence[Task]:
    """Tasks of every caller, newest first, strictly after the keyset position `before`."""
    query = select(Task)
    if where.status is not None:
        query = query.where(Task.status == where.status)
    if where.caller is not None:
        query = query.where(Task.caller == where.caller)
    if where.since is not None:
        query = query.where(Task.created_at >= where.since)
    if where.search is not None:
        query = query.where(
            or_(
                Task.id.startswith(where.search, autoescape=True),
                Task.provider_task_id.startswith(where.search, autoescape=True),
            )
        )
    return (await session.scalars(newest_first(query, before=before, limit=limit))).all()


# A loose index scan: one probe of ix_tasks_caller_created per caller, where SELECT DISTINCT
# would read every task (neither database skips through an index on its own).
_CALLERS = text(
    """
    WITH RECURSIVE found(caller) AS (
        SELECT (SELECT caller FROM tasks ORDER BY caller LIMIT 1)
        UNION ALL
        SELECT (SELECT caller FROM tasks WHERE caller > found.caller ORDER BY caller LIMIT 1)
        FROM found WHERE found.caller IS NOT NULL
    )
    SELECT caller FROM found WHERE caller IS NOT NULL
    """
)


async def callers(session: AsyncSession) -> list[str]:
    """The callers that have tasks, in order, for the filter form."""
    return list((await session.scalars(_CALLERS)).all())


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """A reference image of a task and, for a `task` source, that task's archived image row."""

    reference: TaskReference
    source_image_recorded: bool  # a `task` source whose image row exists
    source_thumbnail_key: str | None


async def references(session: AsyncSession, task_id: str) -> list[ReferenceRow]:
    """The task's reference images in request order, in one query."""
    source_image = and_(
        TaskImage.task_id == TaskReference.source_task_id,
        TaskImage.index == TaskReference.source_index,
    )
    rows = await session.execute(
        select(TaskReference, TaskImage.task_id, TaskImage.thumbnail_key)
        .outerjoin(TaskImage, source_image)
        .where(TaskReference.task_id == task_id)
        .order_by(TaskReference.position)
    )
    return [ReferenceRow(row, image is not None, thumb) for row, image, thumb in rows]


async def reference(session: AsyncSession, task_id: str, position: int) -> TaskReference | None:
    """One reference image of a task."""
    return await session.get(TaskReference, (task_id, position))


async def deliveries(session: AsyncSession, task_id: str) -> list[CallbackDelivery]:
    """The distinct callback bodies received for a task, oldest first."""
    rows = await session.scalars(
        select(CallbackDelivery)
        .where(CallbackDelivery.task_id == task_id)
        .order_by(CallbackDelivery.received_at, CallbackDelivery.digest)
    )
    return list(rows.all())


async def status_counts(session: AsyncSession, since: datetime) -> dict[str, int]:
    """Tasks created since `since`, by their status now."""
    rows = await session.execute(
        select(Task.status, func.count()).where(Task.created_at >= since).group_by(Task.status)
    )
    return {status: int(count) for status, count in rows}


@dataclass(frozen=True, slots=True)
class Backlog:
    """Open archive work: jobs waiting (due or backing off), tasks archiving, the oldest due."""

    jobs_open: int
    jobs_due: int
    tasks_archiving: int
    oldest_due: datetime | None


async def archive_backlog(session: AsyncSession, now: datetime) -> Backlog:
    """The archive queue as it stands."""
    open_jobs = (Job.kind == JobKind.ARCHIVE) & (Job.state == JobState.QUEUED)
    row = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(Job.run_at <= now),
                func.min(Job.run_at).filter(Job.run_at <= now),
            ).where(open_jobs)
        )
    ).one()
    archiving = await session.scalar(
        select(func.count()).where(Task.status == TaskStatus.ARCHIVING.value)
    )
    return Backlog(int(row[0]), int(row[1] or 0), int(archiving or 0), row[2])


async def failed_by_code(session: AsyncSession, since: datetime) -> list[tuple[str, int]]:
    """Tasks that failed since `since`, by error code, most frequent first."""
    count = func.count().label("n")
    rows = await session.execute(
        select(func.coalesce(Task.error_code, "unknown"), count)
        .where(Task.status == TaskStatus.FAILED.value, Task.completed_at >= since)
        .group_by(Task.error_code)
        .order_by(count.desc())
    )
    return [(str(code), int(n)) for code, n in rows]


async def upstream_failures(session: AsyncSession, since: datetime) -> list[tuple[str, str, int]]:
    """Failed calls to the provider since `since`: (submit|poll, outcome, count)."""
    count = func.count().label("n")
    rows = await session.execute(
        select(TaskEvent.kind, TaskEvent.outcome, count)
        .where(
            TaskEvent.at >= since,
            TaskEvent.kind.in_((EventKind.SUBMIT, EventKind.POLL)),
            TaskEvent.outcome.in_(UPSTREAM_FAILURES),
        )
        .group_by(TaskEvent.kind, TaskEvent.outcome)
        .order_by(count.desc())
    )
    return [(str(kind), str(outcome), int(n)) for kind, outcome, n in rows]


@dataclass(frozen=True, slots=True)
class CallbackCounts:
    """Provider callbacks recorded in the inbox since a moment."""

    accepted: int  # distinct bodies run through the state machine
    duplicate: int  # repeats of a body already received
    rejected: int  # recorded but refused: malformed, or about another upstream task


async def callback_counts(session: AsyncSession, since: datetime) -> CallbackCounts:
    """Accepted, duplicate and rejected deliveries (unknown tasks and bad tokens are never
    recorded: the process counters show those)."""
    first = CallbackDelivery.received_at >= since
    rows = await session.execute(
        select(
            CallbackDelivery.outcome,
            func.count().filter(first),
            func.sum(CallbackDelivery.deliveries - 1),
        )
        .where(CallbackDelivery.last_received_at >= since)
        .group_by(CallbackDelivery.outcome)
    )
    accepted = duplicate = rejected = 0
    for outcome, new, repeats in rows:
        duplicate += int(repeats or 0)
        if outcome == DeliveryOutcome.APPLIED:
            accepted += int(new or 0)
        else:
            rejected += int(new or 0)
    return CallbackCounts(accepted, duplicate, rejected)


async def recovered_by_polling(session: AsyncSession, since: datetime) -> int:
    """Tasks whose final upstream state polling found without any callback claiming it: the
    provider's callback was lost (or never sent), and the poll made up for it."""
    query = (
        select(func.count(func.distinct(TaskEvent.task_id)))
        .join(Task, Task.id == TaskEvent.task_id)
        .where(
            TaskEvent.at >= since,
            TaskEvent.kind == EventKind.TRANSITION,
            TaskEvent.source == "poll",
            TaskEvent.to_status.in_(_FINAL_FROM_POLL),
            Task.final_claimed_at.is_(None),
            # The service's own give-up after IMAGEGEN_POLL_MAX_WAIT_SECONDS is no recovery.
            or_(
                TaskEvent.to_status != TaskStatus.FAILED.value,
                Task.error_code.is_distinct_from("provider_timeout"),
            ),
        )
    )
    return int(await session.scalar(query) or 0)
