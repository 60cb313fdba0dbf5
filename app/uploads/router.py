"""The caller API of uploads: reference images sent to this service (docs/reference-images.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.archive.serving import ObjectUnavailable, StoreDep, etag_matches, serve_object
from app.core import metrics
from app.core.auth import CallerDep, StreamingCallerRoute
from app.core.clock import utcnow
from app.core.deps import SessionDep, SessionsDep, SettingsDep
from app.core.errors import ERRORS, ApiError, ApiProblem
from app.core.headers import MAX_IDEMPOTENCY_KEY_CHARS, checked_idempotency_key
from app.storage.store import StoreError
from app.uploads import repository, service
from app.uploads.body import (
    MAX_UPLOAD_BYTES,
    MULTIPART_ALLOWANCE,
    ClientGone,
    MultipartFile,
    body_kind,
    body_pieces,
)
from app.uploads.models import Upload
from app.uploads.schemas import UploadOut, is_upload_id

router = APIRouter(
    prefix="/v1", tags=["uploads"], responses=ERRORS, route_class=StreamingCallerRoute
)

_CACHE = "private, max-age=86400, immutable"  # an upload's bytes never change under its id
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            f"The image (JPEG, PNG or WebP, at most {MAX_UPLOAD_BYTES} bytes) as the whole "
            "body, or as the one part `file` of multipart/form-data (the body at most "
            f"{MULTIPART_ALLOWANCE} bytes more). Its type is decided from its bytes."
        ),
        "content": {
            **dict.fromkeys((*_IMAGE_TYPES, "application/octet-stream"), _BINARY),
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                    "additionalProperties": False,
                }
            },
        },
    }
}
_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "/v1/uploads/{id}"}}


async def _visible(session: AsyncSession, caller: str, upload_id: str) -> Upload:
    upload = (
        await repository.get_visible(session, caller, upload_id, utcnow())
        if is_upload_id(upload_id)
        else None
    )
    if upload is None:
        raise ApiProblem(404, "not_found", "no such upload (unknown, expired or deleted)")
    return upload


@router.post(
    "/uploads",
    status_code=201,
    response_model=UploadOut,
    openapi_extra=_REQUEST_BODY,
    responses={
        200: {
            "model": UploadOut,
            "description": "A replay: this Idempotency-Key uploaded the same bytes before.",
            "headers": _LOCATION,
        },
        201: {"description": "Stored.", "headers": _LOCATION},
        400: {"model": ApiError, "description": "The client left before the body was in."},
        408: {"model": ApiError, "description": "The body stalled."},
        409: {"model": ApiError, "description": "This Idempotency-Key's upload has expired."},
        413: {"model": ApiError, "description": f"Over {MAX_UPLOAD_BYTES} bytes."},
        415: {"model": ApiError, "description": "Not a JPEG, PNG or WebP image."},
        422: {
            "model": ApiError,
            "description": (
                "`invalid_image` (unreadable, truncated, too many pixels, bytes after the "
                "image), `empty_body`, `idempotency_key_reused`, or `validation_error` (a "
                "multipart body without exactly one part `file`, a bad Idempotency-Key)."
            ),
        },
        503: {"model": ApiError, "description": "The object store is unavailable."},
    },
)
async def create_upload(
    request: Request,
    caller: CallerDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            description="Repeat an upload safely: the same key and bytes return the same upload.",
        ),
    ] = None,
) -> JSONResponse:
    """Upload a reference image, streamed to the store with a running sha256."""
    try:
        key = checked_idempotency_key(idempotency_key)
        kind = body_kind(request.scope)
        pieces = body_pieces(request.receive, kind.limit)
        multipart = MultipartFile(pieces, kind.boundary) if kind.boundary is not None else None
        upload, created = await service.create_upload(
            sessions,
            store,
            caller=caller,
            idempotency_key=key,
            chunks=multipart.chunks() if multipart is not None else pieces,
            file_name=lambda: multipart.file_name if multipart is not None else None,
            ttl=settings.upload_ttl_seconds,
        )
    except ApiProblem:
        metrics.UPLOADS.labels("refused").inc()
        raise
    except ClientGone:
        metrics.UPLOADS.labels("refused").inc()
        raise ApiProblem(400, "incomplete_body", "the client left before the body was in") from None
    except StoreError:
        raise ApiProblem(503, "unavailable", "the image store is unavailable; retry") from None
    if created:
        metrics.UPLOADS.labels("stored").inc()
        metrics.UPLOAD_BYTES.inc(upload.bytes)
    else:
        metrics.UPLOADS.labels("replayed").inc()
    return JSONResponse(
        UploadOut.of(upload).model_dump(mode="json"),
        status_code=201 if created else 200,
        headers={"Location": f"/v1/uploads/{upload.id}"},
    )


@router.get("/uploads/{upload_id}", response_model=UploadOut, responses={404: {"model": ApiError}})
async def get_upload(upload_id: str, caller: CallerDep, session: SessionDep) -> UploadOut:
    """One of the caller's uploads: until it expires, or while an unfinished task uses it."""
    return UploadOut.of(await _visible(session, caller, upload_id))


@router.get(
    "/uploads/{upload_id}/content",
    response_class=Response,
    responses={
        200: {"content": {media_type: {} for media_type in _IMAGE_TYPES}},
        304: {"description": "The caller's copy (If-None-Match) is current."},
        404: {"model": ApiError},
        503: {"model": ApiError, "description": "The object store is unavailable."},
    },
)
async def get_upload_content(
    upload_id: str,
    caller: CallerDep,
    session: SessionDep,
    store: StoreDep,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The upload's bytes, with `ETag` = its sha256; served as a download, never rendered."""
    upload = await _visible(session, caller, upload_id)
    await session.close()  # no connection held while the bytes stream
    etag = f'"{upload.sha256}"'
    headers = {
        "ETag": etag,
        "Cache-Control": _CACHE,
        # Bytes from outside: a browser must save them, never render them in our origin.
        "Content-Disposition": f'attachment; filename="{upload.key.rsplit("/", 1)[-1]}"',
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if etag_matches(etag, if_none_match):
        return Response(status_code=304, headers=headers)
    try:
        return await serve_object(
            store,
            upload.key,
            content_type=upload.content_type,
            headers=headers,
            log_extra={"upload_id": upload.id},
        )
    except ObjectUnavailable as exc:
        raise ApiProblem(503, "unavailable", str(exc)) from None


@router.delete(
    "/uploads/{upload_id}",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "Deleted."},
        404: {"model": ApiError},
        409: {"model": ApiError, "description": "`upload_in_use`: an unfinished task uses it."},
    },
)
async def delete_upload(
    upload_id: str, caller: CallerDep, sessions: SessionsDep, store: StoreDep
) -> Response:
    """Delete an upload and its bytes (kept while a task's reference names them)."""
    if not is_upload_id(upload_id):
        raise ApiProblem(404, "not_found", "no such upload (unknown, expired or deleted)")
    await service.delete_upload(sessions, store, caller=caller, upload_id=upload_id, now=utcnow())
    return Response(status_code=204)
