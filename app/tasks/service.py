"""Task use cases: create with idempotency, apply news through the state machine, present."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import bindparam, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.callback_tokens import new_nonce
from app.core.clock import utcnow
from app.core.db import after_commit, autocommit
from app.core.errors import ApiProblem
from app.core.limits import CallerLimits
from app.core.pg_compiled import compiled_once
from app.provider.pricing import estimate_credits
from app.tasks import (
    event_repository,
    notification_repository,
    pg_transition,
    quotas,
    reference_repository,
    repository,
)
from app.tasks.events import EventKind
from app.tasks.models import CreditsSource, SubmitState, Task
from app.tasks.notifications import Notification, event_type
from app.tasks.references import ReferenceSource, ResolvedReference, TaskReference
from app.tasks.schemas import (
    CreateTaskRequest,
    ErrorOut,
    ImageOut,
    NotificationOut,
    ReferenceOut,
    TaskOut,
    TaskReferenceOut,
    UploadReferenceOut,
    UrlReferenceOut,
    UsageOut,
)
from app.tasks.states import Decision, Effect, Event, TaskState, TaskStatus, decide
from app.workers import repository as jobs
from app.workers.models import Job, JobKind

log = logging.getLogger(__name__)

UNLIMITED = CallerLimits()

_EFFECT_JOBS = {
    Effect.CONFIRM: JobKind.POLL,
    Effect.ARCHIVE: JobKind.ARCHIVE,
    Effect.POLL: JobKind.POLL,
}


Reference = TaskReference | ResolvedReference
"""A reference row, or what a new task's row is written from: they present the same."""


def _submit_job(insert: Any, task_id: Any) -> Any:
    """`jobs.enqueue`'s statement for the submit job of `task_id`, run at `:job_run_at`."""
    return jobs.enqueue_statement(
        insert,
        literal(JobKind.SUBMIT, Job.kind.type),
        task_id,
        bindparam("job_run_at", type_=Job.run_at.type),
    )


def _task_with_submit_job() -> Any:
    """PostgreSQL: the task's insert and its submit job's in one statement (one round trip);
    the job is inserted only with the task, and RETURNING says whether it was."""
    task = repository.insert_task_statement(postgresql.insert).cte("new_task")
    return _submit_job(postgresql.insert, task.c.id).add_cte(task).returning(Job.task_id)


# Built once (see repository._INSERT_TASK).
_TASK_WITH_SUBMIT_JOB = _task_with_submit_job()
_SQLITE_SUBMIT_JOB = _submit_job(sqlite.insert, bindparam("job_task_id", type_=Job.task_id.type))


async def _insert_with_submit_job(
    session: AsyncSession, task: Task, now: datetime, *, alone: bool, pool: asyncpg.Pool | None
) -> bool:
    """Insert a new task and its submit job unless its idempotency key was used (False).
    `alone`: on PostgreSQL, run that one statement as a transaction of its own (see
    `create_task`), straight on asyncpg when given a `pool` (the API's: app/main.py)."""
    if alone and pool is not None:
        query = compiled_once(_TASK_WITH_SUBMIT_JOB)
        row = {**repository.task_row(task), "job_run_at": now}
        async with pool.acquire() as connection:
            inserted = await connection.fetchval(query.sql, *query.arguments(row))
        return inserted is not None
    if alone:
        await autocommit(session)  # one atomic statement needs no BEGIN and COMMIT around it
    # On the connection: given parameters, Session.execute would take the ORM statement of
    # the job for a bulk insert of rows.
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        row = {**repository.task_row(task), "job_run_at": now}
        if (await connection.execute(_TASK_WITH_SUBMIT_JOB, row)).scalar() is None:
            return False
        repository.adopt(session, task)
        return True
    if not await repository.insert_if_new(session, task):
        return False
    await connection.execute(_SQLITE_SUBMIT_JOB, {"job_task_id": task.id, "job_run_at": now})
    return True


def new_references(
    request: CreateTaskRequest, references: Sequence[ResolvedReference]
) -> list[ResolvedReference]:
    """A new task's references in position order: its `image_urls`, then `references` (the
    request's `reference_images`, resolved)."""
    return [*(ResolvedReference.of_url(url) for url in request.image_urls), *references]


