"""Answering with an archived object: streamed from the store, or a redirect to a signed URL."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from app.storage.store import ObjectStore, StoreError

log = logging.getLogger(__name__)


async def get_store(request: Request) -> ObjectStore:
    """The running app's object store."""
    store: ObjectStore = request.app.state.store
    return store


StoreDep = Annotated[ObjectStore, Depends(get_store)]


class ObjectUnavailable(Exception):
    """The store failed or lost the object; the message is safe to show."""


def etag_matches(etag: str, if_none_match: str | None) -> bool:
    """Whether an `If-None-Match` header names `etag`."""
    if if_none_match is None:
        return False
    return etag in {tag.strip() for tag in if_none_match.split(",")}


async def serve_object(
    store: ObjectStore,
    key: str,
    *,
    content_type: str,
    headers: dict[str, str],
    redirect_for: timedelta | None = None,
    log_extra: Mapping[str, str],
) -> Response:
    """Stream `key` with `headers`, or redirect to a signed URL valid `redirect_for` when the
    store can sign one. Raises ObjectUnavailable when the store fails or the object is gone;
    `log_extra` names what the object belongs to in the log line (`task_id`, `upload_id`)."""
    try:
        signing = redirect_for is not None and redirect_for.total_seconds() > 0
        if signing and redirect_for is not None and store.supports_signed_urls:
            url = await store.signed_url(key, redirect_for)
            if url is not None:
                return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
        opened = await store.open(key)
    except StoreError as exc:
        log.warning("image store unavailable", extra={**log_extra, "key": key, "error": str(exc)})
        raise ObjectUnavailable("the image store is unavailable; retry") from None
    if opened is None:
        log.error("stored image missing from the store", extra={**log_extra, "key": key})
        raise ObjectUnavailable("the image is temporarily unavailable")
    stored, chunks = opened
    return StreamingResponse(
        chunks, media_type=content_type, headers=headers | {"Content-Length": str(stored.size)}
    )
