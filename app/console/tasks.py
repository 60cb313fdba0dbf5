"""Console pages of tasks: the list with filters, one task's story, its retry, its images."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from app.archive import repository as images
from app.archive.models import TaskImage
from app.archive.presenting import presentation
from app.archive.serving import StoreDep
from app.console import references, repository, timeline
from app.console.auth import FLASH_COOKIE, FLASH_MAX_AGE, ConsoleAuth, Operator
from app.console.images import Index, stream_stored
from app.console.thumbnails import ThumbnailerDep, image_thumbnail
from app.console.web import (
    PREFIX,
    ConsoleAuthDep,
    ConsoleRoute,
    OperatorDep,
    PageError,
    render,
)
from app.core.clock import utcnow
from app.core.deps import SessionDep, WakeWorkersDep
from app.tasks import event_repository
from app.tasks import repository as tasks
from app.tasks.cursor import CursorError, decode_cursor, encode_cursor
from app.tasks.models import Task
from app.tasks.redrive import NotRetryable, plan, redrive
from app.tasks.schemas import is_task_id
from app.tasks.states import TaskStatus

router = APIRouter(
    prefix=f"{PREFIX}/tasks",
    route_class=ConsoleRoute,
    include_in_schema=False,
)

PAGE_SIZE = 50
SINCE = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "all": None}
MAX_SEARCH_CHARS = 128


def _clean(value: str | None, what: str, limit: int = MAX_SEARCH_CHARS) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if len(value) > limit or not value.isprintable():
        raise PageError(422, f"{what}: at most {limit} printable characters")
    return value


def _filters(status: str, caller: str, since: str, q: str) -> repository.TaskFilter:
    if status and status not in {value.value for value in TaskStatus}:
        raise PageError(422, f"status: unknown status {status[:32]!r}")
    if since not in SINCE:
        raise PageError(422, "since: one of 1h, 24h, 7d, all")
    window = SINCE[since]
    return repository.TaskFilter(
        status=status or None,
        caller=_clean(caller, "caller", 64),
        since=utcnow() - window if window is not None else None,
        search=_clean(q, "q (id or provider task id)"),
    )


async def _rows(
    session: SessionDep, filters: dict[str, str], before: tuple[datetime, str] | None
) -> dict[str, Any]:
    """One page of the list and what its template needs to show it."""
    where = _filters(**filters)
    rows = await repository.list_tasks(session, where, limit=PAGE_SIZE + 1, before=before)
    page = list(rows[:PAGE_SIZE])
    next_url = None
    if len(rows) > PAGE_SIZE:
        last = page[-1]
        query = filters | {"cursor": encode_cursor(last.created_at, last.id)}
        next_url = f"{PREFIX}/tasks?{urlencode(query)}"
    # The console shows image rows (thumbnails), not notifications: one query, not two.
    presented = await presentation(session, page, notifications=False)
    return {
        "tasks": page,
        "images": {shown.task.id: shown.images for shown in presented},
        "filters": filters,
        "next_url": next_url,
        "first_page": before is None,
    }


@router.get("")
async def task_list(
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    status: str = "",
    caller: str = "",
    since: str = "24h",
    q: str = "",
    cursor: str = "",
) -> Response:
    """Tasks of every caller, newest first, filtered, a page at a time."""
    filters = {"status": status, "caller": caller, "since": since, "q": q}
    try:
        before = decode_cursor(cursor) if cursor else None
    except CursorError:
        raise PageError(422, "cursor: not a cursor of this list; start again") from None
    context = await _rows(session, filters, before)
    return render(
        request,
        "tasks.html",
        nav="tasks",
        statuses=[value.value for value in TaskStatus],
        callers=await repository.callers(session),
        since_choices=list(SINCE),
        refresh_url=f"{PREFIX}/tasks/rows?{urlencode(filters)}" if before is None else None,
        **context,
    )


@router.get("/rows")
async def task_rows(
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    status: str = "",
    caller: str = "",
    since: str = "24h",
    q: str = "",
) -> Response:
    """The first page of the list alone (table and pager), for the page's live refresh."""
    filters = {"status": status, "caller": caller, "since": since, "q": q}
    return render(request, "_task_rows.html", **await _rows(session, filters, None))


async def _task(session: SessionDep, task_id: str) -> Task:
    task = await tasks.get(session, task_id) if is_task_id(task_id) else None
    if task is None:
        raise PageError(404, "no such task")
    return task


@router.get("/{task_id}")
async def task_detail(
    task_id: str,
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    auth: ConsoleAuthDep,
    store: StoreDep,
) -> Response:
    """One task: what was asked, its reference images, everything that happened, its images,
    its retry."""
    task = await _task(session, task_id)
    lines = timeline.build(
        task,
        await event_repository.timeline(session, task.id),
        await repository.deliveries(session, task.id),
    )
    [presented] = await presentation(session, [task], notifications=False)
    retry = await plan(session, task, now=utcnow())
    flash = auth.read_flash(operator, request.cookies.get(FLASH_COOKIE))
    response = render(
        request,
        "task.html",
        nav="tasks",
        task=task,
        lines=lines,
        references=await references.views(session, store, task),
        images=presented.images,
        retry=retry,
        flash=flash,
    )
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE, path=PREFIX, secure=auth.secure, httponly=True)
    return response


@router.post("/{task_id}/retry")
async def retry_task(
    task_id: str,
    operator: OperatorDep,
    session: SessionDep,
    auth: ConsoleAuthDep,
    wake_workers: WakeWorkersDep,
) -> Response:
    """Run again the step that failed, exactly as POST /v1/tasks/{id}/retry does."""
    task = await _task(session, task_id)
    back = f"{PREFIX}/tasks/{task.id}"
    try:
        step = await redrive(session, task, now=utcnow())
    except NotRetryable as exc:
        await session.rollback()
        flash = ("error", f"Nothing to retry (409): {exc}")
    else:
        await session.commit()
        wake_workers()
        flash = ("ok", f"Retried: the {step} step runs again.")
    return _back_with(auth, operator, back, flash)


def _back_with(
    auth: ConsoleAuth, operator: Operator, location: str, flash: tuple[str, str]
) -> Response:
    response = RedirectResponse(location, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        auth.flash(operator, *flash),
        max_age=int(FLASH_MAX_AGE.total_seconds()),
        path=PREFIX,
        secure=auth.secure,
        httponly=True,
        samesite="strict",
    )
    return response


async def _image(session: SessionDep, task_id: str, index: int) -> TaskImage:
    image = await images.one(session, task_id, index) if is_task_id(task_id) else None
    if image is None:
        raise PageError(404, "no such image, or not archived yet")
    return image


@router.get("/{task_id}/images/{index}")
async def image(
    task_id: str,
    index: Index,
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    store: StoreDep,
) -> Response:
    """The archived image at full size, streamed from the store (never a redirect to it: the
    console's pages load images from their own origin only)."""
    found = await _image(session, task_id, index)
    etag = f'"{found.sha256}"'
    return await stream_stored(request, store, task_id, found.key, found.content_type, etag)


@router.get("/{task_id}/images/{index}/thumbnail")
async def thumbnail(
    task_id: str,
    index: Index,
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    store: StoreDep,
    thumbnails: ThumbnailerDep,
) -> Response:
    """The image's small WebP, made on the first request for it (app/console/thumbnails.py), or
    a placeholder when none can be made (never the full image)."""
    found = await _image(session, task_id, index)
    return await image_thumbnail(request, session, store, thumbnails, found)