async def create_task(
    session: AsyncSession,
    *,
    caller: str,
    request: CreateTaskRequest,
    idempotency_key: str | None,
    now: datetime,
    references: Sequence[ResolvedReference] = (),
    limits: CallerLimits = UNLIMITED,
    last_write: bool = False,
    pool: asyncpg.Pool | None = None,
) -> tuple[Task, bool]:
    """Save a queued task, its references and its submission job; (task, created). Replays
    return the original. `references` are the request's `reference_images`, checked by the
    caller (app/references/resolving.py); the `image_urls` entries are put before them.

    With `limits`, the caller's creates are serialized first and the new task is checked
    against them (quotas.Refused: nothing is written); a replay is never checked nor counted.

    `last_write`: the caller writes nothing else in this transaction and commits next. When the
    create is then a single statement (PostgreSQL, nothing read before it, no references, no
    limits) that statement commits by itself (the task with its job, all or nothing); the
    session's connection is in autocommit until the caller's commit hands it back to the pool;
    with a `pool` (PostgreSQL's, asyncpg), that statement runs on it instead, the session unused."""
    if len(references) != len(request.reference_images):
        raise ValueError("reference_images must be resolved before the task is created")
    estimate = estimate_credits(
        request.quality, request.size, len(request.image_urls) + len(references)
    )
    if limits.any:
        await repository.lock_caller_creates(session, caller)
        if idempotency_key is not None:
            # Under the lock: a concurrent request with this key has committed or not started.
            existing = await replay_of(
                session, caller=caller, request=request, idempotency_key=idempotency_key
            )
            if existing is not None:
                return existing, False
        await quotas.check_create(session, caller, limits, estimate=estimate, now=now)
    task = Task(
        id=str(uuid.uuid4()),
        caller=caller,
        idempotency_key=idempotency_key,
        request_hash=request.fingerprint(),
        model=request.model,
        prompt=request.prompt,
        size=request.size,
        quality=request.quality,
        image_urls=list(request.image_urls),
        n=request.n,
        metadata_=request.metadata,
        notify_url=request.notify_url,
        status=TaskStatus.QUEUED.value,
        progress=0,
        error_code=None,
        error_message=None,
        provider_task_id=None,
        callback_nonce=new_nonce(),
        submit_state=SubmitState.NONE,
        submit_attempts=0,
        submit_started_at=None,
        submitted_at=None,
        last_news_at=None,
        provider_completed_at=None,
        final_claimed_at=None,
        result_urls=None,
        redriven_at=None,
        credits=estimate,
        credits_source=CreditsSource.ESTIMATE,
        created_at=now,
        updated_at=now,
        completed_at=None,
    )
    rows = new_references(request, references)
    alone = last_write and not rows and not limits.any
    if await _insert_with_submit_job(session, task, now, alone=alone, pool=pool):
        await reference_repository.add_all(session, task.id, rows)
        return task, True
    assert idempotency_key is not None
    existing = await replay_of(
        session, caller=caller, request=request, idempotency_key=idempotency_key
    )
    if existing is None:  # pragma: no cover - the conflicting row is committed by now
        raise ApiProblem(409, "conflict", "a request with this Idempotency-Key is in progress")
    return existing, False


async def replay_of(
    session: AsyncSession, *, caller: str, request: CreateTaskRequest, idempotency_key: str
) -> Task | None:
    """The caller's task made earlier with this key and this request, or None when the key is
    new; `422 idempotency_key_reused` when the key was used with another request."""
    existing = await repository.get_by_idempotency_key(session, caller, idempotency_key)
    if existing is not None and existing.request_hash != request.fingerprint():
        raise ApiProblem(
            422,
            "idempotency_key_reused",
            "Idempotency-Key was already used with a different request body",
        )
    return existing


def state_of(task: Task) -> TaskState:
    """The state-machine view of a row."""
    return TaskState(
        TaskStatus(task.status),
        task.progress,
        task.error_code,
        task.error_message,
        final_claimed=task.final_claimed_at is not None,
    )


