"""Upload bodies of the Files API (multipart, base64 JSON, URL JSON) read into a spool, bounded."""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from . import errors
from .validation import is_http_url

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from starlette.requests import Request

    from .fetching import Fetcher, FetchLimits
    from .files import Spool

DEFAULT_UPLOAD_PATH = "uploads"
MULTIPART_SLACK = 64 * 1024  # room for part headers and the small fields beside the file
JSON_SLACK = 64 * 1024  # room for the data URL prefix and the other fields
MAX_FILES_PARSED = 32  # file parts read before the parser gives up (one is allowed)
MAX_NAME_CHARS = 255
MAX_UPLOAD_PATH_CHARS = 200
CHUNK = 64 * 1024
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Received:
    """What came with the bytes: the names and the path the caller asked for."""

    original_name: str
    file_name: str | None
    upload_path: str
    source_url: str | None = None


def body_limit(kind: str, max_file_bytes: int) -> int:
    """The largest request body an upload of `kind` may have."""
    if kind == "stream":
        return max_file_bytes + MULTIPART_SLACK
    if kind == "base64":
        return math.ceil(max_file_bytes / 3) * 4 + JSON_SLACK
    return JSON_SLACK


async def drain(request: Request, limit: int) -> None:
    """Read and drop the body (up to `limit` bytes) so a refusal reaches a client still sending."""
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return
    except ClientDisconnect:
        return


async def receive_multipart(request: Request, spool: Spool) -> Received:
    """The part `file` of a multipart/form-data body into `spool`; 400 unless exactly one file
    part, named `file`, is there."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise errors.files_bad_request("Content-Type must be multipart/form-data")
    parser = MultiPartParser(
        request.headers,
        _capped(request, body_limit("stream", spool.limit), spool.limit),
        max_files=MAX_FILES_PARSED,
        max_fields=16,
        max_part_size=4096,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise errors.files_bad_request(f"Invalid multipart body: {exc.message}") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if len(files) > 1:
            raise errors.files_bad_request(f"One file per request: the body holds {len(files)}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise errors.files_bad_request("The multipart part `file` (the image) is required")
        while chunk := await upload.read(CHUNK):
            spool.write(chunk)
        fields = {name: value for name, value in form.multi_items() if isinstance(value, str)}
        return Received(
            original_name=_base_name(upload.filename or ""),
            file_name=_file_name(_either(fields, "file_name", "fileName")),
            upload_path=_upload_path(_either(fields, "upload_path", "uploadPath")),
        )
    finally:
        await form.close()


async def receive_base64(request: Request, spool: Spool) -> Received:
    """`base64_data` (pure base64 or a data URL) of a JSON body into `spool`."""
    body = await _json_object(request, body_limit("base64", spool.limit), spool.limit)
    data = body.get("base64_data")
    if not isinstance(data, str) or not data:
        raise errors.files_bad_request("base64_data is required: base64 or a data: URL")
    if data.startswith("data:"):
        header, comma, data = data.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise errors.files_bad_request("base64_data: a data URL must be data:<type>;base64,...")
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        raise errors.files_bad_request("base64_data is not valid base64") from None
    if not raw:
        raise errors.files_bad_request("base64_data is empty")
    if len(raw) > spool.limit:
        raise errors.files_too_large(spool.limit)
    for start in range(0, len(raw), CHUNK):
        spool.write(raw[start : start + CHUNK])
    name = _file_name(_either(body, "file_name", "fileName"))
    return Received(
        original_name=name or "",
        file_name=name,
        upload_path=_upload_path(_either(body, "upload_path", "uploadPath")),
    )


async def receive_url(
    request: Request, spool: Spool, fetcher: Fetcher, limits: FetchLimits
) -> Received:
    """The bytes at `file_url` of a JSON body, fetched by the simulator, into `spool`."""
    body = await _json_object(request, body_limit("url", spool.limit), spool.limit)
    url = _either(body, "file_url", "fileUrl")
    if not isinstance(url, str) or not is_http_url(url):
        raise errors.files_bad_request("file_url is required and must be an http(s) URL")
    fetched = await fetcher.fetch(url, limits, spool.write)
    if fetched.too_large:
        raise errors.files_too_large(spool.limit)
    if fetched.error is not None:
        raise errors.files_bad_request(f"file_url could not be downloaded: {fetched.error}")
    name = _file_name(_either(body, "file_name", "fileName"))
    return Received(
        original_name=_base_name(unquote(urlsplit(url).path)),
        file_name=name,
        upload_path=_upload_path(_either(body, "upload_path", "uploadPath")),
        source_url=url,
    )


async def _capped(request: Request, limit: int, file_limit: int) -> AsyncGenerator[bytes]:
    """The request body in chunks; 413 (naming `file_limit`) once it passes `limit`."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise errors.files_too_large(file_limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise errors.files_too_large(file_limit)
        yield chunk


async def _json_object(request: Request, limit: int, file_limit: int) -> dict[str, Any]:
    """A JSON object body of at most `limit` bytes."""
    raw = bytearray()
    async for chunk in _capped(request, limit, file_limit):
        raw += chunk
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise errors.files_bad_request("Request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise errors.files_bad_request("Request body must be a JSON object")
    return body


def _either(values: dict[str, Any], snake: str, camel: str) -> Any:
    """The value under the snake_case name, else under the camelCase one."""
    value = values.get(snake)
    return values.get(camel) if value is None else value


def _upload_path(value: object) -> str:
    """Segments of letters, digits, '.', '_' and '-' joined by '/'; `uploads` when not given."""
    if value is None or value == "":
        return DEFAULT_UPLOAD_PATH
    if isinstance(value, str) and len(value) <= MAX_UPLOAD_PATH_CHARS:
        segments = value.strip("/").split("/")
        if all(_SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in segments):
            return "/".join(segments)
    raise errors.files_bad_request(
        f"upload_path must be at most {MAX_UPLOAD_PATH_CHARS} characters of '/'-separated "
        "segments of letters, digits, '.', '_' and '-'"
    )


def _file_name(value: object) -> str | None:
    """A plain file name, or None when not given."""
    if value is None or value == "":
        return None
    if (
        not isinstance(value, str)
        or len(value) > MAX_NAME_CHARS
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or _CONTROL_RE.search(value)
    ):
        raise errors.files_bad_request(
            f"file_name must be a plain file name of at most {MAX_NAME_CHARS} characters"
        )
    return value


def _base_name(name: str) -> str:
    """The last segment of a client's file name or of a URL path, without control characters."""
    base = re.split(r"[/\\]", name)[-1]
    return _CONTROL_RE.sub("", base)[:MAX_NAME_CHARS]
