"""Thumbnail decoding with Pillow, run in the decoder process (`python -m app.archive.decoding`).

Result bodies are hostile input, so decoding is bounded before any pixel is decoded: the pixel
count, read from the header, must fit a decode budget; Pillow's decompression-bomb check is set
to the same bound and its warning is an error. JPEGs are decoded at a reduced scale (`draft`),
the others are reduced (`reduce`) before the final resample. The process imports nothing but
Pillow; it answers one request at a time on its stdin and stdout (see `serve`), and the service
kills it when a decode passes its deadline (app/archive/thumbnails.py)."""

from __future__ import annotations

import io
import math
import os
import resource
import struct
import sys
import warnings
from collections.abc import Callable
from typing import BinaryIO, Final

from PIL import Image, ImageOps

THUMBNAIL_SIZE: Final = 256  # fits within THUMBNAIL_SIZE x THUMBNAIL_SIZE, aspect kept
THUMBNAIL_QUALITY: Final = 80
# libwebp's effort (0-6; Pillow's default is 4). For a 256-pixel thumbnail, 1 encodes about five
# times faster (1.5 ms instead of 7.6 for one of a photo-like 1024x1024 image; a third of the
# whole thumbnail's CPU) for a file a few per cent larger (2.3 KB instead of 2.2).
THUMBNAIL_EFFORT: Final = 1
_MIB: Final = 1024 * 1024
# Peak memory of one decode, bounded through the pixel count. Bytes per pixel measured with
# Pillow 13 (decode, reduce, resample, encode): PNG about 6 (RGBA), JPEG less (draft), WebP about
# 13 (libwebp's canvas, the frame's copy, the image). The provider makes at most 1536x1024
# (1.57 Mpx): the budget admits that in every format, PNG and JPEG up to 4.2 Mpx.
DECODE_BUDGET: Final = 24 * _MIB
_BYTES_PER_PIXEL: Final = {"PNG": 6, "JPEG": 6, "WEBP": 13}
MAX_PIXELS: Final = {name: DECODE_BUDGET // cost for name, cost in _BYTES_PER_PIXEL.items()}
_PILLOW_FORMATS: Final = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}

# Deliberate, process-wide: Pillow refuses to open anything larger than the largest budget
# (DecompressionBombError above twice this, the warning above it, made an error here).
Image.MAX_IMAGE_PIXELS = max(MAX_PIXELS.values())
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# The decoder process's protocol. It says READY once Pillow is loaded; then each request is
# REQUEST (content type's length, body's length), the content type, the body; each answer is
# ANSWER (THUMBNAIL or REFUSED, payload's length), then the WebP or the reason (UTF-8).
READY: Final = b"R"
REQUEST: Final = struct.Struct(">HI")
ANSWER: Final = struct.Struct(">BI")
THUMBNAIL: Final = 0
REFUSED: Final = 1
# The process's own bound on one decode's CPU time, should nobody kill it: the service kills it
# at its deadline (10 s of wall time), but a service that crashed mid-decode cannot.
CPU_SECONDS: Final = 30

Decode = Callable[[bytes, str], bytes]


class ThumbnailRefused(Exception):
    """No thumbnail for this image; the message says why."""


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
        small.save(out, "WEBP", quality=THUMBNAIL_QUALITY, method=THUMBNAIL_EFFORT)
        return out.getvalue()
    except ThumbnailRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ThumbnailRefused(f"decompression bomb: {exc}") from None
    except Exception as exc:  # any failure of a decoder on hostile input
        raise ThumbnailRefused(f"undecodable {name}: {type(exc).__name__}: {exc}") from None


def limit_cpu(seconds: int) -> None:
    """Let the process spend at most `seconds` more CPU time, then die of SIGXCPU."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = math.ceil(usage.ru_utime + usage.ru_stime) + seconds
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))


def serve(
    requests: BinaryIO,
    answers: BinaryIO,
    decode: Decode = make_thumbnail,
    cpu_seconds: int = CPU_SECONDS,
) -> None:
    """Answer requests until `requests` ends: the decoder process's loop."""
    answers.write(READY)
    answers.flush()
    while len(head := requests.read(REQUEST.size)) == REQUEST.size:
        type_length, body_length = REQUEST.unpack(head)
        content_type = requests.read(type_length).decode()
        body = requests.read(body_length)
        if len(body) != body_length:
            return
        limit_cpu(cpu_seconds)
        try:
            status, payload = THUMBNAIL, decode(body, content_type)
        except ThumbnailRefused as exc:
            status, payload = REFUSED, str(exc).encode()
        del body
        answers.write(ANSWER.pack(status, len(payload)) + payload)
        answers.flush()


def main(decode: Decode = make_thumbnail, cpu_seconds: int = CPU_SECONDS) -> None:
    """Serve on stdin and stdout; anything else written to stdout goes to stderr instead."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file when the CPU limit ends it
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers, decode, cpu_seconds)


if __name__ == "__main__":
    main()
