"""Thumbnails of archived task images in the console, made on its first request for each one.

The archive job makes none (issue 17: decoding was a large share of every task's CPU, and most
images are never viewed in the console). A row whose `thumbnail_key` is set (made since, or by the
archive before this) is served from the store; one whose `thumbnail_error` is set gets the
placeholder; one with neither is made now by the service's Thumbnailer (one decoder process per
service process, under a deadline, so a page of new images fills in one thumbnail after another),
stored at `thumbnail_key(image key)`, and its outcome recorded on the row, an error included, so
that no image is decoded twice. Two first requests at once may both make it: same key, same bytes,
and only the first outcome is recorded (the update requires both columns NULL)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.archive import repository as images
from app.archive.models import TaskImage
from app.archive.serving import etag_matches
from app.archive.thumbnails import THUMBNAIL_CONTENT_TYPE, DecoderUnavailable, Thumbnailer
from app.console.images import IMAGE_CACHE, placeholder, stream_stored
from app.console.web import PageError
from app.storage.store import ObjectStore, StoreError

log = logging.getLogger(__name__)


async def get_thumbnailer(request: Request) -> Thumbnailer:
    """The running app's Thumbnailer (one decoder process per service process)."""
    thumbnails: Thumbnailer = request.app.state.thumbnails
    return thumbnails


ThumbnailerDep = Annotated[Thumbnailer, Depends(get_thumbnailer)]


async def image_thumbnail(
    request: Request,
    session: AsyncSession,
    store: ObjectStore,
    thumbnails: Thumbnailer,
    image: TaskImage,
) -> Response:
    """The image's small WebP, made first when it has none yet; the placeholder when none can
    be made (recorded) or its object is missing (not recorded: a store that lost an object, or
    does not show it yet, may have it again later, and a missing object costs no decode)."""
    task_id, index, etag = image.task_id, image.index, f'"{image.sha256}-thumbnail"'
    key = image.thumbnail_key
    if image.thumbnail_error is not None:
        return placeholder()
    if key is None:
        if etag_matches(etag, request.headers.get("if-none-match")):  # made by a concurrent one
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": IMAGE_CACHE})
        size = (image.width, image.height)
        # The read's transaction ends here: no pooled connection waits on the decoder.
        await session.commit()
        try:
            made = await thumbnails.thumbnail_of(image.key, image.content_type, size)
        except StoreError as exc:
            log.warning(
                "image thumbnail: the store failed", extra={"task_id": task_id, "error": str(exc)}
            )
            raise PageError(503, "the image store is unavailable; retry") from None
        except DecoderUnavailable as exc:
            log.warning("image thumbnail: %s", exc, extra={"task_id": task_id})
            raise PageError(503, "no thumbnail can be made now; retry") from None
        if made is None:
            log.warning(
                "image thumbnail: the image is not in the store", extra={"task_id": task_id}
            )
            return placeholder()
        await images.record_thumbnail(session, task_id, index, made.key, made.error)
        await session.commit()
        if made.key is None:
            log.info(
                "no thumbnail of an image",
                extra={"task_id": task_id, "index": index, "error": made.error},
            )
            return placeholder()
        key = made.key
    return await stream_stored(request, store, task_id, key, THUMBNAIL_CONTENT_TYPE, etag)
