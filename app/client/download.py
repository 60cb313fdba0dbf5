"""Save an archived image: stream it beside its destination, check it, rename it into place."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from app.client.api import Gateway, ImageView

CHUNK_BYTES = 64 * 1024


class ChecksumMismatch(Exception):
    """The bytes received are not the ones the service archived."""

    def __init__(self, size: int, sha256: str) -> None:
        super().__init__(f"got {size} bytes with sha256 {sha256}")
        self.size = size
        self.sha256 = sha256


def save_image(
    gateway: Gateway, image: ImageView, out: Path, on_bytes: Callable[[int], None]
) -> None:
    """Download `image` to `out` atomically; `on_bytes` is told the running byte count.

    The bytes go to a hidden temporary file in the same directory, which becomes `out` (one
    rename) only when its size and sha256 match the task object; otherwise it is removed.
    """
    fd, name = tempfile.mkstemp(dir=out.absolute().parent, prefix=f".{out.name}.", suffix=".part")
    partial: str | None = name
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as file, gateway.image(image.url) as response:
            on_bytes(0)
            for chunk in response.iter_bytes(CHUNK_BYTES):
                file.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                on_bytes(size)
            file.flush()
            os.fsync(file.fileno())
        if size != image.bytes or digest.hexdigest() != image.sha256:
            raise ChecksumMismatch(size, digest.hexdigest())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)  # mkstemp makes the file private to its owner
        os.replace(name, out)
        partial = None
    finally:
        if partial is not None:
            Path(partial).unlink(missing_ok=True)
