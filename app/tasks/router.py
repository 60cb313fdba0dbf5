"""The caller API: create, read and list tasks."""

from __future__ import annotations

import logging
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.archive.presenting import present_tasks
from app.core import metrics
from app.core.auth import CallerDep, CallerRoute
from app.core.body_cap import MAX_BODY_BYTES
from app.core.clock import utcnow
from app.core.deps import FastPoolDep, SessionDep, SettingsDep, WakeWorkersDep
from app.core.errors import ERRORS, ApiError, ApiProblem
from app.core.headers import checked_idempotency_key
from app.core.limits import CallerLimits
from app.core.urls import UrlPolicyError, check_outbound_url
from app.references import resolving
from app.tasks import event_repository, repository, service
from app.tasks.cursor import CursorError, decode_cursor, encode_cursor
from app.tasks.models import Task
from app.tasks.quotas import Refused
from app.tasks.redrive import NotRetryable, redrive
from app.tasks.references import ResolvedReference
from app.tasks.schemas import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    CreateTaskRequest,
    Status,
    TaskEventOut,
    TaskEventPage,
    TaskOut,
    TaskPage,
    UsageDayOut,
    UsageRemainingOut,
    UsageReportOut,
    is_task_id,
)
from app.tasks.usage import RangeError, remaining_budgets, usage_by_day, usage_range

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERRORS, route_class=CallerRoute)


async def _present(session: AsyncSession, task: Task) -> TaskOut:
    [presented] = await present_tasks(session, [task])
    return presented


async def _own_task(session: AsyncSession, caller: str, task_id: str) -> Task:
    task = (
        await repository.get_for_caller(session, caller, task_id) if is_task_id(task_id) else None
    )
    if task is None:
        raise ApiProblem(404, "not_found", "no such task")
    return task


@router.post(
    "/images/generations",
    status_code=202,
    response_model=TaskOut,
    responses={
        200: {"model": TaskOut, "description": "A replay of an earlier request with this key."},
        202: {"description": "Accepted; the task is saved and will be submitted upstream."},
        402: {
            "model": ApiError,
            "description": "`budget_exhausted`: the task would take the caller over a credit "
            "budget; the message names it and when it resets.",
        },
        413: {"model": ApiError, "description": f"The body is over {MAX_BODY_BYTES} bytes."},
        429: {
            "model": ApiError,
            "description": "`rate_limited` (with `Retry-After`, whole seconds) or "
            "`too_many_active_tasks`: a limit of the caller; nothing was saved.",
        },
    },
)
async def create_generation(
    body: CreateTaskRequest,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    wake_workers: WakeWorkersDep,
    fast_pool: FastPoolDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            description="Repeat a request safely: the same key and body return the same task.",
        ),
    ] = None,
) -> Response:
    """Ask for an image, from text or from reference images (`image_urls`, `reference_images`).
    The task is saved as `queued` and submitted upstream in the background."""
    key = checked_idempotency_key(idempotency_key)
    if body.notify_url is not None:
        try:
            check_outbound_url(
                body.notify_url, allow_private=settings.allow_private_networks, what="notify_url"
            )
        except UrlPolicyError as exc:
            raise ApiProblem(422, "validation_error", f"notify_url: {exc}") from None
        if settings.notify_secret is None:
            raise ApiProblem(
                422,
                "validation_error",
                "notify_url: this service sends no notifications (IMAGEGEN_NOTIFY_SECRET is "
                "not set); poll GET /v1/tasks/{id} instead",
            )
    limits = settings.limits.for_caller(caller)
    try:
        task, created, references = await _create_or_replay(
            session, caller, body, key, limits, fast_pool
        )
    except Refused as exc:
        await session.rollback()
        metrics.CREATES_REFUSED.labels(caller, exc.code).inc()
        log.info(
            "create refused by a limit",
            extra={"caller": caller, "reason": exc.code, "status_code": exc.status_code},
        )
        raise
    await session.commit()
    log.info(
        "task created" if created else "task request replayed",
        extra={"task_id": task.id, "caller": caller, "idempotency_key_given": key is not None},
    )
    if created:
        wake_workers()
        # Presented from memory: a task created just now has its references and no archived
        # image nor notification yet.
        presented = service.present(task, references=service.new_references(body, references))
    else:
        presented = await _present(session, task)
    return Response(
        presented.model_dump_json(),
        status_code=202 if created else 200,
        headers={"Location": f"/v1/tasks/{task.id}"},
        media_type="application/json",
    )


