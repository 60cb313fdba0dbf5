"""Reading an upload's request body from the ASGI receive stream, piece by piece: the image as
the whole body, or as the one part `file` of `multipart/form-data` (python-multipart's
streaming parser; no temporary files, no form held in memory).

Limits: the image itself at most MAX_UPLOAD_BYTES (checked by `app.uploads.ingest` as it
streams); a multipart body at most that plus MULTIPART_ALLOWANCE for its boundaries and part
headers. A Content-Length over the limit is refused before anything is read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Receive, Scope

from app.core.errors import ApiProblem

MAX_UPLOAD_BYTES: Final = 50 * 1024 * 1024  # of image bytes (the contract's limit)
# What a multipart body may carry besides the image: its boundaries, the part's headers
# (python-multipart allows 8 of 4 KiB each) and an epilogue.
MULTIPART_ALLOWANCE: Final = 64 * 1024
# A client that sends nothing for this long is cut off (408): a trickle cannot hold a request.
IDLE_SECONDS: Final = 30.0
RAW_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/webp", "application/octet-stream"})
FILE_PART: Final = "file"
_MAX_FILE_NAME: Final = 255


class ClientGone(Exception):
    """The client disconnected before the body was complete."""


@dataclass(frozen=True)
class BodyKind:
    """How the request carries the image: raw, or multipart with this boundary."""

    boundary: bytes | None = None

    @property
    def limit(self) -> int:
        """The most bytes the whole body may have."""
        return MAX_UPLOAD_BYTES + (MULTIPART_ALLOWANCE if self.boundary is not None else 0)


def too_large(limit: int) -> ApiProblem:
    """The 413 answer; nothing was stored."""
    return ApiProblem(
        413, "payload_too_large", f"the upload is over {limit} bytes; nothing was stored"
    )


def body_kind(scope: Scope) -> BodyKind:
    """What the Content-Type header announces; 415 or 422 when it cannot carry an upload, 413
    when Content-Length declares more than the limit (the body is left unread)."""
    headers = dict(scope.get("headers", ()))
    declared, options = parse_options_header(headers.get(b"content-type", b"").decode("latin-1"))
    media_type = declared.decode("latin-1")
    if media_type == "multipart/form-data":
        boundary = options.get(b"boundary", b"")
        if not 1 <= len(boundary) <= 70:
            raise ApiProblem(
                422,
                "validation_error",
                "Content-Type: multipart/form-data needs a boundary of 1 to 70 characters",
            )
        kind = BodyKind(boundary)
    elif media_type in RAW_TYPES or not media_type:
        kind = BodyKind()
    else:
        raise ApiProblem(
            415,
            "unsupported_media_type",
            "Content-Type: send the image as image/png, image/jpeg, image/webp or "
            "application/octet-stream, or as the part `file` of multipart/form-data",
        )
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > kind.limit:
        raise too_large(MAX_UPLOAD_BYTES)
    return kind


async def body_pieces(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives; 413 once it passes `limit`, 408 when it stalls."""
    received = 0
    while True:
        try:
            async with asyncio.timeout(IDLE_SECONDS):
                message = await receive()
        except TimeoutError:
            raise ApiProblem(
                408,
                "request_timeout",
                f"no part of the body arrived for {IDLE_SECONDS:g} s; nothing was stored",
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        piece: bytes = message.get("body", b"")
        received += len(piece)
        if received > limit:
            raise too_large(MAX_UPLOAD_BYTES)
        if piece:
            yield piece
        if not message.get("more_body", False):
            return


def _multipart_problem(message: str) -> ApiProblem:
    return ApiProblem(422, "validation_error", f"body: {message}")


@dataclass
class _Parts:
    """What the multipart parser's callbacks have seen so far."""

    name: bytearray = field(default_factory=bytearray)  # of the header being read
    value: bytearray = field(default_factory=bytearray)
    disposition: bytes = b""
    in_file: bool = False
    files: int = 0
    file_name: str | None = None
    pending: list[bytes] = field(default_factory=list)  # file bytes not yet passed on
    ended: bool = False

    def part_begin(self) -> None:
        self.disposition, self.in_file = b"", False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        if bytes(self.name).lower() == b"content-disposition":
            self.disposition = bytes(self.value)
        self.name.clear()
        self.value.clear()

    def headers_finished(self) -> None:
        kind, options = parse_options_header(self.disposition.decode("latin-1"))
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            raise _multipart_problem("a part without Content-Disposition: form-data; name=...")
        if name != FILE_PART.encode():
            shown = name.decode("latin-1")[:40]
            raise _multipart_problem(f"unexpected part {shown!r}: send only the part `file`")
        self.files += 1
        if self.files > 1:
            raise _multipart_problem("the part `file` is given twice; send one image")
        self.in_file = True
        self.file_name = clean_file_name(options.get(b"filename"))

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file and end > start:
            self.pending.append(data[start:end])

    def end(self) -> None:
        self.ended = True


def clean_file_name(raw: bytes | None) -> str | None:
    """The file name a client gave, as a plain name: no folders, no control characters."""
    if not raw:
        return None
    name = raw.decode("utf-8", errors="replace").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if char.isprintable()).strip()
    return name[:_MAX_FILE_NAME] or None


class MultipartFile:
    """The bytes of the one part `file` of a multipart body, as they arrive."""

    def __init__(self, pieces: AsyncIterator[bytes], boundary: bytes) -> None:
        self._pieces = pieces
        self._parts = _Parts()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._parts.part_begin,
                "on_header_field": self._parts.header_field,
                "on_header_value": self._parts.header_value,
                "on_header_end": self._parts.header_end,
                "on_headers_finished": self._parts.headers_finished,
                "on_part_data": self._parts.part_data,
                "on_end": self._parts.end,
            },
        )

    @property
    def file_name(self) -> str | None:
        """The part's `filename`, cleaned; None when not given."""
        return self._parts.file_name

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes; 422 when the body is not one well-formed part `file`."""
        parts = self._parts
        async for piece in self._pieces:
            try:
                self._parser.write(piece)
            except MultipartParseError as exc:
                raise _multipart_problem(f"malformed multipart/form-data ({exc})") from None
            while parts.pending:
                yield parts.pending.pop(0)
        if not parts.ended:
            raise _multipart_problem("the multipart body ends before its closing boundary")
        if not parts.files:
            raise _multipart_problem("no part named `file`: send the image as the part `file`")
