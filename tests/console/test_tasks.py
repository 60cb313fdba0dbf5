"""The task pages: list with filters, search and pages; one task's request, timeline, images and
retry; image and thumbnail routes behind the operator session."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from app.archive import repository as archived
from app.archive.presenting import present_tasks, presentation
from app.console import tasks as console_tasks
from app.core.clock import utcnow
from app.tasks import event_repository, repository
from app.tasks.events import EventKind
from app.tasks.models import Task
from tests.console.helpers import csrf_of, running_console, signed_in
from tests.support.callbacks import accepted_task, body, callback_path
from tests.support.gateway import Gateway
from tests.support.rows import make_task

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 200
WEBP = b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 40


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_console(database_url) as gateway:
        await signed_in(gateway.client)
        yield gateway


async def update(gateway: Gateway, task_id: str, **values: Any) -> None:
    async with gateway.sessions() as session:
        await repository.update_fields(session, task_id, values)
        await session.commit()


async def archive_image(gateway: Gateway, task: Task, *, thumbnail: bool) -> None:
    """An archived image (and its thumbnail) in the store and the table."""

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        yield data

    store = gateway.app.state.store
    key = f"tasks/{task.id}/images/0"
    await store.put_stream(key, chunks(PNG), content_type="image/png")
    if thumbnail:
        await store.put_stream(f"{key}.thumb.webp", chunks(WEBP), content_type="image/webp")
    async with gateway.sessions() as session:
        await archived.record_once(
            session,
            {
                "task_id": task.id,
                "index": 0,
                "key": key,
                "content_type": "image/png",
                "bytes": len(PNG),
                "sha256": hashlib.sha256(PNG).hexdigest(),
                "width": 32,
                "height": 16,
                "source_url": "https://cdn.example.com/r.png",
                "thumbnail_key": f"{key}.thumb.webp" if thumbnail else None,
                "created_at": utcnow(),
            },
        )
        await session.commit()


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-task-id="([^"]+)">', html)


async def test_the_list_shows_every_callers_tasks_newest_first(gateway: Gateway) -> None:
    alpha = await make_task(gateway.sessions, "a red fox", caller="alpha")
    beta = await make_task(gateway.sessions, "a blue heron", caller="beta")

    page = await gateway.client.get("/console/tasks")

    assert page.status_code == 200
    assert row_ids(page.text) == [beta.id, alpha.id]
    assert f'<a class="task-link" href="/console/tasks/{alpha.id}">' in page.text
    assert '<td class="status status-queued">queued' in page.text
    assert 'id="next-page"' not in page.text
    for field in ['select name="status"', 'input name="caller"', 'select name="since"']:
        assert field in page.text
    assert '<input name="q"' in page.text


def datalist(html: str) -> list[str]:
    found = re.search(r'<datalist id="callers">(.*?)</datalist>', html, re.S)
    assert found is not None
    return re.findall(r'<option value="([^"]*)">', found.group(1))


async def test_the_caller_filter_offers_every_caller_once_in_order(gateway: Gateway) -> None:
    empty = await gateway.client.get("/console/tasks")
    for caller in ["gamma", "alpha", "beta", "alpha", "gamma", "alpha-2"]:
        await make_task(gateway.sessions, caller=caller)

    page = await gateway.client.get("/console/tasks?status=failed")

    assert datalist(empty.text) == []
    assert datalist(page.text) == ["alpha", "alpha-2", "beta", "gamma"]


async def test_filters_by_status_caller_and_time(gateway: Gateway) -> None:
    old = await make_task(gateway.sessions, caller="alpha")
    await update(gateway, old.id, created_at=utcnow() - timedelta(hours=3))
    failed = await make_task(gateway.sessions, caller="alpha")
    await update(gateway, failed.id, status="failed", error_code="archive_failed")
    other = await make_task(gateway.sessions, caller="beta")

    async def ids(**params: str) -> list[str]:
        response = await gateway.client.get("/console/tasks", params=params)
        assert response.status_code == 200
        return row_ids(response.text)

    assert await ids(status="failed") == [failed.id]
    assert await ids(caller="beta") == [other.id]
    assert await ids(caller="alpha", since="1h") == [failed.id]
    assert await ids(caller="alpha", since="24h") == [failed.id, old.id]
    assert await ids(status="queued", since="all") == [other.id, old.id]
    assert await ids(caller="nobody") == []


async def test_search_by_task_id_or_provider_task_id(gateway: Gateway) -> None:
    upstream = await accepted_task(gateway.sessions, "task-unified-77-searchme")
    plain = await make_task(gateway.sessions)

    by_id = await gateway.client.get("/console/tasks", params={"q": plain.id})
    by_prefix = await gateway.client.get("/console/tasks", params={"q": plain.id[:8]})
    by_upstream = await gateway.client.get("/console/tasks", params={"q": "task-unified-77"})
    wildcard = await gateway.client.get("/console/tasks", params={"q": "%"})

    assert row_ids(by_id.text) == [plain.id]
    assert plain.id in row_ids(by_prefix.text)
    assert row_ids(by_upstream.text) == [upstream.id]
    assert row_ids(wildcard.text) == []  # LIKE wildcards are matched literally


@pytest.mark.parametrize(
    "params",
    [{"status": "done"}, {"since": "2d"}, {"cursor": "garbage!!"}, {"q": "x\x00y"}],
    ids=["status", "since", "cursor", "nul"],
)
async def test_bad_filters_answer_a_page_that_says_so(
    gateway: Gateway, params: dict[str, str]
) -> None:
    response = await gateway.client.get("/console/tasks", params=params)

    assert response.status_code == 422
    assert next(iter(params)) in response.text
    assert response.headers["content-type"].startswith("text/html")


async def test_pages_follow_the_cursor_and_keep_the_filters(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_tasks, "PAGE_SIZE", 2)
    made = [await make_task(gateway.sessions, f"p{i}", caller="alpha") for i in range(5)]
    await make_task(gateway.sessions, caller="beta")
    seen: list[str] = []

    url: str | None = "/console/tasks?caller=alpha"
    while url is not None:
        page = await gateway.client.get(url)
        assert page.status_code == 200
        seen += row_ids(page.text)
        found = re.search(r'<a id="next-page" href="([^"]+)"', page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
        if url is not None:
            assert "caller=alpha" in url

    assert seen == [task.id for task in reversed(made)]


def refresh_url(html: str) -> str | None:
    found = re.search(r'data-refresh-url="([^"]+)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


async def test_the_first_page_refreshes_its_rows_with_the_same_filters(gateway: Gateway) -> None:
    before = await make_task(gateway.sessions, caller="alpha")
    await make_task(gateway.sessions, caller="beta")
    page = await gateway.client.get("/console/tasks", params={"caller": "alpha", "since": "1h"})
    url = refresh_url(page.text)
    assert url == "/console/tasks/rows?status=&caller=alpha&since=1h&q="

    after = await make_task(gateway.sessions, caller="alpha")  # made once the page is open
    rows = await gateway.client.get(url)

    assert rows.status_code == 200
    assert rows.headers["content-type"].startswith("text/html")
    assert rows.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in rows.headers["content-security-policy"]
    assert row_ids(rows.text) == [after.id, before.id]
    assert "<html" not in rows.text
    assert 'id="filters"' not in rows.text


async def test_the_rows_fragment_applies_every_filter(gateway: Gateway) -> None:
    old = await make_task(gateway.sessions, caller="alpha")
    await update(gateway, old.id, created_at=utcnow() - timedelta(hours=3))
    failed = await make_task(gateway.sessions, caller="alpha")
    await update(gateway, failed.id, status="failed", error_code="archive_failed")
    other = await make_task(gateway.sessions, caller="beta")

    async def ids(**params: str) -> list[str]:
        response = await gateway.client.get("/console/tasks/rows", params=params)
        assert response.status_code == 200
        return row_ids(response.text)

    assert await ids() == [other.id, failed.id, old.id]  # since=24h by default
    assert await ids(status="failed") == [failed.id]
    assert await ids(caller="beta") == [other.id]
    assert await ids(caller="alpha", since="1h") == [failed.id]
    assert await ids(q=other.id[:8]) == [other.id]
    assert await ids(caller="nobody") == []
    assert 'id="no-tasks"' in (await gateway.client.get("/console/tasks/rows?caller=x")).text
    bad = await gateway.client.get("/console/tasks/rows", params={"status": "done"})
    assert bad.status_code == 422
    assert "status" in bad.text


async def test_the_rows_fragment_shows_the_first_page_and_its_next_link(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_tasks, "PAGE_SIZE", 2)
    made = [await make_task(gateway.sessions, f"p{i}", caller="alpha") for i in range(3)]

    rows = await gateway.client.get("/console/tasks/rows", params={"caller": "alpha"})

    assert row_ids(rows.text) == [made[2].id, made[1].id]
    found = re.search(r'<a id="next-page" href="([^"]+)"', rows.text)
    assert found is not None
    assert "caller=alpha" in found.group(1)
    assert "cursor=" in found.group(1)
    assert 'id="first-page"' not in rows.text


async def test_later_pages_do_not_refresh(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_tasks, "PAGE_SIZE", 1)
    for i in range(2):
        await make_task(gateway.sessions, f"p{i}")
    first = await gateway.client.get("/console/tasks")
    found = re.search(r'<a id="next-page" href="([^"]+)"', first.text)
    assert found is not None

    later = await gateway.client.get(found.group(1).replace("&amp;", "&"))

    assert refresh_url(first.text) is not None
    assert later.status_code == 200
    assert refresh_url(later.text) is None
    assert "Later pages do not refresh" in later.text


async def test_archived_images_get_a_thumbnail_in_the_list(gateway: Gateway) -> None:
    task = await make_task(gateway.sessions)
    await archive_image(gateway, task, thumbnail=True)

    page = await gateway.client.get("/console/tasks")

    assert (
        f'<img class="thumb" src="/console/tasks/{task.id}/images/0/thumbnail" loading="lazy"'
        in page.text
    )
    assert f'src="/console/tasks/{task.id}/images/0"' not in page.text  # never the full image


async def test_the_console_and_callers_share_one_presentation(gateway: Gateway) -> None:
    """The console's image rows and the callers' TaskOut come from the same presentation."""
    task = await make_task(gateway.sessions)
    await archive_image(gateway, task, thumbnail=True)

    async with gateway.sessions() as session:
        [console_view] = await presentation(session, [task], notifications=False)
        [full] = await presentation(session, [task])
        [out] = await present_tasks(session, [task])

    assert [image.thumbnail_key for image in console_view.images] == [
        f"tasks/{task.id}/images/0.thumb.webp"
    ]
    with pytest.raises(ValueError, match="without its notifications"):
        console_view.out()
    assert full.out() == out
    assert [image.url for image in out.images] == [f"/v1/tasks/{task.id}/images/0"]


async def test_the_detail_shows_the_request_and_a_timeline_with_a_duplicate_callback(
    gateway: Gateway,
) -> None:
    task = await accepted_task(gateway.sessions, "task-unified-5-dup")
    callback = body("task-unified-5-dup", "processing", 40)
    first = await gateway.client.post(callback_path(task), content=callback)
    again = await gateway.client.post(callback_path(task), content=callback)
    await event_repository.note(
        gateway.sessions,
        task.id,
        kind=EventKind.ARCHIVE,
        outcome="error",
        message="the store answered 503",
        detail={"index": 0},
    )

    page = await gateway.client.get(f"/console/tasks/{task.id}")

    assert (first.json()["status"], again.json()["status"]) == ("accepted", "duplicate")
    assert page.status_code == 200
    html = page.text
    assert 'data-testid="task-status" class="status status-processing">processing<' in html
    request = html[html.index('<dl id="request">') :]
    assert "a lighthouse" in request
    assert "task-unified-5-dup" in request
    kinds = re.findall(r'<li data-kind="([a-z]+)"', html)
    assert kinds[0] == "created"
    assert kinds.count("callback") == 2
    assert {"transition", "archive"} <= set(kinds)
    duplicate = re.search(
        r'<li data-kind="callback" class="callback duplicate">.*?</li>', html, re.S
    )
    assert duplicate is not None
    assert "duplicate" in duplicate.group(0)
    assert "processing" in html[html.index('data-kind="callback"') :]
    assert "the store answered 503" in html
    assert 'id="retry"' not in html  # nothing has failed


async def test_the_detail_shows_each_image_with_its_checksum_and_size(gateway: Gateway) -> None:
    task = await make_task(gateway.sessions)
    await archive_image(gateway, task, thumbnail=False)

    html = (await gateway.client.get(f"/console/tasks/{task.id}")).text

    assert f'<img id="image-0" src="/console/tasks/{task.id}/images/0"' in html
    assert hashlib.sha256(PNG).hexdigest() in re.findall(
        r'data-testid="sha256-0">([0-9a-f]+)<', html
    )
    assert f"{len(PNG)} bytes" in html
    assert "32\u00d716" in html  # width x height


async def test_retry_reruns_a_failed_archive_and_says_so(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, "task-unified-9-retry")
    await update(
        gateway,
        task.id,
        status="failed",
        progress=100,
        error_code="archive_failed",
        error_message="the store answered 503",
        result_urls=["https://cdn.example.com/r.png"],
        provider_completed_at=utcnow(),
        completed_at=utcnow(),
    )
    page = await gateway.client.get(f"/console/tasks/{task.id}")
    assert 'action="/console/tasks/' in page.text
    form = page.text[page.text.index('<form id="retry"') :]

    response = await gateway.client.post(
        f"/console/tasks/{task.id}/retry", data={"csrf": csrf_of(form)}
    )
    after = await gateway.client.get(response.headers["location"])
    again = await gateway.client.get(f"/console/tasks/{task.id}")

    assert response.status_code == 303
    assert response.headers["location"] == f"/console/tasks/{task.id}"
    assert re.search(r'<p role="status"[^>]*>Retried: the archive step runs again.</p>', after.text)
    assert 'role="status"' not in again.text  # shown once
    row = await gateway.task_row(task.id)
    assert (row.status, row.redriven_at is not None) == ("archiving", True)
    assert '<li data-kind="redrive"' in after.text


async def test_retry_of_a_task_with_nothing_to_retry_shows_the_reason(gateway: Gateway) -> None:
    task = await make_task(gateway.sessions)
    page = await gateway.client.get(f"/console/tasks/{task.id}")

    response = await gateway.client.post(
        f"/console/tasks/{task.id}/retry", data={"csrf": csrf_of(page.text)}
    )
    after = await gateway.client.get(response.headers["location"])

    assert 'id="retry"' not in page.text
    assert "nothing has failed" in page.text
    assert response.status_code == 303
    assert "Nothing to retry (409): the task is still queued: nothing has failed" in after.text
    assert (await gateway.task_row(task.id)).status == "queued"


@pytest.mark.parametrize("task_id", ["00000000-0000-4000-8000-000000000000", "not-a-task"])
async def test_an_unknown_task_is_a_404_page(gateway: Gateway, task_id: str) -> None:
    page = await gateway.client.get(f"/console/tasks/{task_id}")
    image = await gateway.client.get(f"/console/tasks/{task_id}/images/0")

    assert page.status_code == image.status_code == 404
    assert "no such task" in page.text


async def test_images_and_thumbnails_need_an_operator_session(gateway: Gateway) -> None:
    with_thumb = await make_task(gateway.sessions)
    without = await make_task(gateway.sessions)
    await archive_image(gateway, with_thumb, thumbnail=True)
    await archive_image(gateway, without, thumbnail=False)
    base = f"/console/tasks/{with_thumb.id}/images/0"

    full = await gateway.client.get(base)
    thumb = await gateway.client.get(f"{base}/thumbnail")
    placeholder = await gateway.client.get(f"/console/tasks/{without.id}/images/0/thumbnail")
    cached = await gateway.client.get(base, headers={"If-None-Match": full.headers["etag"]})
    missing = await gateway.client.get(f"/console/tasks/{with_thumb.id}/images/1")
    cookies = dict(gateway.client.cookies)
    gateway.client.cookies.clear()
    anonymous = [await gateway.client.get(path) for path in [base, f"{base}/thumbnail"]]
    gateway.client.cookies.update(cookies)

    assert (full.status_code, full.content, full.headers["content-type"]) == (
        200,
        PNG,
        "image/png",
    )
    assert (thumb.status_code, thumb.content, thumb.headers["content-type"]) == (
        200,
        WEBP,
        "image/webp",
    )
    assert placeholder.status_code == 200
    assert placeholder.headers["content-type"].startswith("image/svg+xml")
    assert placeholder.content != PNG
    assert cached.status_code == 304
    assert missing.status_code == 404
    assert [response.status_code for response in anonymous] == [303, 303]
    assert all(r.headers["location"].startswith("/console/login") for r in anonymous)
