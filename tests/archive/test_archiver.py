"""The archive job against hostile and failing links: each outcome ends the task clearly or
retries it, and nothing half-copied is ever recorded."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive.archiving import ArchiveContext, Archiver, image_key
from app.archive.fetch import create_fetch_client
from app.archive.models import TaskImage
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.core.safe_http import FetchPolicy
from app.storage.store import ObjectStore
from app.tasks import repository
from app.tasks.events import EventKind, TaskEvent
from app.tasks.models import Task
from app.workers.models import Job, JobKind
from app.workers.outcomes import Done, Outcome, RetryAt
from tests.archive.test_fetch_support import IMAGES, ImageServer, serve
from tests.archive.test_thumbnails import encoded, picture, png_claiming
from tests.conftest import settings_values
from tests.support.rows import make_task


@dataclass
class Setup:
    sessions: async_sessionmaker[AsyncSession]
    store: ObjectStore
    server: ImageServer
    base: str


@pytest.fixture
async def setup(database_url: str) -> AsyncIterator[Setup]:
    engine = create_engine(database_url)
    server = ImageServer()
    async with serve(server) as port:
        yield Setup(
            create_sessionmaker(engine),
            ObjectStore.from_url("memory://"),
            server,
            f"http://127.0.0.1:{port}",
        )
        server.release.set()
    await engine.dispose()


async def archiving_task(setup: Setup, url: str, completed_ago: timedelta = timedelta()) -> Task:
    task = await make_task(setup.sessions)
    completed = utcnow() - completed_ago
    async with setup.sessions() as session:
        await repository.update_fields(
            session,
            task.id,
            {
                "status": "archiving",
                "progress": 100,
                "provider_task_id": "task-unified-1-archive",
                "result_urls": [url] if url else [],
                "provider_completed_at": completed,
                "final_claimed_at": completed,
            },
        )
        await session.commit()
    return task


async def run(
    setup: Setup, task: Task, *, allow_private: bool = True, max_bytes: int = 1 << 20
) -> Outcome:
    policy = FetchPolicy(allow_private=allow_private, max_bytes=max_bytes)
    fetcher = create_fetch_client(policy)
    settings = Settings(**settings_values("sqlite+aiosqlite:///unused.db"))
    context = ArchiveContext(
        sessions=setup.sessions,
        settings=settings,
        store=setup.store,
        fetcher=fetcher,
        policy=policy,
    )
    try:
        return await Archiver(context)(Job(kind=JobKind.ARCHIVE, task_id=task.id, attempts=1))
    finally:
        await fetcher.aclose()


async def state(setup: Setup, task: Task) -> tuple[Task, list[TaskImage], list[TaskEvent]]:
    async with setup.sessions() as session:
        row = await repository.get(session, task.id)
        assert row is not None
        images = await session.scalars(select(TaskImage).where(TaskImage.task_id == task.id))
        events = await session.scalars(
            select(TaskEvent)
            .where(TaskEvent.task_id == task.id, TaskEvent.kind == EventKind.ARCHIVE)
            .order_by(TaskEvent.id)
        )
        return row, list(images.all()), list(events.all())


async def test_a_good_image_is_stored_recorded_and_the_task_succeeds(setup: Setup) -> None:
    task = await archiving_task(setup, f"{setup.base}/img/png")

    outcome = await run(setup, task)

    row, images, events = await state(setup, task)
    assert outcome == Done()
    assert row.status == "succeeded"
    [image] = images
    assert image.sha256 == hashlib.sha256(IMAGES["png"]).hexdigest()
    assert (image.content_type, image.bytes) == ("image/png", len(IMAGES["png"]))
    assert (image.width, image.height) == (120, 80)
    stored = await setup.store.open(image_key(task.id, 0))
    assert stored is not None
    assert b"".join([chunk async for chunk in stored[1]]) == IMAGES["png"]
    assert [e.outcome for e in events] == ["stored"]
    assert (image.thumbnail_key, image.thumbnail_error) == (None, None)


async def read(store: ObjectStore, key: str) -> bytes:
    opened = await store.open(key)
    assert opened is not None
    return b"".join([chunk async for chunk in opened[1]])


@pytest.mark.parametrize(
    "body",
    [
        encoded(picture((900, 600)), "PNG"),
        png_claiming(100_000, 100_000, zlib.compress(bytes(10_000))),  # a decompression bomb
        png_claiming(64, 48, b"not zlib at all"),  # undecodable
    ],
    ids=["picture", "bomb", "undecodable"],
)
async def test_the_archive_makes_no_thumbnail(setup: Setup, body: bytes) -> None:
    """Thumbnails are made on the console's first request (issue 17): the archive decodes
    nothing, stores the image alone and leaves both thumbnail columns NULL."""
    setup.server.files["image"] = body
    task = await archiving_task(setup, f"{setup.base}/file/image")

    outcome = await run(setup, task)

    row, [image], events = await state(setup, task)
    assert (outcome, row.status) == (Done(), "succeeded")
    assert [e.outcome for e in events] == ["stored"]
    assert image.sha256 == hashlib.sha256(body).hexdigest()
    assert (image.thumbnail_key, image.thumbnail_error) == (None, None)
    assert await setup.store.list_keys() == [image_key(task.id, 0)]
    assert await read(setup.store, image.key) == body


@pytest.mark.parametrize("status", [404, 410])
async def test_a_dead_link_fails_the_task_with_links_expired(setup: Setup, status: int) -> None:
    task = await archiving_task(setup, f"{setup.base}/status/{status}")

    outcome = await run(setup, task)

    row, images, _ = await state(setup, task)
    assert outcome == Done()
    assert (row.status, row.error_code) == ("failed", "links_expired")
    assert images == []
    assert await setup.store.list_keys() == []


@pytest.mark.parametrize(
    ("path", "words"),
    [("/body/html", "image"), ("/body/zip", "image"), ("/stream?size=5000000", "large")],
)
async def test_a_hostile_body_fails_the_task_with_archive_failed(
    setup: Setup, path: str, words: str
) -> None:
    task = await archiving_task(setup, f"{setup.base}{path}")

    await run(setup, task, max_bytes=1 << 20)

    row, images, events = await state(setup, task)
    assert (row.status, row.error_code) == ("failed", "archive_failed")
    assert words in (row.error_message or "").lower()
    assert images == []
    assert await setup.store.list_keys() == []
    assert [e.outcome for e in events] == ["error"]


async def test_an_internal_address_is_refused_without_contacting_it(setup: Setup) -> None:
    task = await archiving_task(setup, f"{setup.base}/img/png")

    await run(setup, task, allow_private=False)

    row, images, _ = await state(setup, task)
    assert (row.status, row.error_code) == ("failed", "archive_failed")
    assert setup.server.hits == {}
    assert images == []


async def test_a_transient_failure_is_retried_and_noted(setup: Setup) -> None:
    task = await archiving_task(setup, f"{setup.base}/status/503")

    outcome = await run(setup, task)

    row, images, events = await state(setup, task)
    assert isinstance(outcome, RetryAt)
    assert outcome.when > utcnow()
    assert row.status == "archiving"
    assert images == []
    assert [e.outcome for e in events] == ["error"]
    assert "503" in (events[0].message or "")


async def test_past_the_deadline_a_transient_failure_fails_the_task(setup: Setup) -> None:
    task = await archiving_task(setup, f"{setup.base}/status/503", timedelta(hours=21))

    outcome = await run(setup, task)

    row, _, _ = await state(setup, task)
    assert outcome == Done()
    assert (row.status, row.error_code) == ("failed", "archive_failed")
    assert "before" in (row.error_message or "")


async def test_a_retry_never_waits_past_the_deadline(setup: Setup) -> None:
    task = await archiving_task(
        setup, f"{setup.base}/status/503", timedelta(hours=19, minutes=59, seconds=59)
    )

    outcome = await run(setup, task)

    assert isinstance(outcome, RetryAt)
    assert outcome.when <= utcnow() + timedelta(seconds=2)


async def test_no_result_link_fails_the_task(setup: Setup) -> None:
    task = await archiving_task(setup, "")

    await run(setup, task)

    row, _, _ = await state(setup, task)
    assert (row.status, row.error_code) == ("failed", "archive_failed")


async def test_a_task_that_is_not_archiving_is_left_alone(setup: Setup) -> None:
    task = await make_task(setup.sessions)

    outcome = await run(setup, task)

    row, images, events = await state(setup, task)
    assert outcome == Done()
    assert (row.status, images, events) == ("queued", [], [])