async def _create_or_replay(
    session: AsyncSession,
    caller: str,
    body: CreateTaskRequest,
    key: str | None,
    limits: CallerLimits,
    pool: asyncpg.Pool | None,
) -> tuple[Task, bool, list[ResolvedReference]]:
    """The replay of an accepted create as it was (its references are not checked again: an
    upload that has expired since never turns a replay into a refusal), else a new task whose
    references are checked first; with the resolved `reference_images` of a new task.

    A key is looked up first only when there are references to check: otherwise the insert
    itself finds a replay (ON CONFLICT DO NOTHING), and with limits `create_task` looks it up
    under the caller's lock anyway."""
    if key is not None and body.reference_images:
        replayed = await service.replay_of(
            session, caller=caller, request=body, idempotency_key=key
        )
        if replayed is not None:
            return replayed, False, []
    now = utcnow()
    references = await resolving.resolve(
        session, caller=caller, references=body.reference_images, now=now
    )
    task, created = await service.create_task(
        session,
        caller=caller,
        request=body,
        idempotency_key=key,
        now=now,
        references=references,
        limits=limits,
        last_write=True,
        pool=pool,
    )
    return task, created, references


@router.get("/tasks/{task_id}", response_model=TaskOut, responses={404: {"model": ApiError}})
async def get_task(task_id: str, caller: CallerDep, session: SessionDep) -> TaskOut:
    """One of the caller's tasks."""
    return await _present(session, await _own_task(session, caller, task_id))


@router.get("/tasks", response_model=TaskPage)
async def list_tasks(
    caller: CallerDep,
    session: SessionDep,
    status: Annotated[Status | None, Query(description="Only tasks in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
) -> TaskPage:
    """The caller's tasks, newest first, with cursor pagination that is stable under inserts."""
    try:
        before = decode_cursor(cursor) if cursor else None
    except CursorError as exc:
        raise ApiProblem(422, "validation_error", f"cursor: {exc}") from None
    rows = await repository.list_for_caller(
        session, caller, status=status, limit=limit + 1, before=before
    )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(last.created_at, last.id)
    return TaskPage(data=await present_tasks(session, page), next_cursor=next_cursor)


@router.get("/usage", response_model=UsageReportOut, response_model_by_alias=True)
async def get_usage(
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    first: Annotated[
        str | None,
        Query(
            alias="from",
            max_length=64,
            description="First UTC day, YYYY-MM-DD (default: the first of the current month).",
        ),
    ] = None,
    last: Annotated[
        str | None,
        Query(
            alias="to",
            max_length=64,
            description="Last UTC day, inclusive (default: the last of the current month); "
            "at most 366 days from `from`.",
        ),
    ] = None,
) -> UsageReportOut:
    """The caller's tasks by status and credits per UTC day of creation, its limits and what
    is left of its budgets (docs/limits.md "Usage")."""
    now = utcnow()
    try:
        start, end = usage_range(first, last, now)
    except RangeError as exc:
        raise ApiProblem(422, "validation_error", str(exc)) from None
    limits = settings.limits.for_caller(caller)
    [days] = (await usage_by_day(session, [caller], start, end)).values()
    remaining = await remaining_budgets(session, caller, limits, now)
    return UsageReportOut(
        caller=caller,
        from_=start.isoformat(),
        to=end.isoformat(),
        days=[
            UsageDayOut(date=day.day.isoformat(), tasks=day.tasks, credits=day.credits)
            for day in days
        ],
        limits=limits.as_dict(),
        remaining=UsageRemainingOut(**remaining),
    )


@router.post(
    "/tasks/{task_id}/retry",
    status_code=202,
    response_model=TaskOut,
    responses={
        202: {
            "description": (
                "The step was started again; the `Retried-Step` header names it (`archive`, "
                "`poll` or `notification`)."
            )
        },
        404: {"model": ApiError},
        409: {"model": ApiError, "description": "Nothing is retryable; the message says why."},
    },
)
async def retry_task(
    task_id: str, caller: CallerDep, session: SessionDep, wake_workers: WakeWorkersDep
) -> JSONResponse:
    """Run again the step that failed for a transient reason: the archive copy (while the
    provider's links are valid), polling after `provider_timeout`, or a given-up notification."""
    task = await _own_task(session, caller, task_id)
    try:
        step = await redrive(session, task, now=utcnow())
    except NotRetryable as exc:
        await session.rollback()
        raise ApiProblem(409, "not_retryable", str(exc)) from None
    # The answer shows the task as the retry left it, read in the same transaction: after the
    # commit a worker may already have run the step again.
    content = (await _present(session, task)).model_dump(mode="json")
    await session.commit()
    wake_workers()
    return JSONResponse(content, status_code=202, headers={"Retried-Step": step})


@router.get(
    "/tasks/{task_id}/events", response_model=TaskEventPage, responses={404: {"model": ApiError}}
)
async def task_events(task_id: str, caller: CallerDep, session: SessionDep) -> TaskEventPage:
    """The task's timeline, oldest first: every transition, every attempt at upstream work,
    archive copy and notification with its outcome and error, and every retry."""
    task = await _own_task(session, caller, task_id)
    lines = await event_repository.timeline(session, task.id)
    return TaskEventPage(
        data=[TaskEventOut.model_validate(line, from_attributes=True) for line in lines]
    )