async def apply_event(
    session: AsyncSession,
    task: Task,
    event: Event,
    *,
    now: datetime,
    source: str,
    extra: dict[str, Any] | None = None,
    line: dict[str, Any] | None = None,
) -> Decision:
    """Run `event` through the state machine and write the result with a conditional update,
    together with the jobs it implies. Concurrent writers: exactly one wins each transition.

    `task` may be older than the row (read in an earlier transaction): the update is made
    only on the state it was decided on, else the row is read again and the event decided
    anew. Afterwards `task` holds the row as this transaction last read or wrote it.

    `line` (event_repository.line()): the caller's timeline line, written just before the
    transition's own, in the same statement."""
    lines = [] if line is None else [line]
    for _ in range(10):
        current = state_of(task)
        decision = decide(current, event)
        if decision.state is None:
            await event_repository.record_lines(session, lines)
            await _write_effects(session, task, decision, now)
            return decision
        new = decision.state
        values = transition_values(current, new, now=now, extra=extra)
        postgresql = session.get_bind().dialect.name == "postgresql"
        kinds = composable_jobs(task, decision) if postgresql else None
        if kinds is not None:
            if await _write_in_one(session, task, current, new, values, lines, kinds, now, source):
                return decision
            if not await repository.reload(session, task):
                return Decision(None)
            continue
        # On success `task` holds the row as written (RETURNING): no read after the write.
        if await repository.update_if_state(session, task, expected=current, values=values):
            if (moved := transition_event(current, new)) is not None:
                _log_transition(session, task, current, new, source)
                lines.append(event_repository.line(task.id, source=source, at=now, **moved))
            await event_repository.record_lines(session, lines)
            await _write_effects(session, task, decision, now)
            return decision
        if not await repository.reload(session, task):
            return Decision(None)
    raise RuntimeError(f"task {task.id} kept changing under a transition")


def composable_jobs(task: Task, decision: Decision) -> tuple[JobKind, ...] | None:
    """The job kinds a transition enqueues when it can be written as one statement on
    PostgreSQL (`pg_transition`); None for a notification (its outbox row is written apart)."""
    kinds = []
    for effect in decision.effects:
        kind = job_for(effect, task.notify_url)
        if kind is JobKind.NOTIFY:
            return None
        if kind is not None and kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


async def _write_in_one(
    session: AsyncSession,
    task: Task,
    current: TaskState,
    new: TaskState,
    values: dict[str, Any],
    lines: list[dict[str, Any]],
    kinds: tuple[JobKind, ...],
    now: datetime,
    source: str,
) -> bool:
    """The transition, its lines and its jobs in one statement; False when the task was no
    longer in `current` (nothing written)."""
    moved = transition_event(current, new)
    written = lines + (
        [] if moved is None else [event_repository.line(task.id, source=source, at=now, **moved)]
    )
    statement, parameters = pg_transition.statement(task.id, current, values, written, kinds, now)
    # On the connection: the ORM would take the inserts of mapped tables for bulk inserts.
    row = (await (await session.connection()).execute(statement, parameters)).first()
    if row is None:
        return False
    repository.refresh_from(task, row)
    if moved is not None:
        _log_transition(session, task, current, new, source)
    return True


async def apply_alone(
    sessions: async_sessionmaker[AsyncSession], task_id: str, event: Event, *, source: str
) -> Decision:
    """Apply one event to a task in a transaction of its own."""
    async with sessions() as session:
        task = await repository.get(session, task_id)
        if task is None:
            return Decision(None)
        decision = await apply_event(session, task, event, now=utcnow(), source=source)
        await session.commit()
        return decision


