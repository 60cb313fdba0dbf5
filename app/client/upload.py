"""Upload a local reference image: streamed from disk, the bytes checked against what was hashed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from app.client.api import Gateway, UploadView
from app.client.references import LocalImage

CHUNK_BYTES = 256 * 1024


class FileChanged(Exception):
    """The file is no longer the one that was checked (its size or sha256 differs)."""


class UploadMismatch(Exception):
    """The service recorded other bytes than the ones sent."""

    def __init__(self, upload: UploadView) -> None:
        super().__init__(f"the service recorded {upload.bytes} bytes with sha256 {upload.sha256}")
        self.upload = upload


def file_chunks(image: LocalImage, on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    """The file's bytes, exactly `image.size` of them; `on_bytes` is told the running count.

    FileChanged is raised before the last chunk leaves when the bytes are not the checked ones,
    so that the service never receives a complete body of another file."""
    digest = hashlib.sha256()
    sent = 0
    with image.path.open("rb") as file:
        on_bytes(0)
        while sent < image.size:
            chunk = file.read(min(CHUNK_BYTES, image.size - sent))
            if not chunk:
                raise FileChanged(f"{image.path} became shorter while it was uploaded")
            digest.update(chunk)
            if sent + len(chunk) == image.size and digest.hexdigest() != image.sha256:
                raise FileChanged(f"{image.path} changed while it was uploaded")
            yield chunk
            sent += len(chunk)
            on_bytes(sent)


def upload_image(
    gateway: Gateway, image: LocalImage, on_bytes: Callable[[int], None], idempotency_key: str
) -> tuple[UploadView, bool]:
    """Upload the file under `idempotency_key`; the upload and whether it is new.

    UploadMismatch when the service's size or sha256 is not the file's."""
    upload, created = gateway.upload(
        file_chunks(image, on_bytes),
        size=image.size,
        content_type=image.content_type,
        idempotency_key=idempotency_key,
    )
    if upload.bytes != image.size or upload.sha256 != image.sha256:
        raise UploadMismatch(upload)
    return upload, created
