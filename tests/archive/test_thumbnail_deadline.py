"""A decode that passes its deadline is stopped: its process is killed (freeing the CPU and the
thumbnail slot), the console shows a placeholder and records why (never trying again), and the
next thumbnail is made by a fresh decoder process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.archive import repository as images
from app.archive.archiving import image_key
from app.archive.models import TaskImage
from app.archive.thumbnails import (
    DecoderUnavailable,
    Thumbnailer,
    ThumbnailResult,
    thumbnail_key,
)
from app.core.clock import utcnow
from app.storage.store import ObjectStore
from tests.archive.hanging_decoder import MARK
from tests.archive.test_thumbnails import encoded, opened, picture
from tests.console.helpers import running_console, signed_in
from tests.support.gateway import Gateway
from tests.support.rows import make_task

HANGING = (sys.executable, str(Path(__file__).with_name("hanging_decoder.py")))
DEADLINE = timedelta(seconds=2)  # a good decode takes milliseconds; the hostile one never ends
GOOD = encoded(picture((300, 200)), "PNG")
HOSTILE = GOOD + MARK  # a valid PNG (trailing bytes are ignored) that the decoder spins on


@pytest.fixture
def decoder_pids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file where each hanging decoder process notes its pid."""
    path = tmp_path / "decoder-pids"
    path.touch()
    monkeypatch.setenv("HANGING_DECODER_PIDS", str(path))
    return path


def pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def running(pid: int) -> bool:
    """Whether the process exists (a killed child is reaped before its slot is freed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def read(store: ObjectStore, key: str) -> bytes:
    found = await store.open(key)
    assert found is not None
    return b"".join([chunk async for chunk in found[1]])


async def put(store: ObjectStore, key: str, body: bytes) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield body

    await store.put_stream(key, chunks(), content_type="image/png")


async def made_of(thumbnailer: Thumbnailer, key: str, body: bytes) -> ThumbnailResult | None:
    """Store `body` at `key`, then make its thumbnail."""
    await put(thumbnailer._store, key, body)
    return await thumbnailer.thumbnail_of(key, "image/png", (300, 200))


async def test_a_decode_past_its_deadline_is_killed_and_frees_the_slot(decoder_pids: Path) -> None:
    store = ObjectStore.from_url("memory://")
    await put(store, "tasks/a/images/0", HOSTILE)
    await put(store, "tasks/b/images/0", GOOD)
    await put(store, "tasks/c/images/0", GOOD)
    thumbnailer = Thumbnailer(store, deadline=DEADLINE, command=HANGING)
    try:
        hostile = asyncio.create_task(
            thumbnailer.thumbnail_of("tasks/a/images/0", "image/png", (300, 200))
        )
        # The slot goes to whichever read of its body from the store ends first: the hostile
        # image takes it before the next one asks.
        while not thumbnailer._idle.empty() and not hostile.done():
            await asyncio.sleep(0.001)
        queued = asyncio.create_task(  # waits for the one slot
            thumbnailer.thumbnail_of("tasks/b/images/0", "image/png", (300, 200))
        )

        failed = await hostile
        hung = pids(decoder_pids)[0]
        hung_alive, queued_done = running(hung), queued.done()
        made = await queued
        after = await thumbnailer.thumbnail_of("tasks/c/images/0", "image/png", (1, 1))
    finally:
        await thumbnailer.aclose()

    assert failed == ThumbnailResult(
        key=None, error="decoding took longer than 2 s; the decoder was stopped"
    )
    assert not hung_alive  # killed and reaped: no CPU spent on it any more
    assert not queued_done  # it had waited for the slot, which the deadline freed
    assert made == ThumbnailResult(key=thumbnail_key("tasks/b/images/0"), error=None)
    assert opened(await read(store, "tasks/b/images/0.thumb.webp")).size == (256, 171)
    assert after is not None
    assert after.key == thumbnail_key("tasks/c/images/0")
    assert len(pids(decoder_pids)) == 2  # a fresh process after the kill, then reused
    assert [key for key in await store.list_keys() if key.endswith(".webp")] == [
        "tasks/b/images/0.thumb.webp",
        "tasks/c/images/0.thumb.webp",
    ]


async def test_a_decode_nobody_stops_ends_at_its_own_cpu_limit(
    decoder_pids: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service's deadline is out of reach here, as if the service had crashed mid-decode.
    monkeypatch.setenv("HANGING_DECODER_CPU_SECONDS", "1")
    store = ObjectStore.from_url("memory://")
    thumbnailer = Thumbnailer(store, deadline=timedelta(minutes=1), command=HANGING)
    try:
        failed = await made_of(thumbnailer, "t/a", HOSTILE)
        made = await made_of(thumbnailer, "t/b", GOOD)
    finally:
        await thumbnailer.aclose()

    assert failed is not None
    assert made is not None
    assert failed.key is None
    # Killed by SIGXCPU (-24), or 255 when asyncio's child watcher lost the status to another
    # waitpid() in the test process; either way the process is gone and the next one works.
    assert (failed.error or "").startswith("the decoder process died (exit status ")
    assert made.key == thumbnail_key("t/b")
    assert len(pids(decoder_pids)) == 2


async def test_a_decoder_that_cannot_start_is_the_hosts_state_not_the_images(
    tmp_path: Path,
) -> None:
    # Not a result with an error (callers record those against the image for good): an
    # exception, so that a later request tries again.
    store = ObjectStore.from_url("memory://")
    missing = Thumbnailer(store, command=[str(tmp_path / "no-such-python")])
    silent = Thumbnailer(store, command=[sys.executable, "-c", "pass"])
    errors = []
    try:
        for thumbnailer in (missing, silent):
            with pytest.raises(DecoderUnavailable) as raised:
                await made_of(thumbnailer, "t/a", GOOD)
            errors.append(str(raised.value))
    finally:
        await missing.aclose()
        await silent.aclose()

    assert errors[0].startswith("cannot start the decoder process: ")
    # Exit status 0, or 255 when asyncio's child watcher lost it (see the CPU limit's test).
    assert errors[1].startswith("the decoder process did not start (exit status ")


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_console(database_url) as gateway:
        await signed_in(gateway.client)
        yield gateway


async def test_an_image_whose_decode_hangs_gets_a_placeholder_and_is_not_tried_again(
    gateway: Gateway, decoder_pids: Path
) -> None:
    store: ObjectStore = gateway.app.state.store
    thumbnailer = Thumbnailer(store, deadline=DEADLINE, command=HANGING)
    await gateway.app.state.thumbnails.aclose()
    gateway.app.state.thumbnails = thumbnailer  # the route's
    tasks = {name: await make_task(gateway.sessions) for name in ("hostile", "good")}
    await archived(gateway, tasks["hostile"].id, HOSTILE)
    await archived(gateway, tasks["good"].id, GOOD)

    try:
        pages = {
            name: await gateway.client.get(f"/console/tasks/{task.id}/images/0/thumbnail")
            for name, task in tasks.items()
        }
        again = await gateway.client.get(f"/console/tasks/{tasks['hostile'].id}/images/0/thumbnail")
    finally:
        await thumbnailer.aclose()
    async with gateway.sessions() as session:
        rows = {
            name: await session.scalar(select(TaskImage).where(TaskImage.task_id == task.id))
            for name, task in tasks.items()
        }

    hostile, good = rows["hostile"], rows["good"]
    assert hostile is not None
    assert good is not None
    assert hostile.thumbnail_key is None
    assert "decoding took longer than 2 s" in (hostile.thumbnail_error or "")
    assert (good.thumbnail_key, good.thumbnail_error) == (
        thumbnail_key(image_key(tasks["good"].id, 0)),
        None,
    )
    assert pages["hostile"].status_code == pages["good"].status_code == again.status_code == 200
    assert pages["hostile"].headers["content-type"].startswith("image/svg+xml")  # placeholder
    assert again.headers["content-type"].startswith("image/svg+xml")
    assert pages["good"].headers["content-type"] == "image/webp"
    assert opened(pages["good"].content).size == (256, 171)
    # One process hung and was killed; the good image's fresh one; none for the second request.
    assert len(pids(decoder_pids)) == 2
    assert not running(pids(decoder_pids)[0])


async def archived(gateway: Gateway, task_id: str, body: bytes) -> None:
    """An archived PNG image 0 of the task: its object and its row, with no thumbnail yet."""
    key = image_key(task_id, 0)
    await put(gateway.app.state.store, key, body)
    async with gateway.sessions() as session:
        await images.record_once(
            session,
            {
                "task_id": task_id,
                "index": 0,
                "key": key,
                "content_type": "image/png",
                "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "width": 300,
                "height": 200,
                "source_url": "https://cdn.example.com/r.png",
                "created_at": utcnow(),
            },
        )
        await session.commit()
