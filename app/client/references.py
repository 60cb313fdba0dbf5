"""The `--image` values of `generate`: local files to upload, archived results of earlier tasks.

Every value is checked before anything is sent: a file must be a readable regular file of 1 byte
to 50 MiB (the service's upload limit), `task:ID[:N]` must name a task id and an image index, and
`--image-url` and `--image` together hold at most 16 references. Whether a file is an image the
service takes is for the service to say (it sniffs the bytes and answers 415 otherwise)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from app.provider.types import MAX_IMAGE_URLS
from app.storage.sniff import MAGIC_LENGTH, sniff_format
from app.tasks.schemas import is_task_id

MAX_UPLOAD_BYTES: Final = 50 * 1024 * 1024  # POST /v1/uploads refuses more (413)
MAX_REFERENCES: Final = MAX_IMAGE_URLS  # image_urls and reference_images together
MAX_IMAGE_INDEX: Final = 15  # the largest index GET /v1/tasks/{id}/images/{index} serves
TASK_PREFIX: Final = "task:"
UNKNOWN_TYPE: Final = "application/octet-stream"  # sent as is: the service decides (415)
_HASH_CHUNK: Final = 1024 * 1024
_INDEX: Final = re.compile(r"[0-9]{1,6}")


class BadImage(ValueError):
    """An `--image` value that cannot be used; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class LocalImage:
    """A file to upload, as it was when it was checked."""

    path: Path
    size: int
    sha256: str
    content_type: str  # from the file's first bytes; UNKNOWN_TYPE when not an image type

    @property
    def idempotency_key(self) -> str:
        """The uploads' Idempotency-Key: the same bytes make one upload, however often sent."""
        return f"cli-upload-sha256-{self.sha256}"


@dataclass(frozen=True, slots=True)
class TaskImage:
    """Image `index` of an earlier task of the same caller (a chained edit)."""

    task_id: str
    index: int

    def reference(self) -> dict[str, Any]:
        """The `reference_images` entry."""
        return {"task_id": self.task_id, "index": self.index}


Reference = LocalImage | TaskImage


def parse_task(value: str) -> TaskImage:
    """`task:ID` (image 0) or `task:ID:N`."""
    task_id, _, index = value.removeprefix(TASK_PREFIX).partition(":")
    task_id = task_id.strip().lower()
    if not is_task_id(task_id):
        raise BadImage(f"--image {value}: not a task id (task:ID or task:ID:N, ID a UUID)")
    if not index:
        return TaskImage(task_id, 0)
    if _INDEX.fullmatch(index) is None or int(index) > MAX_IMAGE_INDEX:
        raise BadImage(
            f"--image {value}: the image index must be a whole number from 0 to {MAX_IMAGE_INDEX}"
        )
    return TaskImage(task_id, int(index))


def inspect_file(value: str) -> LocalImage:
    """The file's size, sha256 and declared type; BadImage when it cannot be uploaded."""
    if not value:
        raise BadImage("--image: an empty value (a file, or task:ID[:N])")
    path = Path(value).expanduser()
    try:
        if path.is_dir():
            raise BadImage(f"--image {value}: is a directory")
        if not path.exists():
            hint = " (for a URL use --image-url)" if "://" in value else ""
            raise BadImage(f"--image {value}: no such file{hint}")
        if not path.is_file():
            raise BadImage(f"--image {value}: not a regular file")
        size = path.stat().st_size
        if size == 0:
            raise BadImage(f"--image {value}: the file is empty")
        if size > MAX_UPLOAD_BYTES:
            raise BadImage(
                f"--image {value}: {size} bytes is more than the {MAX_UPLOAD_BYTES} bytes "
                "(50 MiB) the service takes"
            )
        digest = hashlib.sha256()
        with path.open("rb") as file:
            head = file.read(MAGIC_LENGTH)
            digest.update(head)
            read = len(head)
            while chunk := file.read(_HASH_CHUNK):
                digest.update(chunk)
                read += len(chunk)
    except OSError as exc:
        raise BadImage(f"--image {value}: cannot read it ({exc.strerror or exc})") from None
    if read != size:
        raise BadImage(f"--image {value}: the file changed while it was read; try again")
    found = sniff_format(head)
    return LocalImage(
        path=path,
        size=size,
        sha256=digest.hexdigest(),
        content_type=found.content_type if found is not None else UNKNOWN_TYPE,
    )


def resolve_images(values: Sequence[str], url_count: int) -> tuple[Reference, ...]:
    """Every `--image` value in the order given, checked; BadImage names the first bad one."""
    total = url_count + len(values)
    if total > MAX_REFERENCES:
        raise BadImage(
            f"{total} reference images ({url_count} --image-url, {len(values)} --image): "
            f"at most {MAX_REFERENCES} in all"
        )
    return tuple(
        parse_task(value) if value.startswith(TASK_PREFIX) else inspect_file(value)
        for value in values
    )
