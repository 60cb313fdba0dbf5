"""A stand-in for the provider's Files API on real HTTP: it parses each streamed multipart upload,
keeps the file, serves it back at its `file_url`, and can answer errors on demand."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.provider.files import UPLOAD_PATH
from tests.support.servers import serve_app

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True)
class ReceivedFile:
    """One upload the fake accepted."""

    file_id: str
    file_name: str | None
    part_file_name: str | None
    content_type: str | None
    sha256: str
    size: int
    authorization: str | None
    content_length: str | None
    transfer_encoding: str | None


@dataclass
class FakeFilesApi:
    """The fake's state: accepted uploads, refused attempts, and answers queued to give next."""

    base_url: str = ""
    uploads: list[ReceivedFile] = field(default_factory=list)
    refused: int = 0
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    always: tuple[int, dict[str, Any]] | None = None  # answered to every upload while set
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def refuse_next(self, status: int, body: dict[str, Any], times: int = 1) -> None:
        self.answers.extend([(status, body)] * times)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(UPLOAD_PATH, self._upload, methods=["POST"]),
                Route("/files/{name}", self._download, methods=["GET", "HEAD"]),
            ]
        )

    async def _upload(self, request: Request) -> Response:
        answer = self.always or (self.answers.pop(0) if self.answers else None)
        if answer is not None:
            await request.body()
            self.refused += 1
            return JSONResponse(answer[1], status_code=answer[0])
        async with request.form() as form:
            part = form.get("file")
            assert isinstance(part, UploadFile)
            data = await part.read()
            file_name = form.get("file_name")
        file_id = f"file_{len(self.uploads) + 1:04d}"
        content_type = part.content_type or "application/octet-stream"
        name = f"{file_id}.{EXTENSIONS.get(content_type, 'bin')}"
        self.files[name] = (data, content_type)
        self.uploads.append(
            ReceivedFile(
                file_id=file_id,
                file_name=file_name if isinstance(file_name, str) else None,
                part_file_name=part.filename,
                content_type=part.content_type,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                authorization=request.headers.get("authorization"),
                content_length=request.headers.get("content-length"),
                transfer_encoding=request.headers.get("transfer-encoding"),
            )
        )
        return JSONResponse(
            {
                "success": True,
                "code": 200,
                "msg": "File uploaded successfully",
                "data": {
                    "file_id": file_id,
                    "file_name": name,
                    "file_size": len(data),
                    "mime_type": content_type,
                    "file_url": f"{self.base_url}/files/{name}",
                    "expires_at": "2030-01-01T00:00:00+00:00",
                },
            }
        )

    async def _download(self, request: Request) -> Response:
        found = self.files.get(request.path_params["name"])
        if found is None:
            return Response(status_code=404)
        return Response(found[0], media_type=found[1])


@contextlib.asynccontextmanager
async def running_files_api() -> AsyncIterator[FakeFilesApi]:
    """The fake on a loopback port."""
    fake = FakeFilesApi()
    async with serve_app(fake.app()) as url:
        fake.base_url = url
        yield fake
