"""Serving archived images to their callers."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from app.archive import repository as images
from app.archive.store import ObjectStore, StoreError
from app.core.auth import CallerDep
from app.core.deps import SessionDep, SettingsDep
from app.core.errors import ApiProblem
from app.tasks import repository as tasks
from app.tasks.router import ERRORS
from app.tasks.schemas import ApiError, is_task_id

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["images"], responses=ERRORS)

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
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The archived image bytes, with `ETag` = its sha256."""
    task = await tasks.get_for_caller(session, caller, task_id) if is_task_id(task_id) else None
    image = await images.one(session, task_id, index) if task is not None else None
    if image is None:
        raise ApiProblem(404, "not_found", "no such image, or not archived yet")
    etag = f'"{image.sha256}"'
    headers = {"ETag": etag, "Cache-Control": _CACHE}
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    store: ObjectStore = request.app.state.store
    try:
        if settings.image_redirect_seconds.total_seconds() > 0 and store.supports_signed_urls:
            url = await store.signed_url(image.key, settings.image_redirect_seconds)
            if url is not None:
                return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
        opened = await store.open(image.key)
    except StoreError as exc:
        log.warning("image store unavailable", extra={"task_id": task_id, "error": str(exc)})
        raise ApiProblem(503, "unavailable", "the image store is unavailable; retry") from None
    if opened is None:
        log.error("archived image missing from the store", extra={"task_id": task_id})
        raise ApiProblem(503, "unavailable", "the image is temporarily unavailable")
    stored, chunks = opened
    headers["Content-Length"] = str(stored.size)
    return StreamingResponse(chunks, media_type=image.content_type, headers=headers)
