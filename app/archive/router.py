"""Serving archived images to their callers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response

from app.archive import repository as images
from app.archive.serving import ObjectUnavailable, StoreDep, etag_matches, serve_object
from app.core.auth import CallerDep, CallerRoute
from app.core.deps import SessionDep, SettingsDep
from app.core.errors import ERRORS, ApiError, ApiProblem
from app.tasks import repository as tasks
from app.tasks.schemas import is_task_id

router = APIRouter(prefix="/v1", tags=["images"], responses=ERRORS, route_class=CallerRoute)

_CACHE = "private, max-age=31536000, immutable"


@router.get(
    "/tasks/{task_id}/images/{index}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        304: {"description": "The caller's copy (If-None-Match) is current."},
        307: {"description": "A short-lived signed URL of the store (when configured)."},
        404: {"model": ApiError, "description": "No such task or image, or not archived yet."},
        503: {"model": ApiError, "description": "The object store is unavailable."},
    },
)
async def get_image(
    task_id: str,
    index: Annotated[int, Path(ge=0, le=15, description="Position in the task's `images`.")],
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The archived image bytes, with `ETag` = its sha256."""
    task = await tasks.get_for_caller(session, caller, task_id) if is_task_id(task_id) else None
    image = await images.one(session, task_id, index) if task is not None else None
    if image is None:
        raise ApiProblem(404, "not_found", "no such image, or not archived yet")
    etag = f'"{image.sha256}"'
    headers = {"ETag": etag, "Cache-Control": _CACHE}
    if etag_matches(etag, if_none_match):
        return Response(status_code=304, headers=headers)
    try:
        return await serve_object(
            store,
            image.key,
            content_type=image.content_type,
            headers=headers,
            redirect_for=settings.image_redirect_seconds,
            log_extra={"task_id": task_id},
        )
    except ObjectUnavailable as exc:
        raise ApiProblem(503, "unavailable", str(exc)) from None
