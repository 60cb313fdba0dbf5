"""The upload sweep: expired unused uploads go (row, then object), used ones stay, objects a
task's reference names stay, orphans go; several sweepers at once and objects already gone
are harmless; the sweep loop runs in a process with workers."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete

from app.core import metrics
from app.core.clock import utcnow
from app.uploads.models import Upload
from app.uploads.sweeping import GRACE, ORPHAN_AGE, UploadSweeper, sweep_expired, sweep_orphans
from tests.conftest import auth
from tests.support.waiting import eventually
from tests.uploads.conftest import UploadGateway, upload_gateway
from tests.uploads.images import jpeg, png, webp


async def stored(uploads: UploadGateway, data: bytes, *, expired_for: timedelta | None) -> str:
    """An upload's id; expired `expired_for` ago when given."""
    answer = await uploads.upload(data)
    assert answer.status_code == 201, answer.text
    upload_id: str = answer.json()["id"]
    if expired_for is not None:
        await uploads.set_expiry(upload_id, utcnow() - expired_for)
    return upload_id


async def sweep(uploads: UploadGateway) -> tuple[int, int]:
    """(rows, objects) one sweep of expired uploads deleted."""
    result = await sweep_expired(uploads.gateway.sessions, uploads.store, utcnow())
    return result.rows, result.objects


LONG_AGO = GRACE + timedelta(minutes=1)


async def test_expired_unused_uploads_are_deleted_after_the_grace(uploads: UploadGateway) -> None:
    old = await stored(uploads, png(), expired_for=LONG_AGO)
    recent = await stored(uploads, jpeg(), expired_for=GRACE - timedelta(minutes=1))
    live = await stored(uploads, webp(), expired_for=None)

    first = await sweep(uploads)
    second = await sweep(uploads)

    assert (first, second) == ((1, 1), (0, 0))
    assert sorted(row.id for row in await uploads.rows()) == sorted([recent, live])
    assert not any(key.startswith(f"uploads/{old}") for key in await uploads.keys())
    assert len(await uploads.keys()) == 2


async def test_an_upload_an_unfinished_task_uses_is_kept(uploads: UploadGateway) -> None:
    used = await stored(uploads, png(), expired_for=LONG_AGO)
    await uploads.task_using(used, status="archiving")
    await uploads.task_using(used, status="failed")

    assert await sweep(uploads) == (0, 0)
    assert [row.id for row in await uploads.rows()] == [used]
    assert await uploads.keys() == [f"uploads/{used}.png"]


async def test_an_upload_only_finished_tasks_used_loses_its_row_but_keeps_its_object(
    uploads: UploadGateway,
) -> None:
    used = await stored(uploads, png(), expired_for=LONG_AGO)
    await uploads.task_using(used, status="succeeded")

    assert await sweep(uploads) == (1, 0)
    assert await uploads.rows() == []
    assert await uploads.keys() == [f"uploads/{used}.png"]


async def test_sweepers_running_at_once_delete_each_upload_once(uploads: UploadGateway) -> None:
    for index in range(12):
        await stored(uploads, png((10 + index, 10)), expired_for=LONG_AGO)
    keep = await stored(uploads, jpeg(), expired_for=None)
    sessions, store = uploads.gateway.sessions, uploads.store

    results = await asyncio.gather(
        *(sweep_expired(sessions, store, utcnow(), batch=5) for _ in range(4))
    )

    assert sum(result.rows for result in results) == 12
    assert [row.id for row in await uploads.rows()] == [keep]
    assert await uploads.keys() == [f"uploads/{keep}.jpg"]


async def test_an_object_already_gone_is_not_an_error(uploads: UploadGateway) -> None:
    upload_id = await stored(uploads, png(), expired_for=LONG_AGO)
    await uploads.store.delete(f"uploads/{upload_id}.png")

    assert await sweep(uploads) == (1, 1)
    assert await uploads.rows() == []


async def test_orphan_objects_are_deleted_once_old_enough(uploads: UploadGateway) -> None:
    with_row = await stored(uploads, png(), expired_for=None)
    referenced = await stored(uploads, jpeg(), expired_for=None)
    await uploads.task_using(referenced, status="succeeded")
    await uploads.client.delete(f"/v1/uploads/{referenced}", headers=auth())  # object kept
    orphan = await stored(uploads, webp(), expired_for=None)
    async with uploads.gateway.sessions() as session:  # as if killed before the row insert
        await session.execute(delete(Upload).where(Upload.id == orphan))
        await session.commit()
    sessions, store = uploads.gateway.sessions, uploads.store

    young = await sweep_orphans(sessions, store, utcnow())
    old = await sweep_orphans(sessions, store, utcnow() + ORPHAN_AGE + timedelta(minutes=1))

    assert (young.orphans, old.orphans) == (0, 1)
    assert sorted(await uploads.keys()) == sorted(
        [f"uploads/{with_row}.png", f"uploads/{referenced}.jpg"]
    )


async def test_a_sweep_that_deleted_something_logs_one_line_and_counts(
    uploads: UploadGateway, caplog: pytest.LogCaptureFixture
) -> None:
    await stored(uploads, png(), expired_for=LONG_AGO)
    sweeper = UploadSweeper(uploads.gateway.sessions, uploads.store)
    rows_before = metrics.UPLOADS_SWEPT.labels("rows")._value.get()

    with caplog.at_level(logging.INFO, logger="app.uploads.sweeping"):
        await sweeper.sweep(with_orphans=True)
        await sweeper.sweep(with_orphans=True)  # nothing left: no line

    lines = [record for record in caplog.records if record.name == "app.uploads.sweeping"]
    assert [(r.getMessage(), r.rows_deleted, r.objects_deleted) for r in lines] == [  # type: ignore[attr-defined]
        ("upload sweep", 1, 1)
    ]
    assert metrics.UPLOADS_SWEPT.labels("rows")._value.get() == rows_before + 1


async def test_a_process_with_workers_sweeps(sqlite_database_url: str, tmp_path: Path) -> None:
    storage_url = f"file://{tmp_path}/store"
    async with upload_gateway(sqlite_database_url, storage_url) as uploads:
        expired = await stored(uploads, png(), expired_for=LONG_AGO)

    async with upload_gateway(sqlite_database_url, storage_url, run_workers=True) as uploads:
        await eventually(uploads.row_count, lambda count: count == 0, what="the sweep's delete")
        keys = await uploads.keys()

    assert f"uploads/{expired}.png" not in keys
