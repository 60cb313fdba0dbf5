"""Task-image thumbnails made on the console's first request (app/console/thumbnails.py): made,
stored and recorded once; a refusal recorded and never attempted again; a missing object or a
failing store recorded nowhere."""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from app.archive import repository as images
from app.archive.archiving import image_key
from app.archive.models import TaskImage
from app.archive.thumbnails import Decoder, DecoderUnavailable, thumbnail_key
from app.core.clock import utcnow
from app.storage.store import ObjectStore, StoreError
from tests.archive.test_thumbnails import encoded, picture, png_claiming
from tests.console.helpers import running_console, signed_in
from tests.support.gateway import Gateway
from tests.support.rows import make_task

PICTURE = encoded(picture((300, 200)), "PNG")


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_console(database_url) as gateway:
        await signed_in(gateway.client)
        yield gateway


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The content types of the decodes asked of decoder processes, in order."""
    asked: list[str] = []
    original = Decoder.thumbnail

    async def counted(self: Decoder, body: bytes, content_type: str) -> bytes:
        asked.append(content_type)
        return await original(self, body, content_type)

    monkeypatch.setattr(Decoder, "thumbnail", counted)
    return asked


def store_of(gateway: Gateway) -> ObjectStore:
    store: ObjectStore = gateway.app.state.store
    return store


async def archived(gateway: Gateway, body: bytes, size: tuple[int, int] = (300, 200)) -> str:
    """A task with an archived PNG image 0 (as the archive leaves it: no thumbnail); its id."""
    task = await make_task(gateway.sessions)
    key = image_key(task.id, 0)

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    await store_of(gateway).put_stream(key, chunks(), content_type="image/png")
    async with gateway.sessions() as session:
        await images.record_once(
            session,
            {
                "task_id": task.id,
                "index": 0,
                "key": key,
                "content_type": "image/png",
                "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "width": size[0],
                "height": size[1],
                "source_url": "https://cdn.example.com/r.png",
                "created_at": utcnow(),
            },
        )
        await session.commit()
    return task.id


async def row(gateway: Gateway, task_id: str) -> TaskImage:
    async with gateway.sessions() as session:
        found = await images.one(session, task_id, 0)
    assert found is not None
    return found


def path(task_id: str) -> str:
    return f"/console/tasks/{task_id}/images/0/thumbnail"


def is_placeholder(response: object) -> bool:
    headers = getattr(response, "headers", {})
    return bool(headers["content-type"].startswith("image/svg+xml"))


async def test_the_first_request_makes_stores_and_records_it(
    gateway: Gateway, decodes: list[str]
) -> None:
    task_id = await archived(gateway, PICTURE)
    key = image_key(task_id, 0)

    first = await gateway.client.get(path(task_id))
    recorded = await row(gateway, task_id)
    await store_of(gateway).delete(key)  # from now on only the stored thumbnail can answer
    second = await gateway.client.get(path(task_id))
    cached = await gateway.client.get(
        path(task_id), headers={"If-None-Match": first.headers["etag"]}
    )

    assert (first.status_code, first.headers["content-type"]) == (200, "image/webp")
    with Image.open(io.BytesIO(first.content)) as thumbnail:
        assert (thumbnail.format, thumbnail.size) == ("WEBP", (256, 171))
    assert (recorded.thumbnail_key, recorded.thumbnail_error) == (thumbnail_key(key), None)
    assert await store_of(gateway).list_keys(f"tasks/{task_id}") == [thumbnail_key(key)]
    assert (second.status_code, second.content) == (200, first.content)
    assert cached.status_code == 304
    assert decodes == ["image/png"]  # one decode, for the first request only


async def test_an_undecodable_image_gets_the_placeholder_and_is_not_tried_again(
    gateway: Gateway, decodes: list[str]
) -> None:
    task_id = await archived(gateway, png_claiming(64, 48, b"not zlib at all"), (64, 48))

    responses = [await gateway.client.get(path(task_id)) for _ in range(2)]
    recorded = await row(gateway, task_id)

    assert [response.status_code for response in responses] == [200, 200]
    assert all(is_placeholder(response) for response in responses)
    assert recorded.thumbnail_key is None
    assert "undecodable PNG" in (recorded.thumbnail_error or "")
    assert decodes == ["image/png"]  # the second request decoded nothing
    assert await store_of(gateway).list_keys(f"tasks/{task_id}") == [image_key(task_id, 0)]


async def test_an_image_past_the_pixel_budget_is_refused_without_a_decode(
    gateway: Gateway, decodes: list[str]
) -> None:
    bomb = png_claiming(100_000, 100_000, zlib.compress(bytes(10_000)))
    task_id = await archived(gateway, bomb, (100_000, 100_000))

    response = await gateway.client.get(path(task_id))
    recorded = await row(gateway, task_id)

    assert is_placeholder(response)
    assert "100000x100000 pixels is more than" in (recorded.thumbnail_error or "")
    assert decodes == []


async def test_a_missing_image_gets_the_placeholder_and_nothing_recorded(
    gateway: Gateway, decodes: list[str]
) -> None:
    task_id = await archived(gateway, PICTURE)
    await store_of(gateway).delete(image_key(task_id, 0))

    response = await gateway.client.get(path(task_id))
    recorded = await row(gateway, task_id)

    assert (response.status_code, is_placeholder(response)) == (200, True)
    assert (recorded.thumbnail_key, recorded.thumbnail_error) == (None, None)
    assert decodes == []


async def test_a_failing_store_gives_a_503_and_nothing_recorded(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = await archived(gateway, PICTURE)

    async def failing(key: str) -> None:
        raise StoreError("open: connection refused")

    monkeypatch.setattr(store_of(gateway), "open", failing)
    response = await gateway.client.get(path(task_id))
    recorded = await row(gateway, task_id)
    monkeypatch.undo()
    later = await gateway.client.get(path(task_id))

    assert response.status_code == 503
    assert "the image store is unavailable" in response.text
    assert (recorded.thumbnail_key, recorded.thumbnail_error) == (None, None)
    assert (later.status_code, later.headers["content-type"]) == (200, "image/webp")


async def test_no_decoder_process_gives_a_503_and_nothing_recorded(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host's state (no process to be had), not the image's: a later request tries again.
    task_id = await archived(gateway, PICTURE)

    async def unavailable(self: Decoder, body: bytes, content_type: str) -> bytes:
        raise DecoderUnavailable("cannot start the decoder process: [Errno 12] out of memory")

    monkeypatch.setattr(Decoder, "thumbnail", unavailable)
    response = await gateway.client.get(path(task_id))
    recorded = await row(gateway, task_id)
    monkeypatch.undo()
    later = await gateway.client.get(path(task_id))

    assert response.status_code == 503
    assert "no thumbnail can be made now" in response.text
    assert (recorded.thumbnail_key, recorded.thumbnail_error) == (None, None)
    assert (later.status_code, later.headers["content-type"]) == (200, "image/webp")


async def test_a_row_with_a_thumbnail_is_served_as_recorded(
    gateway: Gateway, decodes: list[str]
) -> None:
    """Rows the archive gave a thumbnail (before issue 17) keep theirs."""
    task_id = await archived(gateway, PICTURE)
    webp = b"RIFF\x10\0\0\0WEBPVP8 " + b"\1" * 40

    async def chunks() -> AsyncIterator[bytes]:
        yield webp

    key = thumbnail_key(image_key(task_id, 0))
    await store_of(gateway).put_stream(key, chunks(), content_type="image/webp")
    async with gateway.sessions() as session:
        assert await images.record_thumbnail(session, task_id, 0, key, None)
        assert not await images.record_thumbnail(session, task_id, 0, None, "late")  # first wins
        await session.commit()

    response = await gateway.client.get(path(task_id))

    assert (response.status_code, response.content) == (200, webp)
    assert decodes == []
