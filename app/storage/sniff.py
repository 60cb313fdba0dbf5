"""Recognise PNG, JPEG and WebP by their magic bytes and read their pixel size while streaming."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

MAGIC_LENGTH = 12
SIZE_LOOKAHEAD = 1024 * 1024

Size = tuple[int, int]


@dataclass(frozen=True)
class ImageFormat:
    """A format this service accepts."""

    content_type: str
    extension: str


PNG = ImageFormat("image/png", "png")
JPEG = ImageFormat("image/jpeg", "jpg")
WEBP = ImageFormat("image/webp", "webp")


def sniff_format(head: bytes) -> ImageFormat | None:
    """The format announced by the first MAGIC_LENGTH bytes of a body, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return None


@dataclass(frozen=True)
class _Skip:
    """A parser's request to pass over `count` bytes unseen."""

    count: int


# A parser yields how many bytes it needs next (an int: it is sent exactly those bytes) or a
# _Skip (it is sent b""), and returns the size it found or None.
_Parser = Generator[int | _Skip, bytes, Size | None]


def _size(width: int, height: int) -> Size | None:
    return (width, height) if width > 0 and height > 0 else None


def _png() -> _Parser:
    header = yield 24  # signature, then the IHDR chunk's length, type, width and height
    if header[12:16] != b"IHDR":
        return None
    return _size(int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big"))


# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg() -> _Parser:
    yield _Skip(2)  # SOI
    while True:
        if (yield 1) != b"\xff":
            return None
        marker = 0xFF
        while marker == 0xFF:  # any number of fill bytes may precede a marker
            marker = (yield 1)[0]
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            return None
        length = int.from_bytes((yield 2), "big")
        if marker in _SOF_MARKERS:
            if length < 7:
                return None
            frame = yield 5  # precision, height, width
            return _size(int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big"))
        if length < 2:
            return None
        yield _Skip(length - 2)


def _webp() -> _Parser:
    header = yield 20  # RIFF, size, WEBP, then the first chunk's type and size
    kind = header[12:16]
    if kind == b"VP8 ":
        frame = yield 10  # frame tag, start code, 14-bit width and height
        if frame[3:6] != b"\x9d\x01\x2a":
            return None
        width = int.from_bytes(frame[6:8], "little") & 0x3FFF
        height = int.from_bytes(frame[8:10], "little") & 0x3FFF
        return _size(width, height)
    if kind == b"VP8L":
        data = yield 5  # signature 0x2f, then 14 bits width-1 and 14 bits height-1
        if data[0] != 0x2F:
            return None
        bits = int.from_bytes(data[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        data = yield 10  # flags, reserved, 24 bits canvas width-1 and height-1
        return int.from_bytes(data[4:7], "little") + 1, int.from_bytes(data[7:10], "little") + 1
    return None


_PARSERS: dict[ImageFormat, Callable[[], _Parser]] = {PNG: _png, JPEG: _jpeg, WEBP: _webp}


class SizeReader:
    """Finds an image's pixel size in bytes fed in pieces, looking no further than `lookahead`."""

    def __init__(self, image_format: ImageFormat, lookahead: int = SIZE_LOOKAHEAD) -> None:
        self._parser = _PARSERS[image_format]()
        self._lookahead = lookahead
        self._consumed = 0
        self._buffer = bytearray()
        self._request: int | _Skip | None = None
        self.size: Size | None = None
        self._accept(next(self._parser))

    @property
    def done(self) -> bool:
        """True once the size was found or given up on."""
        return self._request is None

    def feed(self, data: bytes) -> None:
        """Pass the next bytes of the body."""
        position = 0
        while self._request is not None and position < len(data):
            request = self._request
            available = len(data) - position
            if isinstance(request, _Skip):
                step = min(request.count, available)
                position += step
                if step < request.count:
                    self._request = _Skip(request.count - step)
                else:
                    self._answer(b"")
                continue
            step = min(request - len(self._buffer), available)
            self._buffer += data[position : position + step]
            position += step
            if len(self._buffer) == request:
                answer = bytes(self._buffer)
                self._buffer.clear()
                self._answer(answer)

    def _answer(self, answer: bytes) -> None:
        try:
            request = self._parser.send(answer)
        except StopIteration as stop:
            self.size = stop.value
            self._request = None
            return
        self._accept(request)

    def _accept(self, request: int | _Skip) -> None:
        needed = request.count if isinstance(request, _Skip) else request
        if self._consumed + needed > self._lookahead:
            self._parser.close()
            self._request = None
            return
        self._consumed += needed
        self._request = request
