"""A task's reference images in the console: what each one is, whether its object is still in the
store, and its thumbnail.

The thumbnail of a `task` reference is the source task's own (the console's image thumbnail
route). An `upload` reference's thumbnail is made on its first request, from the stored object,
by the service's Thumbnailer (decoded in its child process under a deadline), and kept in the
store beside the object (`<key>.thumb.webp`). A `url` reference has none: the service never fetches
a caller's URL to show it (it could lead anywhere, internal addresses included)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Final

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.archive.serving import StoreDep, etag_matches
from app.archive.thumbnails import (
    THUMBNAIL_CONTENT_TYPE,
    DecoderUnavailable,
    Thumbnailer,
    thumbnail_key,
)
from app.console import repository
from app.console.images import IMAGE_CACHE, Index, placeholder, stream_stored
from app.console.thumbnails import ThumbnailerDep
from app.console.web import PREFIX, ConsoleRoute, OperatorDep, PageError
from app.core.deps import SessionDep
from app.storage.store import ObjectStore, StoreError
from app.tasks.models import Task
from app.tasks.references import ReferenceSource, TaskReference
from app.tasks.schemas import is_task_id

log = logging.getLogger(__name__)
router = APIRouter(prefix=f"{PREFIX}/tasks", route_class=ConsoleRoute, include_in_schema=False)

# The page asks the store whether each object is still there; past this it says it could not tell.
PRESENCE_DEADLINE: Final = timedelta(seconds=5)
GONE: Final = "the image is gone from the store"
UNKNOWN: Final = "the store did not answer; reload the page to check again"
NOT_FETCHED: Final = "not shown: the service does not fetch URLs for display"


@dataclass(frozen=True, slots=True)
class ReferenceView:
    """One reference image as the task page shows it."""

    position: int
    source: str
    url: str | None = None
    upload_id: str | None = None
    task_id: str | None = None  # the source task
    index: int | None = None
    content_type: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    thumbnail_url: str | None = None
    note: str | None = None  # shown in place of the thumbnail: why there is none


async def views(session: AsyncSession, store: ObjectStore, task: Task) -> list[ReferenceView]:
    """The task's reference images in request order. A task created before references were
    recorded (migration 0007) has no rows: its `image_urls` are its references."""
    rows = await repository.references(session, task.id)
    if not rows:
        return [
            ReferenceView(position, ReferenceSource.URL.value, url=url, note=NOT_FETCHED)
            for position, url in enumerate(task.image_urls)
        ]
    keys = [row.reference.key for row in rows if row.reference.key is not None]
    present = await _presence(store, keys)
    return [_view(task.id, row, present) for row in rows]


def _view(
    task_id: str, row: repository.ReferenceRow, present: dict[str, bool | None]
) -> ReferenceView:
    reference = row.reference
    view = ReferenceView(
        position=reference.position,
        source=reference.source,
        url=reference.url,
        upload_id=reference.upload_id,
        task_id=reference.source_task_id,
        index=reference.source_index,
        content_type=reference.content_type,
        bytes=reference.bytes,
        sha256=reference.sha256,
    )
    if reference.source == ReferenceSource.URL:
        return replace(view, note=NOT_FETCHED)
    found = present.get(reference.key) if reference.key is not None else False
    if found is None:
        return replace(view, note=UNKNOWN)
    if not found:
        return replace(view, note=GONE)
    if reference.source == ReferenceSource.UPLOAD:
        thumbnail = f"{PREFIX}/tasks/{task_id}/references/{reference.position}/thumbnail"
        return replace(view, thumbnail_url=thumbnail)
    if row.source_image_recorded:
        source = f"{PREFIX}/tasks/{reference.source_task_id}/images/{reference.source_index}"
        return replace(view, thumbnail_url=f"{source}/thumbnail")
    return replace(view, note="the source task no longer lists this image")


async def _presence(store: ObjectStore, keys: list[str]) -> dict[str, bool | None]:
    """Whether each object is in the store; None where the store did not answer in time."""
    found: dict[str, bool | None] = dict.fromkeys(keys)

    async def check(key: str) -> None:
        try:
            found[key] = await store.head(key) is not None
        except StoreError as exc:
            log.warning("reference image: the store failed", extra={"error": str(exc)})

    try:
        async with asyncio.timeout(PRESENCE_DEADLINE.total_seconds()):
            await asyncio.gather(*(check(key) for key in dict.fromkeys(keys)))
    except TimeoutError:
        log.warning("reference images: the store did not answer in time")
    return found


@router.get("/{task_id}/references/{position}/thumbnail")
async def reference_thumbnail(
    task_id: str,
    position: Index,
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    store: StoreDep,
    thumbnails: ThumbnailerDep,
) -> Response:
    """An uploaded reference image's small WebP, made on first request; a placeholder when none
    can be made (the object is gone, too large, or not decodable)."""
    reference = (
        await repository.reference(session, task_id, position) if is_task_id(task_id) else None
    )
    if reference is None or reference.source != ReferenceSource.UPLOAD or reference.key is None:
        raise PageError(404, "no such uploaded reference image")
    etag = f'"{reference.sha256}-thumbnail"'
    if etag_matches(etag, request.headers.get("if-none-match")):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": IMAGE_CACHE})
    key = thumbnail_key(reference.key)
    await session.commit()  # the read's transaction ends: no pooled connection waits on a decode
    try:
        if await store.head(key) is None and not await _make(thumbnails, reference):
            return placeholder()
    except StoreError as exc:
        log.warning(
            "reference thumbnail: the store failed", extra={"task_id": task_id, "error": str(exc)}
        )
        raise PageError(503, "the image store is unavailable; retry") from None
    except DecoderUnavailable as exc:
        log.warning("reference thumbnail: %s", exc, extra={"task_id": task_id})
        raise PageError(503, "no thumbnail can be made now; retry") from None
    return await stream_stored(request, store, task_id, key, THUMBNAIL_CONTENT_TYPE, etag)


async def _make(thumbnails: Thumbnailer, reference: TaskReference) -> bool:
    """Make and store the thumbnail of an uploaded reference; whether there is one now. Nothing
    is recorded: the next request finds the thumbnail in the store, or tries again."""
    assert reference.key is not None
    made = await thumbnails.thumbnail_of(reference.key, reference.content_type or "", (None, None))
    if made is not None and made.error is not None:
        log.info(
            "no thumbnail of a reference image",
            extra={
                "task_id": reference.task_id,
                "position": reference.position,
                "error": made.error,
            },
        )
    return made is not None and made.key is not None
