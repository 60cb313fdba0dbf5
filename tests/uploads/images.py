"""Images for upload tests: real ones Pillow writes, and hand-built hostile ones."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from PIL import Image


def encode(size: tuple[int, int], pil_format: str, mode: str = "RGB", **options: Any) -> bytes:
    """An image Pillow writes, with some pixel variety."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(size, "PNG")


def jpeg(size: tuple[int, int] = (64, 48), **options: Any) -> bytes:
    return encode(size, "JPEG", **options)


def webp(size: tuple[int, int] = (64, 48), **options: Any) -> bytes:
    return encode(size, "WEBP", **options)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A real, valid PNG of `width` x `height` 1-bit black pixels: small on disk, huge decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def noise_png(size_bytes: int) -> bytes:
    """A valid PNG of about `size_bytes` (incompressible grey noise), for large uploads."""
    import os

    side = int((size_bytes * 1.0) ** 0.5) + 1
    raw = os.urandom(side * side)
    image = Image.frombytes("L", (side, side), raw)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()
