"""Answering the console's image requests: stored objects streamed from the store (never a
redirect to it: the console's pages load images from their own origin only), or a placeholder."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request, Response
from fastapi.responses import FileResponse

from app.archive.serving import ObjectUnavailable, etag_matches, serve_object
from app.console.web import STATIC, PageError
from app.storage.store import ObjectStore

IMAGE_CACHE = "private, max-age=86400"
Index = Annotated[int, Path(ge=0, le=15)]


def placeholder() -> Response:
    """The placeholder picture, for an image that has no thumbnail (not cached: one may come)."""
    return FileResponse(
        STATIC / "placeholder.svg",
        media_type="image/svg+xml",
        headers={"Cache-Control": "no-store"},
    )


async def stream_stored(
    request: Request, store: ObjectStore, task_id: str, key: str, content_type: str, etag: str
) -> Response:
    """The object at `key`, or 304 when the browser has `etag`; a 503 page when the store fails
    or the object is gone."""
    if etag_matches(etag, request.headers.get("if-none-match")):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": IMAGE_CACHE})
    try:
        return await serve_object(
            store,
            key,
            content_type=content_type,
            headers={"ETag": etag, "Cache-Control": IMAGE_CACHE},
            log_extra={"task_id": task_id},
        )
    except ObjectUnavailable as exc:
        raise PageError(503, str(exc)) from None
