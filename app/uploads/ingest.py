"""Taking in one upload: decide what it is from its first bytes, then stream it to the store
with a running sha256, its structure checked on the way; refuse it, leaving nothing stored.

Only the head is held (at most the size lookahead of `app.storage.sniff` and one more piece):
nothing goes to the store before the format and pixel size are known and allowed. A fault
found later (too many bytes, a broken chunk, bytes after the image) raises from inside the
stream `ObjectStore.put_stream` reads, which aborts the upload: the key never shows an object."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from app.core.errors import ApiProblem
from app.storage.sniff import MAGIC_LENGTH, SIZE_LOOKAHEAD, ImageFormat, SizeReader, sniff_format
from app.storage.store import ObjectStore
from app.uploads.body import MAX_UPLOAD_BYTES, too_large
from app.uploads.structure import StructureError, structure_check

# Pillow's decompression-bomb threshold (`PIL.Image.MAX_IMAGE_PIXELS`, about 89.5 million
# pixels, 1024 MiB of 24-bit pixels / 4 / 3): anything larger would be refused by any consumer
# that decodes it with Pillow's defaults, and no reference image needs it.
MAX_PIXELS: Final = 89_478_485
UPLOAD_PREFIX: Final = "uploads"


@dataclass(frozen=True)
class ImageHead:
    """What the first bytes of an upload say."""

    image_format: ImageFormat
    width: int
    height: int


@dataclass(frozen=True)
class Ingested:
    """An upload checked (and stored, unless only hashed)."""

    key: str
    content_type: str
    bytes: int
    sha256: str
    width: int
    height: int


def upload_key(upload_id: str, image_format: ImageFormat) -> str:
    """The object key of an upload: `uploads/<id>.<ext>`."""
    return f"{UPLOAD_PREFIX}/{upload_id}.{image_format.extension}"


def invalid_image(message: str) -> ApiProblem:
    """The 422 for bytes of an accepted format that are not a usable image."""
    return ApiProblem(422, "invalid_image", f"{message}; nothing was stored")


def _sniffed(head: bytes) -> ImageFormat:
    found = sniff_format(head)
    if found is None:
        raise ApiProblem(
            415,
            "unsupported_media_type",
            "the content is not a JPEG, PNG or WebP image (decided from its bytes, whatever "
            "the declared type or file name)",
        )
    return found


def _allowed(image_format: ImageFormat, sizer: SizeReader) -> ImageHead:
    if sizer.size is None:
        raise invalid_image(
            f"the {image_format.extension.upper()} header is unreadable or has a zero "
            f"dimension within its first {SIZE_LOOKAHEAD} bytes"
        )
    width, height = sizer.size
    if width * height > MAX_PIXELS:
        raise invalid_image(
            f"{width}x{height} is {width * height} pixels, over the limit of {MAX_PIXELS} "
            "(a decompression bomb?)"
        )
    return ImageHead(image_format, width, height)


def _reader_for(held: list[bytes]) -> tuple[ImageFormat, SizeReader]:
    """The format the first bytes name (else 415), and a size reader fed what was held."""
    head = bytearray()
    for piece in held:
        head += piece[: MAGIC_LENGTH - len(head)]
        if len(head) == MAGIC_LENGTH:
            break
    image_format = _sniffed(bytes(head))
    sizer = SizeReader(image_format)
    for piece in held:
        sizer.feed(piece)
    return image_format, sizer


async def read_head(chunks: AsyncIterator[bytes]) -> tuple[ImageHead, list[bytes]]:
    """Read until the format and pixel size are known and allowed: what they are, and the
    pieces read so far. 415 for another format, 422 for an empty, truncated or unreadable
    header or too many pixels, 413 when the head alone passes the cap."""
    held: list[bytes] = []
    count = 0
    found: tuple[ImageFormat, SizeReader] | None = None
    async for piece in chunks:
        held.append(piece)
        count += len(piece)
        if count > MAX_UPLOAD_BYTES:
            raise too_large(MAX_UPLOAD_BYTES)
        if found is not None:
            found[1].feed(piece)
        elif count >= MAGIC_LENGTH:
            found = _reader_for(held)
        if found is not None and found[1].done:
            return _allowed(*found), held
    if not count:
        raise ApiProblem(422, "empty_body", "the body is empty: send the image's bytes")
    image_format, sizer = found or _reader_for(held)
    if not sizer.done:
        raise invalid_image(f"the {image_format.extension.upper()} file ends inside its header")
    return _allowed(image_format, sizer), held


class _Checked:
    """The upload's pieces as they pass: counted against the cap, structure-checked, hashed."""

    def __init__(self, head: ImageHead) -> None:
        self._structure = structure_check(head.image_format)
        self._hash = hashlib.sha256()
        self.bytes = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    async def stream(self, held: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        while held:
            yield self._pass(held.pop(0))
        async for piece in rest:
            yield self._pass(piece)
        try:
            self._structure.finish()
        except StructureError as exc:
            raise invalid_image(str(exc)) from None

    def _pass(self, piece: bytes) -> bytes:
        self.bytes += len(piece)
        if self.bytes > MAX_UPLOAD_BYTES:
            raise too_large(MAX_UPLOAD_BYTES)
        try:
            self._structure.feed(piece)
        except StructureError as exc:
            raise invalid_image(str(exc)) from None
        self._hash.update(piece)
        return piece


async def ingest(
    chunks: AsyncIterator[bytes], *, upload_id: str, store: ObjectStore | None
) -> Ingested:
    """Check the upload and stream it to `store` as `upload_key(upload_id, ...)`; with no
    store, only check and hash it. Raises ApiProblem (nothing stored), StoreError."""
    head, held = await read_head(chunks)
    checked = _Checked(head)
    key = upload_key(upload_id, head.image_format)
    stream = checked.stream(held, chunks)
    if store is None:
        async for _piece in stream:
            pass
    else:
        await store.put_stream(key, stream, content_type=head.image_format.content_type)
    return Ingested(
        key=key,
        content_type=head.image_format.content_type,
        bytes=checked.bytes,
        sha256=checked.sha256,
        width=head.width,
        height=head.height,
    )
