"""The client of the provider's Files API: one image streamed up as `multipart/form-data`.

The body is framed around the image's own stream with a known length, so that the image is
never held in memory nor sent base64-encoded; `Content-Length` is exact (no chunked encoding).
Errors map as the task API's do (`app.provider.calls`): 4xx but 408/429, and a `success: false`
answer, are `ProviderRejected`; 408, 429, 5xx, timeouts and connection failures are
`ProviderUnavailable` (an upload cut off after it was sent is repeated: the file it may have
made upstream is never used and expires)."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from app.provider.calls import describe, error_for, measured, retry_after
from app.provider.parsing import clean_text, parse_error_body
from app.provider.types import ProviderRejected, ProviderUnavailable

UPLOAD_PATH: Final = "/api/v1/files/upload/stream"
# Up to 50 MiB go up: each write may wait on a slow link, and the answer comes after the last.
UPLOAD_TIMEOUT: Final = httpx.Timeout(connect=5.0, read=60.0, write=30.0, pool=5.0)
MAX_FILE_URL_LENGTH: Final = 2048
_FILE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_CONTENT_TYPE: Final = re.compile(r"image/[a-z0-9.+-]{1,40}")


@dataclass(frozen=True, slots=True)
class ProviderFile:
    """The provider's copy of one uploaded file."""

    id: str
    url: str
    expires_at: datetime | None


class ShortStream(Exception):
    """The image's stream did not hold the number of bytes announced."""


@dataclass(frozen=True, slots=True)
class MultipartBody:
    """A `multipart/form-data` body around one file's stream: its parts and its exact size."""

    boundary: str
    head: bytes
    tail: bytes
    file_size: int

    @classmethod
    def around(cls, *, file_name: str, content_type: str, file_size: int) -> MultipartBody:
        """The framing of the parts `file_name` (text) and `file` (the image)."""
        if _FILE_NAME.fullmatch(file_name) is None:
            raise ValueError(f"unsafe file name {file_name!r}")
        if _CONTENT_TYPE.fullmatch(content_type) is None:
            raise ValueError(f"unsafe content type {content_type!r}")
        boundary = f"imagegen-{secrets.token_hex(16)}"
        head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file_name"\r\n\r\n'
            f"{file_name}\r\n"
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode("ascii")
        tail = f"\r\n--{boundary}--\r\n".encode("ascii")
        return cls(boundary=boundary, head=head, tail=tail, file_size=file_size)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int:
        return len(self.head) + self.file_size + len(self.tail)

    async def stream(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """The body, chunk by chunk; raises ShortStream when `chunks` holds another size."""
        yield self.head
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            if sent > self.file_size:
                raise ShortStream(f"the file is longer than its announced {self.file_size} bytes")
            if chunk:
                yield chunk
        if sent != self.file_size:
            raise ShortStream(f"the file ended at {sent} of its announced {self.file_size} bytes")
        yield self.tail


class ProviderFilesClient:
    """Uploads through the process's shared `httpx.AsyncClient`."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + UPLOAD_PATH
        self._authorization = f"Bearer {api_key}"

    async def upload(
        self, chunks: AsyncIterable[bytes], *, size: int, content_type: str, file_name: str
    ) -> ProviderFile:
        """Stream one image up. Raises ProviderRejected or ProviderUnavailable; an error of
        `chunks` (the store's) propagates as it is, and so does ShortStream."""
        with measured("file_upload"):
            return await self._upload(chunks, size, content_type, file_name)

    async def _upload(
        self, chunks: AsyncIterable[bytes], size: int, content_type: str, file_name: str
    ) -> ProviderFile:
        multipart = MultipartBody.around(
            file_name=file_name, content_type=content_type, file_size=size
        )
        headers = {
            "Authorization": self._authorization,
            "Accept": "application/json",
            "Content-Type": multipart.content_type,
            "Content-Length": str(multipart.length),
        }
        try:
            response = await self._http.post(
                self._url,
                content=multipart.stream(chunks),
                headers=headers,
                timeout=UPLOAD_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(
                f"uploading to the provider's Files API failed: {describe(exc)}"
            ) from exc
        status = response.status_code
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if 200 <= status < 300:
            return parse_upload_answer(body, status)
        code, message = error_of(body, response.text or response.reason_phrase)
        raise error_for(status, code, message, retry_after(response))


def error_of(body: Any, fallback: str) -> tuple[str, str]:
    """(code, message) of an error answer: `{"error": {...}}` as the task API's, or the Files
    API's own `{"success": false, "code": ..., "msg": "..."}`."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return parse_error_body(body, fallback)
    if isinstance(body, dict) and ("msg" in body or "code" in body):
        message = _text(body.get("msg") or body.get("message")) or fallback[:500]
        code = body.get("code")
        # An integer code repeats the HTTP status: no code of its own.
        return ("" if isinstance(code, int) else _text(code)), message
    return "", fallback[:500]


def parse_upload_answer(body: Any, status: int) -> ProviderFile:
    """The file a 2xx answer describes. `success: false` is a refusal, classified by its `code`
    when that is an HTTP status (a 429 or 5xx there is transient); an answer without a usable
    file is transient."""
    if not isinstance(body, dict):
        raise ProviderUnavailable("the Files API's answer is not JSON", status_code=status)
    if body.get("success") is False:
        code, message = error_of(body, "upload refused")
        raw = body.get("code")
        if isinstance(raw, int) and not isinstance(raw, bool) and 400 <= raw <= 599:
            raise error_for(raw, code, message, None)
        raise ProviderRejected(message, code=code)
    data = body.get("data")
    data = data if isinstance(data, dict) else {}
    file_id, file_url = data.get("file_id"), data.get("file_url")
    if not isinstance(file_id, str) or not file_id.strip() or len(file_id) > 128:
        raise ProviderUnavailable("the Files API's answer names no file id", status_code=status)
    if not isinstance(file_url, str) or not _is_download_url(file_url):
        raise ProviderUnavailable(
            "the Files API's answer has no usable file_url", status_code=status
        )
    return ProviderFile(
        id=clean_text(file_id.strip()),
        url=file_url,
        expires_at=_timestamp(data.get("expires_at")),
    )


def _is_download_url(value: str) -> bool:
    if len(value) > MAX_FILE_URL_LENGTH or not value.isascii():
        return False
    if any(char.isspace() or ord(char) < 32 for char in value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _text(value: object) -> str:
    if value is None or isinstance(value, bool):
        return ""
    return clean_text(str(value)[:500])
