"""Sources of reference images made directly in the database and the store: uploads and tasks
with archived images (the uploads API is not needed to test what a create does with them)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from app.archive import repository as archived
from app.core.clock import utcnow
from app.storage.store import ObjectStore
from app.tasks import repository
from app.tasks.references import TaskReference
from app.uploads.models import Upload
from tests.support.gateway import Gateway
from tests.support.rows import make_task

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(range(64))


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@dataclass(frozen=True)
class Source:
    """What a reference to an upload or a task image must carry."""

    content_type: str
    bytes: int
    sha256: str
    key: str


def _store(gateway: Gateway) -> ObjectStore:
    store: ObjectStore = gateway.app.state.store
    return store


async def add_upload(
    gateway: Gateway,
    caller: str = "alpha",
    *,
    expires_in: timedelta = timedelta(hours=1),
    data: bytes = PNG,
    content_type: str = "image/png",
) -> tuple[str, Source]:
    """An upload row of `caller` and its object in the store; (upload id, what it holds)."""
    upload_id = f"upl_{secrets.token_urlsafe(18)}"
    key = f"uploads/{upload_id}"
    await _store(gateway).put_stream(key, _chunks(data), content_type=content_type)
    now = utcnow()
    source = Source(content_type, len(data), hashlib.sha256(data).hexdigest(), key)
    async with gateway.sessions() as session:
        session.add(
            Upload(
                id=upload_id,
                caller=caller,
                key=key,
                content_type=content_type,
                bytes=source.bytes,
                sha256=source.sha256,
                width=1,
                height=1,
                created_at=now,
                expires_at=now + expires_in,
            )
        )
        await session.commit()
    return upload_id, source


async def task_in_status(
    gateway: Gateway, status: str, caller: str = "alpha", **values: Any
) -> str:
    """A task of `caller` moved to `status` directly (no images); its id."""
    task = await make_task(gateway.sessions, f"a task that is {status}", caller=caller)
    async with gateway.sessions() as session:
        terminal = status in ("succeeded", "failed", "cancelled")
        changes = {"status": status, "completed_at": utcnow() if terminal else None} | values
        await repository.update_fields(session, task.id, changes)
        await session.commit()
    return task.id


async def succeeded_task(
    gateway: Gateway, caller: str = "alpha", images: tuple[bytes, ...] = (PNG,)
) -> tuple[str, list[Source]]:
    """A succeeded task of `caller` with its images archived; (task id, what each holds)."""
    task_id = await task_in_status(gateway, "succeeded", caller, progress=100)
    sources = []
    async with gateway.sessions() as session:
        for index, data in enumerate(images):
            content_type = "image/webp" if data.startswith(b"RIFF") else "image/png"
            key = f"tasks/{task_id}/images/{index}"
            await _store(gateway).put_stream(key, _chunks(data), content_type=content_type)
            source = Source(content_type, len(data), hashlib.sha256(data).hexdigest(), key)
            await archived.record_once(
                session,
                {
                    "task_id": task_id,
                    "index": index,
                    "key": key,
                    "content_type": content_type,
                    "bytes": source.bytes,
                    "sha256": source.sha256,
                    "width": 1,
                    "height": 1,
                    "source_url": f"https://cdn.example.com/{index}.png",
                    "created_at": utcnow(),
                },
            )
            sources.append(source)
        await session.commit()
    return task_id, sources


async def reference_rows(gateway: Gateway, task_id: str) -> list[dict[str, Any]]:
    """The task's `task_references` rows, by position, as plain values."""
    async with gateway.sessions() as session:
        rows = await session.scalars(
            select(TaskReference)
            .where(TaskReference.task_id == task_id)
            .order_by(TaskReference.position)
        )
        columns = TaskReference.__table__.columns.keys()
        return [{name: getattr(row, name) for name in columns} for row in rows]
