"""The task page's reference images: each source with its fields, thumbnails (a source task's own,
an upload's made on first request and kept), placeholders for what is gone, escaping, access."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from markupsafe import escape
from PIL import Image
from sqlalchemy import event

from app.archive import repository as archived
from app.archive.thumbnails import thumbnail_key
from app.console.references import GONE, NOT_FETCHED, UNKNOWN
from app.core.clock import utcnow
from app.storage.store import ObjectStore, StoreError
from app.tasks import repository
from app.tasks.models import Task
from app.tasks.references import TaskReference
from tests.conftest import auth
from tests.console.helpers import running_console, signed_in
from tests.support.gateway import Gateway
from tests.support.rows import make_task

UPLOAD_ID = "upl_0123456789abcdefghijklmn"
HOSTILE_URL = "https://cdn.example.com/a.png?q=\"'><script>alert(1)</script>"


def png(width: int = 96, height: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 140, 200)).save(out, "PNG")
    return out.getvalue()


SOURCE_PNG = png()
UPLOAD_PNG = png(120, 80)
SOURCE_THUMBNAIL = b"RIFF\x10\0\0\0WEBPVP8 " + b"\1" * 40


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_console(database_url) as gateway:
        await signed_in(gateway.client)
        yield gateway


def store_of(gateway: Gateway) -> ObjectStore:
    store: ObjectStore = gateway.app.state.store
    return store


async def put(gateway: Gateway, key: str, data: bytes, content_type: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    await store_of(gateway).put_stream(key, chunks(), content_type=content_type)


async def archived_source(gateway: Gateway) -> Task:
    """A task with an archived image 0 and its thumbnail."""
    task = await make_task(gateway.sessions, "the source")
    key = f"tasks/{task.id}/images/0"
    await put(gateway, key, SOURCE_PNG, "image/png")
    await put(gateway, thumbnail_key(key), SOURCE_THUMBNAIL, "image/webp")
    async with gateway.sessions() as session:
        await archived.record_once(
            session,
            {
                "task_id": task.id,
                "index": 0,
                "key": key,
                "content_type": "image/png",
                "bytes": len(SOURCE_PNG),
                "sha256": hashlib.sha256(SOURCE_PNG).hexdigest(),
                "width": 96,
                "height": 64,
                "source_url": "https://cdn.example.com/r.png",
                "thumbnail_key": thumbnail_key(key),
                "created_at": utcnow(),
            },
        )
        await session.commit()
    return task


def upload_row(key: str, content: bytes = UPLOAD_PNG) -> dict[str, Any]:
    return {
        "source": "upload",
        "upload_id": UPLOAD_ID,
        "key": key,
        "content_type": "image/png",
        "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def task_row(source: Task) -> dict[str, Any]:
    return {
        "source": "task",
        "source_task_id": source.id,
        "source_index": 0,
        "key": f"tasks/{source.id}/images/0",
        "content_type": "image/png",
        "bytes": len(SOURCE_PNG),
        "sha256": hashlib.sha256(SOURCE_PNG).hexdigest(),
    }


async def with_references(gateway: Gateway, *rows: dict[str, Any]) -> Task:
    """A task whose reference images are `rows`, in order."""
    task = await make_task(gateway.sessions, "an edit")
    async with gateway.sessions() as session:
        for position, values in enumerate(rows):
            session.add(TaskReference(task_id=task.id, position=position, **values))
        await session.commit()
    return task


def figures(page: str) -> list[str]:
    """The reference figures of a task page, in order."""
    return re.findall(r'<figure class="reference".*?</figure>', page, re.DOTALL)


def field(figure: str, name: str) -> str:
    found = re.search(rf'data-field="{name}">(.*?)</(?:dd|code)>', figure, re.DOTALL)
    assert found is not None, (name, figure)
    return found.group(1)


async def test_the_page_lists_each_reference_in_order_with_its_fields(gateway: Gateway) -> None:
    source = await archived_source(gateway)
    upload_key = f"uploads/alpha/{UPLOAD_ID}"
    await put(gateway, upload_key, UPLOAD_PNG, "image/png")
    task = await with_references(
        gateway,
        {"source": "url", "url": "https://cdn.example.com/ref.png"},
        upload_row(upload_key),
        task_row(source),
    )

    page = await gateway.client.get(f"/console/tasks/{task.id}")

    assert page.status_code == 200
    assert page.text.index("<h2>Reference images</h2>") < page.text.index("<h2>Images</h2>")
    url, upload, chained = figures(page.text)
    assert 'data-position="0" data-source="url"' in url
    assert field(url, "url") == "<code>https://cdn.example.com/ref.png"
    assert NOT_FETCHED in url
    assert "<img" not in url  # a caller's URL is never loaded for display
    assert 'data-position="1" data-source="upload"' in upload
    assert field(upload, "upload_id") == f"<code>{UPLOAD_ID}"
    assert field(upload, "content_type") == "image/png"
    assert field(upload, "bytes") == f"{len(UPLOAD_PNG)} bytes"
    assert field(upload, "sha256") == hashlib.sha256(UPLOAD_PNG).hexdigest()
    assert f'src="/console/tasks/{task.id}/references/1/thumbnail"' in upload
    assert 'data-position="2" data-source="task"' in chained
    assert f'<a class="task-link" href="/console/tasks/{source.id}">' in chained
    assert f"{source.id}</code></a>, image 0" in chained
    assert field(chained, "sha256") == hashlib.sha256(SOURCE_PNG).hexdigest()
    assert f'src="/console/tasks/{source.id}/images/0/thumbnail"' in chained


async def test_the_page_reads_references_in_a_fixed_number_of_queries(gateway: Gateway) -> None:
    source = await archived_source(gateway)
    await put(gateway, "uploads/a/1", UPLOAD_PNG, "image/png")
    rows = [upload_row("uploads/a/1"), task_row(source), {"source": "url", "url": "https://a/b"}]
    one = await with_references(gateway, rows[0])
    many = await with_references(gateway, *rows * 5)

    async def statements_of(task: Task) -> tuple[list[str], str]:
        statements: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        engine = gateway.app.state.runtime.engine.sync_engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            page = await gateway.client.get(f"/console/tasks/{task.id}")
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return statements, page.text

    few, _ = await statements_of(one)
    lots, page = await statements_of(many)

    assert len(figures(page)) == 15
    assert len(lots) == len(few)  # no query per reference

    def reads(statements: list[str]) -> int:
        return len([s for s in statements if "task_references" in s])

    assert reads(lots) == reads(few) >= 1


async def test_an_upload_thumbnail_is_made_on_first_request_and_kept(gateway: Gateway) -> None:
    upload_key = f"uploads/alpha/{UPLOAD_ID}"
    await put(gateway, upload_key, UPLOAD_PNG, "image/png")
    task = await with_references(gateway, upload_row(upload_key))
    path = f"/console/tasks/{task.id}/references/0/thumbnail"

    first = await gateway.client.get(path)
    await store_of(gateway).delete(upload_key)  # from now on only the kept thumbnail can answer
    again = await gateway.client.get(path)
    cached = await gateway.client.get(path, headers={"If-None-Match": first.headers["etag"]})

    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/webp"
    assert first.headers["cache-control"] == "private, max-age=86400"
    assert "default-src 'self'" in first.headers["content-security-policy"]
    with Image.open(io.BytesIO(first.content)) as thumbnail:
        assert (thumbnail.format, thumbnail.size) == ("WEBP", (120, 80))
    assert await store_of(gateway).list_keys("uploads") == [thumbnail_key(upload_key)]
    assert (again.status_code, again.content) == (200, first.content)
    assert cached.status_code == 304


async def test_thumbnails_and_the_page_need_an_operator_session(gateway: Gateway) -> None:
    upload_key = f"uploads/alpha/{UPLOAD_ID}"
    await put(gateway, upload_key, UPLOAD_PNG, "image/png")
    task = await with_references(gateway, upload_row(upload_key))
    paths = [f"/console/tasks/{task.id}", f"/console/tasks/{task.id}/references/0/thumbnail"]
    cookies = dict(gateway.client.cookies)
    gateway.client.cookies.clear()

    anonymous = [await gateway.client.get(path) for path in paths]
    with_a_caller_key = [await gateway.client.get(path, headers=auth()) for path in paths]
    gateway.client.cookies.update(cookies)

    for response in anonymous + with_a_caller_key:
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/login")
    assert await store_of(gateway).list_keys("uploads") == [upload_key]  # no thumbnail made


async def test_objects_gone_from_the_store_show_a_placeholder_text(gateway: Gateway) -> None:
    source = await archived_source(gateway)
    await store_of(gateway).delete(f"tasks/{source.id}/images/0")
    task = await with_references(gateway, upload_row("uploads/alpha/gone"), task_row(source))

    page = await gateway.client.get(f"/console/tasks/{task.id}")
    thumbnail = await gateway.client.get(f"/console/tasks/{task.id}/references/0/thumbnail")

    assert page.status_code == 200
    upload, chained = figures(page.text)
    for figure in (upload, chained):
        assert f">{GONE}</div>" in figure
        assert "<img" not in figure
    assert field(upload, "upload_id") == f"<code>{UPLOAD_ID}"
    assert thumbnail.status_code == 200
    assert thumbnail.headers["content-type"].startswith("image/svg+xml")
    assert thumbnail.headers["cache-control"] == "no-store"


async def test_an_undecodable_upload_gets_the_placeholder_and_no_thumbnail(
    gateway: Gateway,
) -> None:
    broken = b"\x89PNG\r\n\x1a\n" + b"\0" * 64  # a PNG signature, then nothing readable
    await put(gateway, "uploads/alpha/broken", broken, "image/png")
    task = await with_references(gateway, upload_row("uploads/alpha/broken", broken))

    thumbnail = await gateway.client.get(f"/console/tasks/{task.id}/references/0/thumbnail")

    assert thumbnail.status_code == 200
    assert thumbnail.headers["content-type"].startswith("image/svg+xml")
    assert await store_of(gateway).list_keys("uploads") == ["uploads/alpha/broken"]


async def test_a_store_that_fails_is_said_on_the_page(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(gateway, "uploads/alpha/x", UPLOAD_PNG, "image/png")
    task = await with_references(gateway, upload_row("uploads/alpha/x"))

    async def failing(key: str) -> None:
        raise StoreError("head: connection refused")

    monkeypatch.setattr(store_of(gateway), "head", failing)
    page = await gateway.client.get(f"/console/tasks/{task.id}")
    thumbnail = await gateway.client.get(f"/console/tasks/{task.id}/references/0/thumbnail")

    assert page.status_code == 200
    [figure] = figures(page.text)
    assert UNKNOWN in figure
    assert thumbnail.status_code == 503
    assert "the image store is unavailable" in thumbnail.text


async def test_urls_are_shown_as_escaped_text(gateway: Gateway) -> None:
    task = await with_references(gateway, {"source": "url", "url": HOSTILE_URL})

    page = await gateway.client.get(f"/console/tasks/{task.id}")

    [figure] = figures(page.text)
    assert "<script>alert" not in page.text
    assert field(figure, "url") == f"<code>{escape(HOSTILE_URL)}"
    assert "&#34;&#39;&gt;&lt;script&gt;" in figure


async def test_a_task_from_before_references_lists_its_image_urls(gateway: Gateway) -> None:
    task = await make_task(gateway.sessions, "an old edit")
    urls = ["https://cdn.example.com/one.png", HOSTILE_URL]
    async with gateway.sessions() as session:
        await repository.update_fields(session, task.id, {"image_urls": urls})
        await session.commit()

    page = await gateway.client.get(f"/console/tasks/{task.id}")

    first, second = figures(page.text)
    assert 'data-position="0" data-source="url"' in first
    assert field(first, "url") == "<code>https://cdn.example.com/one.png"
    assert field(second, "url") == f"<code>{escape(HOSTILE_URL)}"
    assert "<script>alert" not in page.text


async def test_a_task_without_references_says_so(gateway: Gateway) -> None:
    task = await make_task(gateway.sessions)

    page = await gateway.client.get(f"/console/tasks/{task.id}")

    assert figures(page.text) == []
    assert '<p class="none">No reference image.</p>' in page.text


@pytest.mark.parametrize("position", ["0", "1", "16", "x"])
async def test_only_uploaded_references_have_a_thumbnail_route(
    gateway: Gateway, position: str
) -> None:
    task = await with_references(gateway, {"source": "url", "url": "https://a/b.png"})

    response = await gateway.client.get(f"/console/tasks/{task.id}/references/{position}/thumbnail")

    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]


async def test_an_unknown_task_has_no_reference_thumbnail(gateway: Gateway) -> None:
    response = await gateway.client.get("/console/tasks/not-a-task/references/0/thumbnail")

    assert response.status_code == 404
