"""Thumbnails from hostile bodies: small WebPs of the right shape, or a reason and no decode;
made from the stored object (on the console's first request), stored beside it."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta

import pytest
from PIL import Image

from app.archive import thumbnails
from app.archive.decoding import MAX_PIXELS, THUMBNAIL_SIZE, ThumbnailRefused, make_thumbnail
from app.archive.thumbnails import (
    MAX_SOURCE_BYTES,
    THUMBNAIL_CONTENT_TYPE,
    Decoder,
    DecoderUnavailable,
    Thumbnailer,
    ThumbnailResult,
    thumbnail_key,
)
from app.storage.store import ObjectStore, StoredObject, StoreError

FORMATS = [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]


def encoded(image: Image.Image, pil_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, pil_format)
    return buffer.getvalue()


def picture(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A gradient (compresses well, decodes like any picture)."""
    return Image.linear_gradient("L").resize(size).convert(mode)


def noise(size: tuple[int, int]) -> Image.Image:
    """Incompressible pixels."""
    return Image.frombytes("RGB", size, random.Random(size[0]).randbytes(size[0] * size[1] * 3))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, idat: bytes) -> bytes:
    """A PNG whose header claims `width`x`height` RGB pixels, whatever `idat` holds."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def opened(thumbnail: bytes) -> Image.Image:
    assert (thumbnail[:4], thumbnail[8:12]) == (b"RIFF", b"WEBP")
    image = Image.open(io.BytesIO(thumbnail), formats=["WEBP"])
    image.load()
    return image


@pytest.mark.parametrize(("pil_format", "content_type"), FORMATS)
def test_a_thumbnail_is_a_small_webp_with_the_images_aspect(
    pil_format: str, content_type: str
) -> None:
    body = encoded(picture((1536, 1024)), pil_format)

    thumbnail = opened(make_thumbnail(body, content_type))

    assert thumbnail.size == (THUMBNAIL_SIZE, 171)
    assert thumbnail.mode == "RGB"


def test_a_portrait_image_fits_by_its_height() -> None:
    thumbnail = opened(make_thumbnail(encoded(picture((1024, 1536)), "PNG"), "image/png"))

    assert thumbnail.size == (171, THUMBNAIL_SIZE)


def test_transparency_is_kept_and_palette_images_are_resampled() -> None:
    rgba = picture((600, 300), "RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((600, 300)))
    palette = picture((600, 300)).convert("P", palette=Image.Palette.ADAPTIVE)

    with_alpha = opened(make_thumbnail(encoded(rgba, "PNG"), "image/png"))
    from_palette = opened(make_thumbnail(encoded(palette, "PNG"), "image/png"))

    assert (with_alpha.mode, with_alpha.size) == ("RGBA", (256, 128))
    assert (from_palette.mode, from_palette.size) == ("RGB", (256, 128))


def test_a_small_image_is_not_enlarged() -> None:
    thumbnail = opened(make_thumbnail(encoded(picture((120, 80)), "JPEG"), "image/jpeg"))

    assert thumbnail.size == (120, 80)


@pytest.mark.parametrize("size", [(100_000, 100_000), (2500, 2000)], ids=["huge", "over-limit"])
def test_a_decompression_bomb_is_refused_before_decoding(size: tuple[int, int]) -> None:
    # A few hundred bytes claiming 10 gigapixels, and one between Pillow's limit and twice it
    # (its warning, made an error).
    bomb = png_claiming(*size, zlib.compress(bytes(1000)))

    with pytest.raises(ThumbnailRefused, match="bomb"):
        make_thumbnail(bomb, "image/png")


def test_a_webp_past_its_own_smaller_budget_is_refused() -> None:
    side = 1600  # 2.56 Mpx: within Pillow's process-wide limit, past WebP's decode budget
    assert side * side <= (Image.MAX_IMAGE_PIXELS or 0)
    body = encoded(Image.new("RGB", (side, side), "teal"), "WEBP")

    with pytest.raises(ThumbnailRefused, match=f"more than the {MAX_PIXELS['WEBP']}"):
        make_thumbnail(body, "image/webp")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (png_claiming(64, 64, b"not zlib at all"), "image/png"),
        (b"\xff\xd8\xff\xe0" + b"garbage" * 100, "image/jpeg"),
        (b"RIFF\x00\x01\x00\x00WEBPVP8 " + b"garbage" * 100, "image/webp"),
        (encoded(noise((300, 200)), "PNG")[:50_000], "image/png"),  # cut off halfway
    ],
    ids=["png", "jpeg", "webp", "truncated-png"],
)
def test_an_undecodable_body_after_valid_magic_bytes_is_refused(
    body: bytes, content_type: str
) -> None:
    with pytest.raises(ThumbnailRefused, match="undecodable"):
        make_thumbnail(body, content_type)


def test_the_key_sits_beside_the_image() -> None:
    assert thumbnail_key("tasks/abc/images/0") == "tasks/abc/images/0.thumb.webp"


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.fixture
async def thumbnailer() -> AsyncIterator[Thumbnailer]:
    made = Thumbnailer(ObjectStore.from_url("memory://"))
    try:
        yield made
    finally:
        await made.aclose()


async def stored(thumbnailer: Thumbnailer, key: str, body: bytes, content_type: str) -> None:
    await thumbnailer._store.put_stream(key, pieces(body), content_type=content_type)


async def read(store: ObjectStore, key: str) -> bytes:
    found = await store.open(key)
    assert found is not None
    return b"".join([chunk async for chunk in found[1]])


@pytest.mark.parametrize(("pil_format", "content_type"), FORMATS)
async def test_the_thumbnail_of_a_stored_image_is_stored_beside_it(
    thumbnailer: Thumbnailer, pil_format: str, content_type: str
) -> None:
    key = "tasks/t/images/0"
    await stored(thumbnailer, key, encoded(picture((900, 600)), pil_format), content_type)

    made = await thumbnailer.thumbnail_of(key, content_type, (900, 600))

    assert made == ThumbnailResult(key=f"{key}.thumb.webp", error=None)
    assert await thumbnailer._store.list_keys() == [key, f"{key}.thumb.webp"]
    assert opened(await read(thumbnailer._store, f"{key}.thumb.webp")).size == (256, 171)


async def test_a_missing_object_gives_no_result(thumbnailer: Thumbnailer) -> None:
    assert await thumbnailer.thumbnail_of("tasks/t/images/0", "image/png", (10, 10)) is None


async def test_the_recorded_size_is_checked_before_the_object_is_read(
    thumbnailer: Thumbnailer,
) -> None:
    # No object at all: a refusal from the recorded header alone reads nothing, decodes nothing.
    made = await thumbnailer.thumbnail_of("tasks/t/images/0", "image/png", (100_000, 100_000))

    assert made is not None
    assert made.key is None
    assert "100000x100000 pixels is more than" in (made.error or "")


async def test_an_undecodable_object_gets_the_reason(thumbnailer: Thumbnailer) -> None:
    await stored(thumbnailer, "k", png_claiming(64, 48, b"not zlib at all"), "image/png")

    made = await thumbnailer.thumbnail_of("k", "image/png", (64, 48))

    assert made is not None
    assert made.key is None
    assert "undecodable PNG" in (made.error or "")
    assert await thumbnailer._store.list_keys() == ["k"]


async def test_an_object_larger_than_the_limit_is_not_read_whole(
    thumbnailer: Thumbnailer,
) -> None:
    body = encoded(noise((1400, 1400)), "PNG")  # 5.6 MiB, within the pixel budget
    assert len(body) > MAX_SOURCE_BYTES
    await stored(thumbnailer, "k", body, "image/png")

    made = await thumbnailer.thumbnail_of("k", "image/png", (1400, 1400))

    assert made == ThumbnailResult(
        key=None, error=f"the image is larger than {MAX_SOURCE_BYTES} bytes"
    )


class ThumbnailsFail(ObjectStore):
    """A memory store that refuses thumbnails."""

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> StoredObject:
        if content_type == THUMBNAIL_CONTENT_TYPE:
            raise StoreError(f"put {key!r} failed: the store is down")
        return await super().put_stream(key, chunks, content_type=content_type)


async def test_a_store_error_is_raised_not_kept_as_the_images_reason() -> None:
    thumbnailer = Thumbnailer(ThumbnailsFail.from_url("memory://"))
    try:
        await stored(thumbnailer, "k", encoded(picture((300, 200)), "PNG"), "image/png")
        with pytest.raises(StoreError, match="the store is down"):
            await thumbnailer.thumbnail_of("k", "image/png", (300, 200))
    finally:
        await thumbnailer.aclose()


async def put_object(store: ObjectStore, key: str, body: bytes) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield body

    await store.put_stream(key, chunks(), content_type="image/png")


async def test_requests_for_one_image_share_one_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    # A page refreshed, several tabs, several operators: one decode, every request answered.
    store = ObjectStore.from_url("memory://")
    await put_object(store, "t/a", encoded(picture((300, 200)), "PNG"))
    decodes: list[str] = []
    original = Decoder.thumbnail

    async def counted(self: Decoder, body: bytes, content_type: str) -> bytes:
        decodes.append(content_type)
        return await original(self, body, content_type)

    monkeypatch.setattr(Decoder, "thumbnail", counted)
    thumbnailer = Thumbnailer(store)
    try:
        results = await asyncio.gather(
            *(thumbnailer.thumbnail_of("t/a", "image/png", (300, 200)) for _ in range(5))
        )
        again = await thumbnailer.thumbnail_of("t/a", "image/png", (300, 200))  # made: found
    finally:
        await thumbnailer.aclose()

    assert results == [ThumbnailResult(key=thumbnail_key("t/a"), error=None)] * 5
    assert again == results[0]
    assert decodes == ["image/png"]


async def test_a_request_that_finds_no_free_decoder_in_time_is_told_to_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not recorded against the image (DecoderUnavailable: the host's state); nothing was read.
    store = ObjectStore.from_url("memory://")
    await put_object(store, "t/b", encoded(picture((300, 200)), "PNG"))
    monkeypatch.setattr(thumbnails, "SLOT_WAIT", timedelta(milliseconds=50))
    thumbnailer = Thumbnailer(store)
    slot = await thumbnailer._idle.get()  # the one decoder, busy
    try:
        with pytest.raises(DecoderUnavailable, match="busy"):
            await thumbnailer.thumbnail_of("t/b", "image/png", (300, 200))
    finally:
        thumbnailer._idle.put_nowait(slot)
        await thumbnailer.aclose()

    assert await store.head(thumbnail_key("t/b")) is None
