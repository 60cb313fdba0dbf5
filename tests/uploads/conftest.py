"""A gateway on each database and store, and what upload tests read back: rows, objects."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from app.core.config import Settings
from app.storage.store import ObjectStore
from app.tasks.models import Task
from app.tasks.references import ReferenceSource, TaskReference
from app.uploads.models import Upload
from tests.conftest import auth, settings_values
from tests.support.gateway import Gateway, running_gateway
from tests.support.rows import make_task
from tests.support.s3 import BUCKET, S3Server

UPLOADS = "/v1/uploads"


@dataclass
class UploadGateway:
    """A running gateway and its store, with helpers to read what uploads left behind."""

    gateway: Gateway

    @property
    def client(self) -> httpx.AsyncClient:
        return self.gateway.client

    @property
    def store(self) -> ObjectStore:
        store: ObjectStore = self.gateway.app.state.store
        return store

    async def keys(self) -> list[str]:
        """Every key of the store (nothing else writes to it in these tests)."""
        return await self.store.list_keys()

    async def rows(self) -> list[Upload]:
        async with self.gateway.sessions() as session:
            return list((await session.scalars(select(Upload).order_by(Upload.created_at))).all())

    async def row_count(self) -> int:
        async with self.gateway.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(Upload)) or 0)

    async def upload(
        self, body: bytes, *, key: str = "alpha-key-0123456789abcdef", **headers: str
    ) -> httpx.Response:
        """POST the raw body as caller `key`."""
        sent = auth(key) | {"Content-Type": "application/octet-stream"} | headers
        return await self.client.post(UPLOADS, content=body, headers=sent)

    async def set_expiry(self, upload_id: str, expires_at: datetime) -> None:
        async with self.gateway.sessions() as session:
            await session.execute(
                update(Upload).where(Upload.id == upload_id).values(expires_at=expires_at)
            )
            await session.commit()

    async def task_using(self, upload_id: str, *, status: str = "queued") -> Task:
        """A task of alpha with a reference to the upload (as the create side writes it)."""
        task = await make_task(self.gateway.sessions)
        async with self.gateway.sessions() as session:
            upload = await session.get(Upload, upload_id)
            assert upload is not None
            session.add(reference_row(task.id, upload))
            await session.execute(update(Task).where(Task.id == task.id).values(status=status))
            await session.commit()
        return task


def reference_row(task_id: str, upload: Upload, position: int = 0) -> TaskReference:
    """The task_references row a create writes for an upload."""
    return TaskReference(
        task_id=task_id,
        position=position,
        source=ReferenceSource.UPLOAD.value,
        upload_id=upload.id,
        key=upload.key,
        content_type=upload.content_type,
        bytes=upload.bytes,
        sha256=upload.sha256,
    )


@pytest.fixture(params=["memory", "file", "s3"])
def storage_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The memory store, the file store and S3 (the moto server)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "file":
        return f"file://{tmp_path}/store"
    s3: S3Server = request.getfixturevalue("s3_server")
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{BUCKET}/{s3.new_prefix()}"


@contextlib.asynccontextmanager
async def upload_gateway(
    database_url: str, storage_url: str = "memory://", **overrides: Any
) -> AsyncIterator[UploadGateway]:
    """The gateway (no workers) on `database_url` and `storage_url`."""
    values = settings_values(database_url, storage_url=storage_url) | overrides
    async with running_gateway(Settings(**values)) as gateway:
        yield UploadGateway(gateway)


@pytest.fixture
async def uploads(database_url: str) -> AsyncIterator[UploadGateway]:
    """The gateway on SQLite and PostgreSQL with the memory store."""
    async with upload_gateway(database_url) as found:
        yield found
