"""The streaming structure checks: every image Pillow writes passes in any chunking; a
truncated file, a broken chunk, or any byte after the image's end is refused."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.storage.sniff import JPEG, PNG, WEBP, ImageFormat
from app.uploads.structure import StructureError, structure_check
from tests.uploads.images import encode, png_bomb, png_chunk

VARIANTS: list[tuple[str, ImageFormat, str, str, dict[str, Any]]] = [
    ("png-rgb", PNG, "RGB", "PNG", {}),
    ("png-rgba", PNG, "RGBA", "PNG", {}),
    ("png-palette", PNG, "P", "PNG", {}),
    ("png-gray-interlaced", PNG, "L", "PNG", {"interlace": 1}),
    ("png-16-bit", PNG, "I;16", "PNG", {}),
    ("jpeg-baseline", JPEG, "RGB", "JPEG", {"quality": 80}),
    ("jpeg-progressive", JPEG, "RGB", "JPEG", {"progressive": True}),
    ("jpeg-restart-markers", JPEG, "RGB", "JPEG", {"restart_marker_blocks": 1}),
    ("jpeg-gray", JPEG, "L", "JPEG", {}),
    ("jpeg-cmyk", JPEG, "CMYK", "JPEG", {}),
    ("jpeg-comment", JPEG, "RGB", "JPEG", {"comment": b"<html><script>x</script></html>"}),
    ("webp-lossy", WEBP, "RGB", "WEBP", {"quality": 70}),
    ("webp-lossy-alpha", WEBP, "RGBA", "WEBP", {}),
    ("webp-lossless", WEBP, "RGB", "WEBP", {"lossless": True}),
    ("webp-exif", WEBP, "RGB", "WEBP", {"exif": b"Exif\0\0" + b"x" * 101}),
]
PARAMS = [pytest.param(*variant[1:], id=variant[0]) for variant in VARIANTS]
SIZES = [(1, 1), (17, 9), (300, 200)]


def check(image_format: ImageFormat, data: bytes, chunk: int) -> None:
    """Feed `data` in pieces of `chunk` bytes, then end it; raises StructureError."""
    checker = structure_check(image_format)
    for start in range(0, len(data), chunk):
        checker.feed(data[start : start + chunk])
    checker.finish()


@pytest.mark.parametrize(("image_format", "mode", "pil_format", "options"), PARAMS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_images_pillow_writes_pass_in_any_chunking(
    image_format: ImageFormat,
    mode: str,
    pil_format: str,
    options: dict[str, Any],
    size: tuple[int, int],
) -> None:
    data = encode(size, pil_format, mode, **options)
    for chunk in (1, 2, 3, 7, 64, 4096, len(data)):
        check(image_format, data, chunk)


@pytest.mark.parametrize(("image_format", "mode", "pil_format", "options"), PARAMS)
def test_any_truncation_is_refused(
    image_format: ImageFormat, mode: str, pil_format: str, options: dict[str, Any]
) -> None:
    data = encode((40, 30), pil_format, mode, **options)
    for end in range(len(data)):
        with pytest.raises(StructureError):
            check(image_format, data[:end], 97)


@pytest.mark.parametrize(("image_format", "mode", "pil_format", "options"), PARAMS)
@pytest.mark.parametrize(
    "tail",
    [b"\0", b"PK\x03\x04\x14\0\0\0", b"<script>alert(1)</script>", b"\x89PNG\r\n\x1a\n"],
    ids=["nul", "zip", "html", "png"],
)
def test_any_bytes_after_the_image_are_refused(
    image_format: ImageFormat, mode: str, pil_format: str, options: dict[str, Any], tail: bytes
) -> None:
    data = encode((40, 30), pil_format, mode, **options)
    for chunk in (1, 5, len(data) + len(tail)):
        with pytest.raises(StructureError, match=r"follow the end|past the RIFF length"):
            check(image_format, data + tail, chunk)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_a_changed_png_byte_is_refused_or_harmless(position: int, flip: int) -> None:
    """Any one byte changed: the CRCs (or the signature) catch it, whichever byte it is."""
    data = bytearray(encode((20, 10), "PNG"))
    data[position % len(data)] ^= flip
    with pytest.raises(StructureError):
        check(PNG, bytes(data), 13)


def ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


IDAT = png_chunk(b"IDAT", zlib.compress(b"\0" * 4))
IEND = png_chunk(b"IEND", b"")
SIGNATURE = b"\x89PNG\r\n\x1a\n"
BROKEN_PNGS = [
    ("signature then garbage", SIGNATURE + bytes(range(200)), "four letters"),
    ("signature then text", SIGNATURE + b"hello, this is not a PNG at all" * 3, "four letters"),
    ("no IHDR first", SIGNATURE + IDAT + ihdr(1, 1) + IEND, "IHDR"),
    ("IHDR of 12 bytes", SIGNATURE + png_chunk(b"IHDR", b"\0" * 12) + IDAT + IEND, "IHDR"),
    ("two IHDR", SIGNATURE + ihdr(1, 1) + ihdr(1, 1) + IDAT + IEND, "IHDR"),
    ("bad bit depth", SIGNATURE + ihdr(1, 1, depth=3) + IDAT + IEND, "bit depth"),
    ("bad colour type", SIGNATURE + ihdr(1, 1, colour=5) + IDAT + IEND, "bit depth"),
    ("no IDAT", SIGNATURE + ihdr(1, 1) + IEND, "IDAT"),
    ("IEND with data", SIGNATURE + ihdr(1, 1) + IDAT + png_chunk(b"IEND", b"x"), "IEND"),
    ("no IEND", SIGNATURE + ihdr(1, 1) + IDAT, "truncated"),
    ("wrong CRC", SIGNATURE + ihdr(1, 1)[:-1] + b"\0" + IDAT + IEND, "CRC"),
    ("huge chunk length", SIGNATURE + ihdr(1, 1) + b"\xff\xff\xff\xffIDAT", "over 2"),
    ("PNG header glued to a JPEG", SIGNATURE + encode((8, 8), "JPEG"), "four letters"),
]


@pytest.mark.parametrize(("data", "message"), [pytest.param(d, m, id=c) for c, d, m in BROKEN_PNGS])
def test_broken_pngs_are_refused_saying_why(data: bytes, message: str) -> None:
    with pytest.raises(StructureError, match=message):
        check(PNG, data, 5)


def test_a_valid_png_bomb_is_a_valid_structure() -> None:
    """The structure of the 20000x20000 bomb is fine: its pixel count refuses it (ingest)."""
    check(PNG, png_bomb(), 65536)


SOI, EOI = b"\xff\xd8", b"\xff\xd9"
BROKEN_JPEGS = [
    ("no SOI", b"\xff\xe0\0\x04ab" + EOI, "start-of-image"),
    ("EOI before any scan", SOI + b"\xff\xe0\0\x04ab" + EOI, "before any image data"),
    ("segment length under 2", SOI + b"\xff\xe0\0\x01", "under 2"),
    ("bytes between segments", SOI + b"\xff\xe0\0\x02" + b"xx", "expected a marker"),
    ("a second SOI", SOI + SOI, "0xD8"),
    ("scan never ends", SOI + b"\xff\xda\0\x02" + b"\x12\x34" * 50, "truncated"),
]


@pytest.mark.parametrize(
    ("data", "message"), [pytest.param(d, m, id=c) for c, d, m in BROKEN_JPEGS]
)
def test_broken_jpegs_are_refused_saying_why(data: bytes, message: str) -> None:
    with pytest.raises(StructureError, match=message):
        check(JPEG, data, 3)


def test_a_jpeg_scan_with_stuffing_restarts_and_fill_bytes_passes() -> None:
    scan = b"\x12\xff\x00\x34\xff\xd0\x56\xff\xff\xff\xd9"
    check(JPEG, SOI + b"\xff\xff\xda\0\x02" + scan, 1)


def riff(*chunks: bytes, extra: int = 0) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) + extra) + body


def riff_chunk(name: bytes, data: bytes) -> bytes:
    return name + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


BROKEN_WEBPS = [
    ("not RIFF", b"RIFX" + riff(riff_chunk(b"VP8L", b"abc"))[4:], "RIFF WEBP"),
    ("RIFF length short of the file", riff(riff_chunk(b"VP8L", b"abcd"), extra=-2), "RIFF"),
    ("RIFF length past the file", riff(riff_chunk(b"VP8L", b"abcd"), extra=8), "truncated"),
    ("chunk past the RIFF length", riff(b"VP8L" + struct.pack("<I", 99) + b"ab"), "RIFF"),
    ("odd chunk without its pad", riff(b"VP8L" + struct.pack("<I", 3) + b"abc"), "RIFF"),
]


@pytest.mark.parametrize(
    ("data", "message"), [pytest.param(d, m, id=c) for c, d, m in BROKEN_WEBPS]
)
def test_broken_webps_are_refused_saying_why(data: bytes, message: str) -> None:
    with pytest.raises(StructureError, match=message):
        check(WEBP, data, 3)
