"""The container structure of an uploaded image, checked while it streams: a file must be one
well-formed PNG, JPEG or WebP that ends where its image ends.

Nothing here decodes pixels. PNG: every chunk's length, type and CRC, IHDR first and valid,
IDAT present, IEND last. JPEG: every marker segment's length, the entropy-coded scans walked
to the end-of-image marker. WebP: the RIFF chunks, which must fill the RIFF length exactly.
A byte after the end (a ZIP, a script, a second image glued on: a polyglot file) is refused."""

from __future__ import annotations

import zlib
from typing import Final, Protocol

from app.storage.sniff import JPEG, PNG, WEBP, ImageFormat

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_MAX_PNG_CHUNK: Final = 2**31 - 1  # the PNG specification's bound on a chunk length
# Allowed bit depths of each PNG colour type (PNG specification, table 11.1).
_PNG_DEPTHS: Final = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
_TRAILING: Final = "bytes follow the end of the image (a file glued to an image is refused)"


class StructureError(ValueError):
    """The bytes are not one well-formed image of the format; the message says why."""


class StructureCheck(Protocol):
    """Checks one image's bytes fed in pieces; raises StructureError at the first fault."""

    def feed(self, data: bytes) -> None:
        """The next bytes of the file."""

    def finish(self) -> None:
        """The file ended here."""


def structure_check(image_format: ImageFormat) -> StructureCheck:
    """A fresh check for a file of `image_format`."""
    if image_format == PNG:
        return PngStructure()
    if image_format == JPEG:
        return JpegStructure()
    if image_format == WEBP:
        return WebpStructure()
    raise ValueError(f"no structure check for {image_format.content_type}")


