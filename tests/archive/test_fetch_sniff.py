"""Magic bytes and the streaming pixel-size parsers, against images Pillow writes."""

from __future__ import annotations

import io
import itertools
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from app.storage.sniff import (
    JPEG,
    MAGIC_LENGTH,
    PNG,
    SIZE_LOOKAHEAD,
    WEBP,
    ImageFormat,
    SizeReader,
    sniff_format,
)

SIZES = [(1, 1), (17, 9), (640, 480), (3001, 7)]
CHUNK_SIZES = [1, 7, 4096, 1 << 30]


def encode(size: tuple[int, int], mode: str, pil_format: str, **options: Any) -> bytes:
    """An image Pillow writes, with some pixel variety so encoders do real work."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


def read_size(image_format: ImageFormat, data: bytes, chunk: int) -> tuple[int, int] | None:
    """Feed `data` in pieces of `chunk` bytes and return what the reader found."""
    reader = SizeReader(image_format)
    for start in range(0, len(data), chunk):
        reader.feed(data[start : start + chunk])
    assert reader.done
    return reader.size


def exif_with(blob_size: int) -> Image.Exif:
    """EXIF metadata large enough to push the frame header further into the file."""
    exif = Image.Exif()
    exif[0x010E] = "x" * blob_size  # ImageDescription
    return exif


VARIANTS: list[tuple[str, ImageFormat, str, str, dict[str, Any]]] = [
    ("png-rgb", PNG, "RGB", "PNG", {}),
    ("png-rgba", PNG, "RGBA", "PNG", {}),
    ("png-palette", PNG, "P", "PNG", {}),
    ("jpeg-baseline", JPEG, "RGB", "JPEG", {"quality": 80}),
    ("jpeg-progressive", JPEG, "RGB", "JPEG", {"progressive": True}),
    ("jpeg-gray", JPEG, "L", "JPEG", {}),
    ("jpeg-exif", JPEG, "RGB", "JPEG", {"exif": exif_with(30_000)}),
    ("webp-lossy", WEBP, "RGB", "WEBP", {"quality": 70}),
    ("webp-lossy-alpha", WEBP, "RGBA", "WEBP", {}),
    ("webp-lossless", WEBP, "RGB", "WEBP", {"lossless": True}),
    ("webp-lossless-alpha", WEBP, "RGBA", "WEBP", {"lossless": True}),
    ("webp-exif", WEBP, "RGB", "WEBP", {"exif": exif_with(100)}),
]


@pytest.mark.parametrize(
    ("image_format", "mode", "pil_format", "options"),
    [pytest.param(*variant[1:], id=variant[0]) for variant in VARIANTS],
)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_size_is_read_from_pillow_images_in_any_chunking(
    image_format: ImageFormat,
    mode: str,
    pil_format: str,
    options: dict[str, Any],
    size: tuple[int, int],
) -> None:
    data = encode(size, mode, pil_format, **options)
    assert Image.open(io.BytesIO(data)).size == size
    assert sniff_format(data[:MAGIC_LENGTH]) == image_format
    for chunk in CHUNK_SIZES:
        assert read_size(image_format, data, chunk) == size, chunk


def test_webp_variants_cover_all_three_chunk_kinds() -> None:
    kinds = {
        encode((5, 5), mode, "WEBP", **options)[12:16]
        for _, image_format, mode, _, options in VARIANTS
        if image_format == WEBP
    }
    assert kinds == {b"VP8 ", b"VP8L", b"VP8X"}


def test_progressive_jpeg_uses_sof2() -> None:
    data = encode((8, 8), "RGB", "JPEG", progressive=True)
    assert b"\xff\xc2" in data
    assert b"\xff\xc0" not in data


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\0\0\0\x0d", PNG),
        (b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01", JPEG),
        (b"RIFF\x10\0\0\0WEBP", WEBP),
        (b"RIFF\x10\0\0\0WAVE", None),
        (b"<!doctype html>", None),
        (b"PK\x03\x04\x14\0\0\0\x08\0\0\0", None),
        (b"GIF89a\x01\0\x01\0\0\0", None),
        (b"\x89PNG\r\n\x1a\x00\0\0\0\x0d", None),
        (b"", None),
    ],
)
def test_magic_bytes(head: bytes, expected: ImageFormat | None) -> None:
    assert sniff_format(head) == expected


def jpeg_with_segments(segment_count: int, frame: bytes) -> bytes:
    """SOI, `segment_count` maximal APP1 segments, then `frame` (a SOF segment)."""
    app1 = b"\xff\xe1" + struct.pack(">H", 0xFFFF) + b"\0" * (0xFFFF - 2)
    return b"\xff\xd8" + app1 * segment_count + frame


SOF0_300x200 = b"\xff\xc0\x00\x11\x08\x00\xc8\x01\x2c\x03" + b"\0" * 9


def test_jpeg_frame_header_after_large_segments_is_found_within_the_lookahead() -> None:
    data = jpeg_with_segments(15, SOF0_300x200)  # about 0.94 MiB before the frame
    assert len(data) < SIZE_LOOKAHEAD
    assert read_size(JPEG, data, 4096) == (300, 200)
    assert read_size(JPEG, data, 7) == (300, 200)


def test_jpeg_frame_header_beyond_the_lookahead_gives_up() -> None:
    data = jpeg_with_segments(17, SOF0_300x200)  # about 1.06 MiB before the frame
    reader = SizeReader(JPEG)
    reader.feed(data[: SIZE_LOOKAHEAD // 2])
    assert not reader.done
    reader.feed(data[SIZE_LOOKAHEAD // 2 : SIZE_LOOKAHEAD])
    assert reader.done
    assert reader.size is None


def test_jpeg_fill_bytes_and_standalone_markers_are_skipped() -> None:
    data = b"\xff\xd8" + b"\xff\xff\xff\xd0" + b"\xff\xff\xe0\x00\x04ab" + SOF0_300x200
    for chunk in (1, 2, 3, len(data)):
        assert read_size(JPEG, data, chunk) == (300, 200)


@pytest.mark.parametrize(
    ("image_format", "data"),
    [
        pytest.param(PNG, b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDX" + b"\0" * 20, id="png-no-ihdr"),
        pytest.param(PNG, b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR" + b"\0" * 20, id="png-zero-size"),
        pytest.param(JPEG, b"\xff\xd8\xff\xda\x00\x02" + b"\0" * 50, id="jpeg-scan-first"),
        pytest.param(JPEG, b"\xff\xd8\xff\xd9", id="jpeg-end-first"),
        pytest.param(JPEG, b"\xff\xd8\x00\x00\x00\x00", id="jpeg-no-marker"),
        pytest.param(JPEG, b"\xff\xd8\xff\xe0\x00\x01" + b"\0" * 20, id="jpeg-bad-length"),
        pytest.param(JPEG, b"\xff\xd8\xff\xc0\x00\x03" + b"\0" * 20, id="jpeg-short-frame"),
        pytest.param(WEBP, b"RIFF\0\0\0\0WEBPVP8 \0\0\0\0" + b"\0" * 10, id="webp-bad-start"),
        pytest.param(WEBP, b"RIFF\0\0\0\0WEBPVP8L\0\0\0\0" + b"\0" * 10, id="webp-bad-signature"),
        pytest.param(WEBP, b"RIFF\0\0\0\0WEBPANIM\0\0\0\0" + b"\0" * 10, id="webp-unknown-chunk"),
    ],
)
def test_malformed_headers_give_no_size(image_format: ImageFormat, data: bytes) -> None:
    assert read_size(image_format, data, 3) is None


def test_truncated_header_leaves_the_reader_waiting() -> None:
    data = encode((40, 30), "RGB", "PNG")[:20]
    reader = SizeReader(PNG)
    reader.feed(data)
    assert not reader.done
    assert reader.size is None


@given(
    image_format=st.sampled_from([PNG, JPEG, WEBP]),
    body=st.binary(max_size=400),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_chunking_of_any_bytes_gives_the_same_answer(
    image_format: ImageFormat, body: bytes, cuts: list[int]
) -> None:
    prefixes = {PNG: b"\x89PNG\r\n\x1a\n", JPEG: b"\xff\xd8\xff", WEBP: b"RIFF\0\0\0\0WEBP"}
    data = prefixes[image_format] + body
    whole = SizeReader(image_format)
    whole.feed(data)
    pieces = SizeReader(image_format)
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in itertools.pairwise(edges):
        pieces.feed(data[start:end])
    assert (pieces.done, pieces.size) == (whole.done, whole.size)
