"""Image types told by their magic numbers, never by a declared Content-Type or file name."""

from __future__ import annotations

import hashlib

SNIFF_LENGTH = 12  # enough for every signature below

# Content type -> file extension, for what the Files API stores and serves.
UPLOAD_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}
# What the provider accepts as a reference image (`image_urls`): no GIF.
REFERENCE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})


def sniff(head: bytes) -> str | None:
    """The content type announced by the first SNIFF_LENGTH bytes of a body, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


class Tally:
    """Counts and hashes a body as it passes, keeping its first bytes to sniff."""

    def __init__(self) -> None:
        self.size = 0
        self.head = b""
        self._hash = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        """Account for the next piece of the body."""
        if len(self.head) < SNIFF_LENGTH:
            self.head += chunk[: SNIFF_LENGTH - len(self.head)]
        self.size += len(chunk)
        self._hash.update(chunk)

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything added so far."""
        return self._hash.hexdigest()

    @property
    def content_type(self) -> str | None:
        """The sniffed type of the body so far."""
        return sniff(self.head)