class _Fields:
    """Collects fixed-size fields that may arrive split over several pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def take(self, data: memoryview, position: int, need: int) -> tuple[bytes | None, int]:
        """(the field once `need` bytes are collected else None, the new position)."""
        step = min(need - len(self._buffer), len(data) - position)
        self._buffer += data[position : position + step]
        if len(self._buffer) < need:
            return None, position + step
        field = bytes(self._buffer)
        self._buffer.clear()
        return field, position + step


class PngStructure:
    """A PNG: signature, IHDR, chunks with valid CRCs, at least one IDAT, IEND, then nothing."""

    def __init__(self) -> None:
        self._fields = _Fields()
        self._state = "signature"
        self._remaining = 0  # data bytes of the current chunk still to come
        self._type = b""
        self._crc = 0
        self._ihdr = bytearray()
        self._chunks = 0
        self._seen_data = False
        self._ended = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        position = 0
        while position < len(view):
            if self._ended:
                raise StructureError(f"PNG: {_TRAILING}")
            if self._state == "data":
                step = min(self._remaining, len(view) - position)
                piece = view[position : position + step]
                self._crc = zlib.crc32(piece, self._crc)
                if self._type == b"IHDR":
                    self._ihdr += piece
                position += step
                self._remaining -= step
                if not self._remaining:
                    self._state = "crc"
                continue
            need = {"signature": 8, "header": 8, "crc": 4}[self._state]
            field, position = self._fields.take(view, position, need)
            if field is not None:
                self._field(field)

    def finish(self) -> None:
        if not self._ended:
            raise StructureError("PNG: the file ends before its IEND chunk (truncated)")

    def _field(self, field: bytes) -> None:
        if self._state == "signature":
            if field != PNG_SIGNATURE:
                raise StructureError("PNG: not a PNG signature")
            self._state = "header"
        elif self._state == "header":
            self._header(int.from_bytes(field[:4], "big"), field[4:])
        else:
            if int.from_bytes(field, "big") != self._crc:
                raise StructureError(f"PNG: the CRC of chunk {self._type.decode()} is wrong")
            self._chunk_done()

    def _header(self, length: int, kind: bytes) -> None:
        if not (kind.isascii() and kind.isalpha()):
            raise StructureError("PNG: a chunk type that is not four letters (not PNG data)")
        if length > _MAX_PNG_CHUNK:
            raise StructureError("PNG: a chunk length over 2^31 - 1")
        first = self._chunks == 0
        if first != (kind == b"IHDR") or (first and length != 13):
            raise StructureError("PNG: the first chunk must be one IHDR of 13 bytes")
        if kind == b"IDAT" and not self._chunks:
            raise StructureError("PNG: image data before the header")
        if kind == b"IEND" and length:
            raise StructureError("PNG: an IEND chunk with data")
        self._type, self._remaining = kind, length
        self._crc = zlib.crc32(kind)
        self._chunks += 1
        self._state = "data" if length else "crc"

    def _chunk_done(self) -> None:
        self._state = "header"
        if self._type == b"IHDR":
            _check_ihdr(bytes(self._ihdr))
        elif self._type == b"IDAT":
            self._seen_data = True
        elif self._type == b"IEND":
            if not self._seen_data:
                raise StructureError("PNG: no image data (IDAT chunk)")
            self._ended = True


def _check_ihdr(ihdr: bytes) -> None:
    depth, colour, compression, filtering, interlace = ihdr[8:13]
    if depth not in _PNG_DEPTHS.get(colour, set()):
        raise StructureError(f"PNG: bit depth {depth} with colour type {colour} is not valid")
    if compression or filtering or interlace > 1:
        raise StructureError("PNG: unknown compression, filter or interlace method in IHDR")


# Markers without a length field: TEM and RST0-7.
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA


class JpegStructure:
    """A JPEG: SOI, marker segments with lengths, entropy-coded scans, EOI, then nothing."""

    def __init__(self) -> None:
        self._fields = _Fields()
        self._state = "soi"
        self._marker = 0
        self._remaining = 0  # bytes of the current segment still to skip
        self._scanned = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        position, size = 0, len(view)
        while position < size:
            state = self._state
            if state == "scan":  # entropy-coded data: only 0xFF can start anything else
                found = data.find(b"\xff", position)
                if found < 0:
                    return
                position, self._state = found + 1, "scan-ff"
            elif state == "skip":
                step = min(self._remaining, size - position)
                position += step
                self._remaining -= step
                if not self._remaining:
                    self._segment_done()
            elif state in ("soi", "length"):
                field, position = self._fields.take(view, position, 2)
                if field is not None:
                    self._two_bytes(field)
            elif state == "ended":
                raise StructureError(f"JPEG: {_TRAILING}")
            else:
                self._byte(state, data[position])
                position += 1

    def finish(self) -> None:
        if self._state != "ended":
            raise StructureError("JPEG: the file ends before its end-of-image marker (truncated)")

    def _byte(self, state: str, byte: int) -> None:
        if state == "scan-ff":
            if byte == 0x00 or 0xD0 <= byte <= 0xD7:  # a stuffed 0xFF or a restart marker
                self._state = "scan"
            elif byte != 0xFF:  # 0xFF: fill byte before a marker
                self._on_marker(byte)
        elif state == "marker":
            if byte != 0xFF:
                raise StructureError("JPEG: expected a marker, found other bytes")
            self._state = "marker-code"
        elif byte != 0xFF:  # "marker-code": any number of fill bytes may come first
            self._on_marker(byte)

    def _two_bytes(self, field: bytes) -> None:
        if self._state == "soi":
            if field != b"\xff\xd8":
                raise StructureError("JPEG: no start-of-image marker")
            self._state = "marker"
            return
        length = int.from_bytes(field, "big")
        if length < 2:
            raise StructureError("JPEG: a segment length under 2")
        self._remaining = length - 2
        self._state = "skip"
        if not self._remaining:
            self._segment_done()

    def _on_marker(self, marker: int) -> None:
        if marker == _EOI:
            if not self._scanned:
                raise StructureError("JPEG: end of image before any image data")
            self._state = "ended"
        elif marker in _STANDALONE:
            self._state = "marker"
        elif marker in (_SOI, 0x00):
            raise StructureError(f"JPEG: unexpected marker 0x{marker:02X}")
        else:
            self._marker = marker
            self._state = "length"

    def _segment_done(self) -> None:
        if self._marker == _SOS:
            self._scanned = True
            self._state = "scan"
        else:
            self._state = "marker"


class WebpStructure:
    """A WebP: the RIFF header, then chunks (each padded to an even size) that end exactly
    where the RIFF length says the file ends."""

    def __init__(self) -> None:
        self._fields = _Fields()
        self._state = "riff"
        self._remaining = 0
        self._position = 0  # bytes of the file seen so far
        self._end = 0  # where the RIFF length says the file ends

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        position = 0
        while position < len(view):
            if self._state != "riff" and self._position >= self._end:
                raise StructureError(f"WebP: {_TRAILING}")
            if self._state == "skip":
                step = min(self._remaining, len(view) - position, self._end - self._position)
                position += step
                self._position += step
                self._remaining -= step
                if not self._remaining:
                    self._state = "chunk"
                continue
            need = 12 if self._state == "riff" else 8
            field, moved = self._fields.take(view, position, need)
            self._position += moved - position
            position = moved
            if field is not None:
                self._field(field)

    def finish(self) -> None:
        if self._state != "chunk" or self._position != self._end:
            raise StructureError("WebP: the file ends before its RIFF length (truncated)")

    def _field(self, field: bytes) -> None:
        size = int.from_bytes(field[4:8], "little")
        if self._state == "riff":
            if field[:4] != b"RIFF" or field[8:12] != b"WEBP" or size < 4:
                raise StructureError("WebP: not a RIFF WEBP header")
            self._end = size + 8
            self._state = "chunk"
            return
        if not field[:4].isascii():
            raise StructureError("WebP: a chunk name that is not ASCII (not WebP data)")
        self._remaining = size + (size & 1)
        if self._position + self._remaining > self._end:
            raise StructureError("WebP: a chunk runs past the RIFF length")
        self._state = "skip" if self._remaining else "chunk"