def transition_values(
    current: TaskState, new: TaskState, *, now: datetime, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The columns a transition from `current` to `new` writes (every path writes these)."""
    values: dict[str, Any] = {
        "status": new.status.value,
        "progress": new.progress,
        "error_code": new.error_code,
        "error_message": new.error_message,
        "updated_at": now,
        **(extra or {}),
    }
    if new.status.is_terminal:
        values["completed_at"] = now
    elif current.status.is_terminal:  # a redrive
        values["completed_at"] = None
    if new.final_claimed and not current.final_claimed:
        values["final_claimed_at"] = now
    return values


def transition_event(current: TaskState, new: TaskState) -> dict[str, Any] | None:
    """The timeline line of a transition (without task, source and time); None when neither
    status nor progress moved."""
    if (new.status, new.progress) == (current.status, current.progress):
        return None
    message = new.error_message if new.status.is_terminal else None
    return {
        "kind": EventKind.TRANSITION,
        "from_status": current.status.value,
        "to_status": new.status.value,
        "message": None if message is None else message[:2000],
        "detail": {"progress": new.progress, "error_code": new.error_code},
    }


def transition_log_fields(
    task_id: str,
    caller: str,
    provider_task_id: str | None,
    current: TaskState,
    new: TaskState,
    source: str,
) -> dict[str, Any]:
    """The fields of the 'task transition' log line, the same on every path."""
    return {
        "task_id": task_id,
        "caller": caller,
        "provider_task_id": provider_task_id,
        "from_status": current.status.value,
        "to_status": new.status.value,
        "progress": new.progress,
        "source": source,
    }


def _log_transition(
    session: AsyncSession, task: Task, current: TaskState, new: TaskState, source: str
) -> None:
    fields = transition_log_fields(
        task.id, task.caller, task.provider_task_id, current, new, source
    )
    # Logged once committed: a line for a transition that was rolled back (a killed worker, a
    # lost connection) would tell the operator of a state the task never had.
    after_commit(session, functools.partial(log.info, "task transition", extra=fields))


def job_for(effect: Effect, notify_url: str | None) -> JobKind | None:
    """The job kind an effect is carried out by, if any."""
    if effect is Effect.NOTIFY:
        return JobKind.NOTIFY if notify_url else None
    return _EFFECT_JOBS.get(effect)


async def _write_effects(
    session: AsyncSession, task: Task, decision: Decision, now: datetime
) -> None:
    for effect in decision.effects:
        kind = job_for(effect, task.notify_url)
        if kind is None:
            continue
        if effect is Effect.NOTIFY and decision.state is not None:
            # The outbox row, in the transaction of the transition: type and webhook id.
            await notification_repository.open_for(
                session, task.id, event_type(decision.state.status), now
            )
        await jobs.enqueue(session, kind, task.id, now)


def present(
    task: Task,
    images: Sequence[ImageOut] = (),
    notes: Sequence[Notification] = (),
    references: Sequence[Reference] = (),
) -> TaskOut:
    """The task object callers see, given its archived images (as archive/presenting.py shows
    them), its notifications and its reference rows (or, for a task being created, the
    references its rows are written from)."""
    error = None
    if task.error_code is not None:
        error = ErrorOut(code=task.error_code, message=task.error_message or "")
    return TaskOut(
        id=task.id,
        status=task.status,
        progress=task.progress,
        model=task.model,
        prompt=task.prompt,
        size=task.size,
        quality=task.quality,
        image_urls=list(task.image_urls),
        metadata=dict(task.metadata_),
        notify_url=task.notify_url,
        provider_task_id=task.provider_task_id,
        images=list(images),
        reference_images=references_out(task, references),
        error=error,
        usage=UsageOut(
            credits=task.credits,
            source="provider" if task.credits_source == CreditsSource.PROVIDER else "estimate",
        ),
        created_at=task.created_at,
        updated_at=task.updated_at,
        completed_at=task.completed_at,
        notification=_notification(task, notes),
    )


def references_out(task: Task, rows: Sequence[Reference]) -> list[ReferenceOut]:
    """A task's reference images as callers see them, in position order. A task made before
    `task_references` existed has no rows: its `image_urls` are its references."""
    if not rows:
        return [UrlReferenceOut(source="url", url=url) for url in task.image_urls]
    return [reference_out(row) for row in rows]


def reference_out(row: Reference) -> ReferenceOut:
    """One reference row as callers see it: only the fields of its source."""
    source = ReferenceSource(row.source)
    if source is ReferenceSource.URL:
        assert row.url is not None
        return UrlReferenceOut(source="url", url=row.url)
    # Rows of stored images always carry what was checked of them (reference_repository.add_all).
    assert row.content_type is not None
    assert row.bytes is not None
    assert row.sha256 is not None
    if source is ReferenceSource.UPLOAD:
        assert row.upload_id is not None
        return UploadReferenceOut(
            source="upload",
            upload_id=row.upload_id,
            content_type=row.content_type,
            bytes=row.bytes,
            sha256=row.sha256,
        )
    assert row.source_task_id is not None
    assert row.source_index is not None
    return TaskReferenceOut(
        source="task",
        task_id=row.source_task_id,
        index=row.source_index,
        content_type=row.content_type,
        bytes=row.bytes,
        sha256=row.sha256,
    )


def _notification(task: Task, notes: Sequence[Notification]) -> NotificationOut | None:
    """The notification of the current status if there is one, else the latest."""
    if not notes:
        return None
    current = event_type(task.status)
    note = next((n for n in notes if n.type == current), None)
    if note is None:
        note = max(notes, key=lambda n: (n.updated_at, n.created_at))
    return NotificationOut(
        webhook_id=note.id,
        type=note.type,
        status=note.state,
        attempts=note.attempts,
        last_status_code=note.last_status_code,
        last_error=note.last_error,
        next_attempt_at=note.next_attempt_at,
        delivered_at=note.delivered_at,
    )
