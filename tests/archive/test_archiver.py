"""The archive job against hostile and failing links: each outcome ends the task clearly or
retries it, and nothing half-copied is ever recorded."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive.archiving import ArchiveContext, Archiver, image_key
from app.archive.fetch import create_fetch_client
from app.archive.models import TaskImage
from app.archive.thumbnails import (
    MAX_SOURCE_BYTES,
    THUMBNAIL_CONTENT_TYPE,
    Thumbnailer,
    thumbnail_key,
)
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.core.safe_http import FetchPolicy
from app.storage.store import ObjectStore, StoredObject, StoreError
from app.tasks import repository
from app.tasks.events import EventKind, TaskEvent
from app.tasks.models import Task
from app.workers.models import Job, JobKind
from app.workers.outcomes import Done, Outcome, RetryAt
from tests.archive.test_fetch_support import IMAGES, ImageServer, serve
from tests.archive.test_thumbnails import encoded, noise, opened, picture, png_claiming
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
        thumbnails=Thumbnailer(setup.store),
    )
    try:
        return await Archiver(context)(Job(kind=JobKind.ARCHIVE, task_id=task.id, attempts=1))
    finally:
        await context.thumbnails.aclose()
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
    assert image.thumbnail_key == thumbnail_key(image_key(task.id, 0))


async def read(store: ObjectStore, key: str) -> bytes:
    opened = await store.open(key)
    assert opened is not None
    return b"".join([chunk async for chunk in opened[1]])


@pytest.mark.parametrize("pil_format", ["PNG", "JPEG", "WEBP"])
async def test_each_format_gets_a_webp_thumbnail_beside_it(setup: Setup, pil_format: str) -> None:
    setup.server.files["wide"] = encoded(picture((900, 600)), pil_format)
    task = await archiving_task(setup, f"{setup.base}/file/wide")

    outcome = await run(setup, task)

    row, [image], _ = await state(setup, task)
    assert (outcome, row.status) == (Done(), "succeeded")
    key = image_key(task.id, 0)
    assert (image.thumbnail_key, image.thumbnail_error) == (f"{key}.thumb.webp", None)
    assert await setup.store.list_keys() == [key, f"{key}.thumb.webp"]
    thumbnail = opened(await read(setup.store, f"{key}.thumb.webp"))  # WebP magic checked
    assert thumbnail.size == (256, 171)
    assert await read(setup.store, key) == setup.server.files["wide"]


async def test_archiving_again_replaces_the_thumbnail(setup: Setup) -> None:
    setup.server.files["wide"] = encoded(picture((900, 600)), "PNG")
    task = await archiving_task(setup, f"{setup.base}/file/wide")
    await run(setup, task)
    # As after a crash between the copy and its record: the objects exist, the row does not.
    async with setup.sessions() as session:
        await session.execute(delete(TaskImage).where(TaskImage.task_id == task.id))
        await repository.update_fields(session, task.id, {"status": "archiving"})
        await session.commit()
    first = await read(setup.store, thumbnail_key(image_key(task.id, 0)))

    outcome = await run(setup, task)

    row, [image], _ = await state(setup, task)
    key = image_key(task.id, 0)
    assert (outcome, row.status) == (Done(), "succeeded")
    assert image.thumbnail_key == f"{key}.thumb.webp"
    assert await setup.store.list_keys() == [key, f"{key}.thumb.webp"]
    assert await read(setup.store, f"{key}.thumb.webp") == first


async def archived_without_thumbnail(
    setup: Setup, body: bytes, max_bytes: int = 1 << 20
) -> TaskImage:
    """Archive `body`; the task succeeds with its image and no thumbnail."""
    setup.server.files["image"] = body
    task = await archiving_task(setup, f"{setup.base}/file/image")

    outcome = await run(setup, task, max_bytes=max_bytes)

    row, [image], events = await state(setup, task)
    assert (outcome, row.status) == (Done(), "succeeded")
    assert [e.outcome for e in events] == ["stored"]
    assert image.sha256 == hashlib.sha256(body).hexdigest()
    assert image.thumbnail_key is None
    assert await setup.store.list_keys() == [image_key(task.id, 0)]
    assert await read(setup.store, image.key) == body
    return image


async def test_a_decompression_bomb_is_archived_without_a_thumbnail(setup: Setup) -> None:
    bomb = png_claiming(100_000, 100_000, zlib.compress(bytes(10_000)))

    image = await archived_without_thumbnail(setup, bomb)

    assert (image.width, image.height) == (100_000, 100_000)
    assert "100000x100000 pixels is more than" in (image.thumbnail_error or "")


async def test_an_undecodable_body_is_archived_without_a_thumbnail(setup: Setup) -> None:
    image = await archived_without_thumbnail(setup, png_claiming(64, 48, b"not zlib at all"))

    assert "undecodable PNG" in (image.thumbnail_error or "")


async def test_a_body_larger_than_the_kept_size_is_not_decoded(setup: Setup) -> None:
    body = encoded(noise((1400, 1400)), "PNG")  # 5.6 MiB, within the pixel budget
    assert len(body) > MAX_SOURCE_BYTES

    image = await archived_without_thumbnail(setup, body, max_bytes=8 << 20)

    assert "larger than" in (image.thumbnail_error or "")


class ThumbnailsFail(ObjectStore):
    """A memory store that refuses thumbnails."""

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> StoredObject:
        if content_type == THUMBNAIL_CONTENT_TYPE:
            raise StoreError(f"put {key!r} failed: the store is down")
        return await super().put_stream(key, chunks, content_type=content_type)


async def test_a_store_error_on_the_thumbnail_leaves_the_image_archived(setup: Setup) -> None:
    setup.store = ThumbnailsFail.from_url("memory://")

    image = await archived_without_thumbnail(setup, encoded(picture((300, 200)), "PNG"))

    assert "the store is down" in (image.thumbnail_error or "")


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
