"""The provider's Files API: three ways to upload an image, and the links that serve it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from . import errors, uploads
from .api import base_url, has_known_key
from .files import DOWNLOAD_PREFIX, FILE_URL_PREFIX
from .sniffing import UPLOAD_TYPES

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .engine import Engine
    from .files import Spool, StoredFile

UPLOAD_PREFIX = "/api/v1/files/upload"
REFUSED_AS_INVALID = frozenset({400, 413, 415})


def files_router(engine: Engine) -> APIRouter:
    """Routes of the Files API as the simulator serves them (uploads need the Bearer key;
    `file_url` and `download_url` do not)."""
    router = APIRouter()
    stats = engine.stats

    async def admit(request: Request, kind: str) -> None:
        """401 without a known key, then the injected 429 and 503; the body is read first."""
        refusal: errors.FilesApiError | None = None
        if not has_known_key(request, engine.config.api_keys):
            stats.uploads_unauthorized += 1
            refusal = errors.files_unauthorized()
        elif engine.roll(engine.faults.files_429_rate):
            stats.uploads_rejected_429 += 1
            refusal = errors.files_rate_limited()
        elif engine.roll(engine.faults.files_error_rate):
            stats.uploads_rejected_503 += 1
            refusal = errors.files_unavailable()
        if refusal is not None:
            await uploads.drain(request, uploads.body_limit(kind, engine.config.max_image_bytes))
            raise refusal

    async def upload(
        request: Request, kind: str, receive: Callable[[Spool], Awaitable[uploads.Received]]
    ) -> JSONResponse:
        """Admit, receive the bytes, check they are an image and keep them."""
        await admit(request, kind)
        spool = engine.files.spool()
        try:
            received = await receive(spool)
            mime_type = spool.tally.content_type
            if spool.tally.size == 0:
                raise errors.files_bad_request("The file is empty")
            if mime_type not in UPLOAD_TYPES:
                raise errors.files_unsupported_type()
            record = engine.files.add(
                spool,
                mime_type=mime_type,
                original_name=received.original_name,
                file_name=received.file_name,
                upload_path=received.upload_path,
                source=kind,
                source_url=received.source_url,
            )
        except errors.FilesApiError as exc:
            spool.discard()
            if exc.status in REFUSED_AS_INVALID:
                stats.uploads_invalid += 1
            raise
        except BaseException:
            spool.discard()
            raise
        return JSONResponse(
            {
                "success": True,
                "code": 200,
                "msg": "File uploaded successfully",
                "data": record.data(base_url(request)),
            }
        )

    @router.post(f"{UPLOAD_PREFIX}/stream")
    async def upload_stream(request: Request) -> JSONResponse:
        return await upload(
            request, "stream", lambda spool: uploads.receive_multipart(request, spool)
        )

    @router.post(f"{UPLOAD_PREFIX}/base64")
    async def upload_base64(request: Request) -> JSONResponse:
        return await upload(request, "base64", lambda spool: uploads.receive_base64(request, spool))

    @router.post(f"{UPLOAD_PREFIX}/url")
    async def upload_url(request: Request) -> JSONResponse:
        limits = engine.fetch_limits()
        return await upload(
            request,
            "url",
            lambda spool: uploads.receive_url(request, spool, engine.fetcher, limits),
        )

    @router.get(FILE_URL_PREFIX + "/{path:path}")
    async def get_file(path: str) -> FileResponse:
        file_id = path.rpartition("/")[2].partition(".")[0]
        stored = engine.files.find(file_id)
        if stored.record.file_path != f"{FILE_URL_PREFIX}/{path}":
            raise errors.files_not_found()
        return serve(stored, attachment=False)

    @router.get(DOWNLOAD_PREFIX + "/{file_id}")
    async def download_file(file_id: str) -> FileResponse:
        return serve(engine.files.find(file_id), attachment=True)

    def serve(stored: StoredFile, *, attachment: bool) -> FileResponse:
        stats.uploads_served += 1
        return FileResponse(
            stored.path,
            media_type=stored.record.mime_type,
            filename=stored.record.file_name if attachment else None,
        )

    return router
