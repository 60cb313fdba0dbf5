"""Tasks with reference rows and their objects, made directly (below the create API)."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.storage.store import ObjectStore
from app.tasks import reference_repository, repository, service
from app.tasks.models import Task
from app.tasks.references import ReferenceSource, TaskReference
from app.tasks.schemas import CreateTaskRequest

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def image_bytes(content_type: str = "image/png", *, size: int = 32, shade: int = 0) -> bytes:
    """A small real image of the given type."""
    buffer = io.BytesIO()
    color = ((shade * 37) % 256, (shade * 91) % 256, 128)
    Image.new("RGB", (size, size), color).save(buffer, FORMATS[content_type])
    return buffer.getvalue()


@dataclass(frozen=True)
class StoredReference:
    """A reference of source upload (or task) whose object is `data` under `key`."""

    data: bytes
    content_type: str = "image/png"
    source: str = ReferenceSource.UPLOAD.value
    key: str | None = None  # a fresh key when None
    stored: bool = True  # False: the row names an object that is not in the store

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class UrlReference:
    """A reference of source url."""

    url: str


Reference = StoredReference | UrlReference


@dataclass
class Made:
    """The task, and per position: the object's key (None for url references)."""

    task: Task
    keys: list[str | None]


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def put_object(store: ObjectStore, key: str, data: bytes, content_type: str) -> None:
    await store.put_stream(key, _chunks(data), content_type=content_type)


async def make_task_with_references(
    sessions: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    references: Sequence[Reference],
    *,
    image_urls: Sequence[str] = (),
    caller: str = "alpha",
    prompt: str = "blend these",
    **task_fields: Any,
) -> Made:
    """A queued task with its submit job and its reference rows, in one transaction (a running
    worker sees all or nothing); `image_urls` become the first url rows, then `references`.
    The objects are put in the store first."""
    rows: list[dict[str, Any]] = []
    keys: list[str | None] = []
    for url in image_urls:
        rows.append({"source": ReferenceSource.URL.value, "url": url})
        keys.append(None)
    for reference in references:
        if isinstance(reference, UrlReference):
            rows.append({"source": ReferenceSource.URL.value, "url": reference.url})
            keys.append(None)
            continue
        key = reference.key or f"uploads/{caller}/upl_{uuid.uuid4().hex}"
        if reference.stored:
            await put_object(store, key, reference.data, reference.content_type)
        rows.append(
            {
                "source": reference.source,
                "upload_id": key.rsplit("/", 1)[-1]
                if reference.source == ReferenceSource.UPLOAD.value
                else None,
                # A task source names a (made-up) source task and its image index.
                "source_task_id": str(uuid.uuid4())
                if reference.source == ReferenceSource.TASK.value
                else None,
                "source_index": 0 if reference.source == ReferenceSource.TASK.value else None,
                "key": key,
                "content_type": reference.content_type,
                "bytes": len(reference.data),
                "sha256": reference.sha256,
            }
        )
        keys.append(key)
    async with sessions() as session:
        task, _ = await service.create_task(
            session,
            caller=caller,
            request=CreateTaskRequest(prompt=prompt, image_urls=list(image_urls)),
            idempotency_key=None,
            now=utcnow(),
        )
        # create_task wrote the `image_urls` rows; the references follow them.
        for position, row in enumerate(rows[len(image_urls) :], start=len(image_urls)):
            session.add(TaskReference(task_id=task.id, position=position, **row))
        if task_fields:
            await repository.update_fields(session, task.id, task_fields)
        await session.commit()
        fresh = await repository.get(session, task.id)
        assert fresh is not None
    return Made(task=fresh, keys=keys)


async def references_of(
    sessions: async_sessionmaker[AsyncSession], task_id: str
) -> list[TaskReference]:
    """The task's reference rows in position order, freshly read."""
    async with sessions() as session:
        return list(await reference_repository.in_order(session, task_id))
