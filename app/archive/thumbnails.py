"""Thumbnails of archived images: one small WebP per image, made at archive time, stored beside it.

Result bodies are hostile input, so decoding is bounded before any pixel is decoded: only bodies
the copy kept in memory anyway (those the store takes in one put, at most 5 MiB) are decoded,
never one read back; the pixel count, read from the header, must fit a decode budget; Pillow's
decompression-bomb check is set to the same bound and its warning is an error. JPEGs are decoded
at a reduced scale (`draft`), the others are reduced (`reduce`) before the final resample. A
thumbnail that cannot be made leaves the image archived without one, with the reason."""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageOps

from app.archive.store import ObjectStore, StoreError

THUMBNAIL_SIZE: Final = 256  # fits within THUMBNAIL_SIZE x THUMBNAIL_SIZE, aspect kept
THUMBNAIL_QUALITY: Final = 80
THUMBNAIL_CONTENT_TYPE: Final = "image/webp"
_MIB: Final = 1024 * 1024
# The store buffers bodies up to one cloud part for a single put: keeping their chunks until the
# thumbnail is made costs no memory beyond the copy's own. Larger bodies get no thumbnail.
MAX_SOURCE_BYTES: Final = 5 * _MIB
# Peak memory of one decode, bounded through the pixel count. Bytes per pixel measured with
# Pillow 13 (decode, reduce, resample, encode): PNG about 6 (RGBA), JPEG less (draft), WebP about
# 13 (libwebp's canvas, the frame's copy, the image). The provider makes at most 1536x1024
# (1.57 Mpx): the budget admits that in every format, PNG and JPEG up to 4.2 Mpx.
DECODE_BUDGET: Final = 24 * _MIB
_BYTES_PER_PIXEL: Final = {"PNG": 6, "JPEG": 6, "WEBP": 13}
MAX_PIXELS: Final = {name: DECODE_BUDGET // cost for name, cost in _BYTES_PER_PIXEL.items()}
_PILLOW_FORMATS: Final = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
THUMBNAILS_AT_ONCE: Final = 1  # decodes per process: the budget above holds per process

# Deliberate, process-wide: Pillow refuses to open anything larger than the largest budget
# (DecompressionBombError above twice this, the warning above it, made an error here).
Image.MAX_IMAGE_PIXELS = max(MAX_PIXELS.values())
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def thumbnail_key(image_key: str) -> str:
    """Where the thumbnail of the image at `image_key` lives (the same for every attempt)."""
    return f"{image_key}.thumb.webp"


class ThumbnailRefused(Exception):
    """No thumbnail for this image; the message says why."""


@dataclass(frozen=True, slots=True)
class ThumbnailResult:
    """What became of an image's thumbnail: its key, or why there is none."""

    key: str | None
    error: str | None


class BodyKeeper:
    """Keeps the chunks of a stream passing through while it is at most `limit` bytes long."""

    def __init__(self, limit: int = MAX_SOURCE_BYTES) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    async def tee(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yield `source` unchanged, keeping references to its chunks while within the limit."""
        try:
            async for chunk in source:
                self._size += len(chunk)
                if self._size <= self._limit:
                    self._chunks.append(chunk)
                elif self._chunks:
                    self._chunks = []  # past the limit: let go before the store does
                yield chunk
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    def take(self) -> bytes | None:
        """The whole body when it fitted the limit (once), else None."""
        if self._size > self._limit:
            return None
        body = b"".join(self._chunks)
        self._chunks = []
        return body


def pillow_format(content_type: str) -> str:
    """Pillow's name of an archived image's format."""
    name = _PILLOW_FORMATS.get(content_type)
    if name is None:
        raise ThumbnailRefused(f"no thumbnails of {content_type}")
    return name


def check_pixels(name: str, width: int, height: int) -> None:
    """Refuse an image whose decode would pass the budget."""
    if width * height > MAX_PIXELS[name]:
        raise ThumbnailRefused(
            f"{width}x{height} pixels is more than the {MAX_PIXELS[name]} a {name} thumbnail "
            "may decode"
        )


def make_thumbnail(body: bytes, content_type: str) -> bytes:
    """Encode the WebP thumbnail of an image; ThumbnailRefused says why not. CPU-bound."""
    name = pillow_format(content_type)
    try:
        with Image.open(io.BytesIO(body), formats=[name]) as image:
            check_pixels(name, *image.size)
            source: Image.Image = image
            if source.mode in ("1", "P"):  # resampled properly, not nearest-neighbour
                source = source.convert("RGBA" if source.has_transparency_data else "RGB")
            # thumbnail() drafts a JPEG first (decoded at 1/2, 1/4 or 1/8 scale, at least
            # twice the target size), reduces the others by an integer factor, then resamples.
            source.thumbnail(
                (THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS, reducing_gap=2.0
            )
            small = ImageOps.exif_transpose(source)  # as browsers show the full image
        if small.mode not in ("RGB", "RGBA"):
            small = small.convert("RGBA" if small.has_transparency_data else "RGB")
        out = io.BytesIO()
        small.save(out, "WEBP", quality=THUMBNAIL_QUALITY)
        return out.getvalue()
    except ThumbnailRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ThumbnailRefused(f"decompression bomb: {exc}") from None
    except Exception as exc:  # any failure of a decoder on hostile input
        raise ThumbnailRefused(f"undecodable {name}: {type(exc).__name__}: {exc}") from None


class Thumbnailer:
    """Makes and stores thumbnails, a bounded number at a time (one per process and loop)."""

    def __init__(self, store: ObjectStore, at_once: int = THUMBNAILS_AT_ONCE) -> None:
        self._store = store
        self._gate = asyncio.Semaphore(at_once)

    async def store_thumbnail(
        self,
        image_key: str,
        content_type: str,
        body: bytes | None,
        size: tuple[int | None, int | None],
    ) -> ThumbnailResult:
        """Make and store the thumbnail of the image stored at `image_key`; never raises for
        the image's sake (a failure is the result's `error`), so the image is archived anyway."""
        key = thumbnail_key(image_key)
        try:
            if body is None:
                raise ThumbnailRefused(f"the image is larger than {MAX_SOURCE_BYTES} bytes")
            width, height = size
            if width is not None and height is not None:  # the header, as the copy read it
                check_pixels(pillow_format(content_type), width, height)
            async with self._gate:
                data = await asyncio.to_thread(make_thumbnail, body, content_type)
            del body
            await self._store.put_stream(key, _once(data), content_type=THUMBNAIL_CONTENT_TYPE)
        except (ThumbnailRefused, StoreError) as exc:
            return ThumbnailResult(key=None, error=str(exc)[:200])
        return ThumbnailResult(key=key, error=None)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
