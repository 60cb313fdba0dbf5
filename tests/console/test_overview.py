"""The overview: tasks by status, archive backlog, upstream errors, callbacks, recoveries."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.console import overview as console_overview
from app.console import repository as console_queries
from app.core.clock import utcnow
from app.tasks import event_repository, repository
from app.tasks.events import EventKind
from app.workers import repository as jobs
from app.workers.models import JobKind
from tests.console.helpers import running_console, signed_in
from tests.support.callbacks import accepted_task, body, callback_path
from tests.support.gateway import Gateway
from tests.support.queries import ENDLESS
from tests.support.rows import make_task


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_console(database_url) as gateway:
        await signed_in(gateway.client)
        yield gateway


def section(html: str, testid: str) -> str:
    found = re.search(rf'<section data-testid="{testid}">(.*?)</section>', html, re.S)
    assert found is not None, testid
    return found.group(1)


def count(html: str, pattern: str) -> int:
    found = re.search(pattern, html, re.S)
    assert found is not None, pattern
    return int(found.group(1))


async def test_the_overview_counts_what_happened(gateway: Gateway) -> None:
    now = utcnow()
    await make_task(gateway.sessions)
    old = await make_task(gateway.sessions)
    async with gateway.sessions() as session:
        await repository.update_fields(session, old.id, {"created_at": now - timedelta(hours=5)})
        await session.commit()
    failed = await make_task(gateway.sessions)
    async with gateway.sessions() as session:
        await repository.update_fields(
            session,
            failed.id,
            {"status": "failed", "error_code": "content_policy", "completed_at": now},
        )
        # An archive job due a minute ago that no worker took (workers are off in tests).
        await jobs.enqueue(session, JobKind.ARCHIVE, failed.id, now - timedelta(minutes=1))
        await session.commit()
    await event_repository.note(gateway.sessions, failed.id, kind=EventKind.SUBMIT, outcome="retry")
    # One callback delivered twice, one malformed.
    called = await accepted_task(gateway.sessions, "task-unified-3-cb")
    progress = body("task-unified-3-cb", "processing", 10)
    for content in [progress, progress, b"not json"]:
        await gateway.client.post(callback_path(called), content=content)
    # A task whose completion only a poll found (no callback claimed it).
    lost = await accepted_task(gateway.sessions, "task-unified-4-lost")
    async with gateway.sessions() as session:
        await repository.update_fields(session, lost.id, {"status": "archiving", "progress": 100})
        await event_repository.record(
            session,
            lost.id,
            kind=EventKind.TRANSITION,
            source="poll",
            at=now,
            from_status="pending",
            to_status="archiving",
        )
        await session.commit()

    page = await gateway.client.get("/console")
    fragment = await gateway.client.get("/console/overview/sections")

    assert page.status_code == fragment.status_code == 200
    html = page.text
    statuses = section(html, "status-counts")
    queued = r'<tr data-status="queued">.*?class="count-hour">(\d+)<.*?class="count">(\d+)<'
    found = re.search(queued, statuses, re.S)
    assert found is not None
    assert found.groups() == ("1", "2")  # the old one is outside the hour
    assert count(statuses, r'<tr data-status="failed">.*?class="count">(\d+)<') == 1
    assert count(statuses, r'<tr data-status="succeeded">.*?class="count">(\d+)<') == 0
    backlog = section(html, "archive-backlog")
    assert count(backlog, r'class="jobs-due">(\d+)<') == 1
    assert re.search(r'class="oldest-due-age">(6\d|7\d)\.\d s', backlog)
    upstream = section(html, "upstream-errors")
    assert count(upstream, r'data-code="content_policy">.*?class="count">(\d+)<') == 1
    assert count(upstream, r'data-call="submit" data-outcome="retry">.*?class="count">(\d+)<') == 1
    callbacks = section(html, "callbacks")
    assert count(callbacks, r'data-outcome="accepted">.*?class="count">(\d+)<') == 1
    assert count(callbacks, r'data-outcome="duplicate">.*?class="count">(\d+)<') == 1
    assert count(callbacks, r'data-outcome="rejected">.*?class="count">(\d+)<') == 1
    recovered = section(html, "recovered-by-polling")
    assert count(recovered, r'class="count">(\d+)<') == 1
    assert 'data-testid="status-counts"' in fragment.text
    assert "<html" not in fragment.text
    assert 'data-refresh-url="/console/overview/sections"' in html


async def test_the_live_refresh_script_is_served_from_the_console(gateway: Gateway) -> None:
    script = await gateway.client.get("/console/static/console.js")
    style = await gateway.client.get("/console/static/console.css")
    unknown = await gateway.client.get("/console/static/..%2Fauth.py")

    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/console/overview/sections" not in script.text  # the URL comes from the page
    assert "fetch(" in script.text
    assert style.status_code == 200
    assert unknown.status_code == 404


async def test_an_overview_the_database_cannot_answer_in_time_is_a_503_and_the_next_one_works(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = console_queries.status_counts

    async def stuck(session: AsyncSession, since: datetime) -> dict[str, int]:
        await session.execute(ENDLESS)  # a real query the database never finishes
        return await counts(session, since)

    monkeypatch.setattr(console_overview, "OVERVIEW_QUERY_SECONDS", 0.5)
    monkeypatch.setattr(console_queries, "status_counts", stuck)
    page = await gateway.client.get("/console")
    fragment = await gateway.client.get("/console/overview/sections")
    monkeypatch.undo()
    again = await gateway.client.get("/console")

    assert (page.status_code, fragment.status_code) == (503, 503)
    assert "the database did not answer in time; retry" in page.text
    assert again.status_code == 200
    assert 'data-testid="status-counts"' in again.text
