"""Fuzzing of the whole caller API with schemathesis, against the service's own OpenAPI document.

Every operation of the document (the caller API, health, metrics) gets generated requests, valid
and invalid (schemathesis' examples, coverage and fuzzing phases), with a valid caller key, on
SQLite and PostgreSQL; no answer may be a 5xx, and every answer must be documented: its status,
content type, headers and body schema. The provider callback route is answered ahead of FastAPI
and is not in the document, so it is not fuzzed here.

Path parameters sometimes name seeded tasks (queued; succeeded with an archived image; failed
and retryable; another caller's) or a seeded upload, so the answers for real ones are checked
too.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.archive.models import TaskImage
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.main import create_app
from app.storage.store import ObjectStore
from app.tasks import service
from app.tasks.schemas import CreateTaskRequest
from app.uploads.models import Upload
from app.uploads.schemas import new_upload_id
from tests.conftest import auth, settings_values

# The document `GET /openapi.json` serves; building it touches no database.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(**settings_values("sqlite+aiosqlite:///:memory:"))).openapi()
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@dataclass(frozen=True)
class Seeded:
    """Task ids of the caller `alpha` in several states, and one of `beta`."""

    task_ids: tuple[str, ...]
    image_etag: str
    upload_id: str  # alpha's upload of PNG


async def _seed(database_url: str, storage_url: str) -> Seeded:
    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    now = utcnow()
    ids: list[str] = []
    try:
        async with sessions() as session:
            for caller, prompt in [("alpha", "q"), ("alpha", "s"), ("alpha", "f"), ("beta", "b")]:
                task, _ = await service.create_task(
                    session,
                    caller=caller,
                    request=CreateTaskRequest(prompt=prompt, metadata={"k": [1, "v"]}),
                    idempotency_key=None,
                    now=now - timedelta(minutes=5),
                )
                ids.append(task.id)
                if prompt == "s":  # succeeded, with its image archived
                    task.status, task.progress = "succeeded", 100
                    task.provider_task_id = f"task-unified-{prompt}"
                    task.completed_at = now
                    key = f"tasks/{task.id}/images/0"
                    session.add(
                        TaskImage(
                            task_id=task.id,
                            index=0,
                            key=key,
                            content_type="image/png",
                            bytes=len(PNG),
                            sha256=hashlib.sha256(PNG).hexdigest(),
                            width=1,
                            height=1,
                            source_url="https://provider.example/s.png",
                            created_at=now,
                        )
                    )
                    await ObjectStore.from_url(storage_url).put_stream(
                        key, _chunks(PNG), content_type="image/png"
                    )
                elif prompt == "f":  # failed for a reason a retry (polling again) repairs
                    task.status = "failed"
                    task.provider_task_id = f"task-unified-{prompt}"
                    task.error_code, task.error_message = "provider_timeout", "no answer"
                    task.completed_at = now
            upload = _seed_upload(now)
            session.add(upload)
            await ObjectStore.from_url(storage_url).put_stream(
                upload.key, _chunks(PNG), content_type="image/png"
            )
            await session.commit()
    finally:
        await engine.dispose()
    return Seeded(tuple(ids), f'"{hashlib.sha256(PNG).hexdigest()}"', upload.id)


def _seed_upload(now: datetime) -> Upload:
    upload_id = new_upload_id()
    return Upload(
        id=upload_id,
        caller="alpha",
        key=f"uploads/{upload_id}.png",
        content_type="image/png",
        bytes=len(PNG),
        sha256=hashlib.sha256(PNG).hexdigest(),
        width=1,
        height=1,
        created_at=now,
        expires_at=now + timedelta(days=1),
    )


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/images"


@pytest.fixture
async def seeded(database_url: str, storage_url: str) -> Seeded:
    return await _seed(database_url, storage_url)


@pytest.fixture
def app(database_url: str, storage_url: str, seeded: Seeded) -> Iterator[FastAPI]:
    """The gateway; schemathesis' ASGI transport enters its lifespan at the first request."""
    app = create_app(Settings(**settings_values(database_url, storage_url=storage_url)))
    try:
        yield app
    finally:
        asgi.shutdown_lifespans()


@schema.parametrize()
@schema.given(pick=st.integers(0, 4), first_image=st.booleans(), conditional=st.booleans())
@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,  # the same examples on every run and machine
    suppress_health_check=list(HealthCheck),  # schemathesis filters heavily; not a finding
)
def test_no_server_error_and_every_answer_documented(
    case: schemathesis.Case[Any],
    pick: int,
    first_image: bool,
    conditional: bool,
    app: FastAPI,
    seeded: Seeded,
) -> None:
    path = case.path_parameters
    if pick and path and "upload_id" in path:
        path["upload_id"] = seeded.upload_id
    if pick and path and "task_id" in path:
        path["task_id"] = seeded.task_ids[pick - 1]
        if first_image and "index" in path:
            path["index"] = 0
            if conditional:
                case.headers["If-None-Match"] = seeded.image_etag
    case.call_and_validate(headers=auth(), checks=CHECKS, app=app)
