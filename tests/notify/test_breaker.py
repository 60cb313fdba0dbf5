"""The per-host breaker of notify URLs: opens after N timeouts in a row to one host, delays the
notifications to it without losing them or counting attempts, lets one probe through when it
half-opens, and closes when the host answers; callers and the console see why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import create_engine, create_sessionmaker
from app.notify import breaker
from app.notify.breaker import Delayed, NotifyHost
from app.notify.notifying import breaker_key
from tests.conftest import auth
from tests.console.helpers import OPERATORS, signed_in
from tests.notify.receiver import HANG, receiving
from tests.support.stack import Stack, running_stack
from tests.support.waiting import eventually

PROBE = timedelta(seconds=30)
OPEN = timedelta(minutes=1)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


async def fail(sessions: async_sessionmaker[AsyncSession], host: str, at: Any) -> None:
    async with sessions.begin() as session:
        await breaker.failed(session, host, at, threshold=3, open_for=OPEN, error="timed out")


async def admit(sessions: async_sessionmaker[AsyncSession], host: str, at: Any) -> Delayed | None:
    async with sessions.begin() as session:
        return await breaker.admit(session, host, at, PROBE)


async def host_row(sessions: async_sessionmaker[AsyncSession], host: str) -> NotifyHost | None:
    async with sessions() as session:
        return await session.get(NotifyHost, host, populate_existing=True)


async def test_the_breaker_opens_after_n_failures_in_a_row_and_one_probe_closes_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    host, other = "hooks.example.com", "other.example.com"
    now = utcnow()
    await fail(sessions, host, now)
    await fail(sessions, host, now)
    assert await admit(sessions, host, now) is None  # two in a row: still closed

    await fail(sessions, host, now)

    assert await admit(sessions, host, now) == Delayed(now + OPEN)
    assert await admit(sessions, other, now) is None  # per host
    # Half-open: the first attempt after the delay is the probe, the others keep waiting.
    later = now + OPEN + timedelta(seconds=1)
    assert await admit(sessions, host, later) is None
    assert await admit(sessions, host, later) == Delayed(later + PROBE)
    # A failed probe opens it again.
    await fail(sessions, host, later)
    assert await admit(sessions, host, later) == Delayed(later + OPEN)
    # The next probe gets an answer: closed, the count starts over.
    latest = later + OPEN + timedelta(seconds=1)
    assert await admit(sessions, host, latest) is None
    async with sessions.begin() as session:
        await breaker.answered(session, host, latest)
    row = await host_row(sessions, host)
    assert row is not None
    assert (row.failures, row.open_until, row.last_error) == (0, None, None)
    assert await admit(sessions, host, latest) is None
    await fail(sessions, host, latest)
    assert await admit(sessions, host, latest) is None


async def test_an_answer_between_failures_resets_the_count(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    await fail(sessions, "h.example", now)
    await fail(sessions, "h.example", now)
    async with sessions.begin() as session:
        await breaker.answered(session, "h.example", now)
    await fail(sessions, "h.example", now)
    await fail(sessions, "h.example", now)

    assert await admit(sessions, "h.example", now) is None


def test_the_breaker_key_is_the_host_and_a_given_port() -> None:
    assert breaker_key("https://Hooks.Example.com/a?b=c") == "hooks.example.com"
    assert breaker_key("http://127.0.0.1:8123/hooks") == "127.0.0.1:8123"
    assert breaker_key("not a url") is None


def notification(task: dict[str, Any]) -> dict[str, Any]:
    note: dict[str, Any] = task.get("notification") or {}
    return note


async def notify_lines(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    response = await stack.gateway.client.get(f"/v1/tasks/{task_id}/events", headers=auth())
    assert response.status_code == 200, response.text
    return [line for line in response.json()["data"] if line["kind"] == "notify"]


BREAKER: dict[str, Any] = {
    "notify_retry_schedule": "0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2",
    "notify_timeout_seconds": 0.3,
    "notify_breaker_failures": 2,
    "notify_breaker_open_seconds": 1.5,
    "operator_keys": OPERATORS,
}


async def test_a_host_that_keeps_timing_out_delays_its_notification_until_a_probe_answers(
    database_url: str,
) -> None:
    async with receiving(default=HANG) as receiver, running_stack(database_url, **BREAKER) as stack:
        created = await stack.create({"prompt": "a lighthouse", "notify_url": receiver.url})
        host = breaker_key(receiver.url)
        assert host is not None

        # Two timeouts open the breaker; the notification is then delayed, not attempted.
        task = await eventually(
            lambda: stack.task(created["id"]),
            lambda task: (notification(task).get("last_error") or "").startswith("delayed: "),
        )
        note = notification(task)
        assert note["status"] == "pending"
        assert note["attempts"] == 2
        assert note["last_error"].startswith(
            f"delayed: notify host {host} is not answering; next try at "
        )
        assert note["next_attempt_at"] is not None
        assert len(receiver.deliveries) == 2
        lines = await notify_lines(stack, created["id"])
        assert [line["outcome"] for line in lines] == ["error", "error", "delayed"]
        assert lines[-1]["message"] == note["last_error"]
        # The console's task page shows why.
        await signed_in(stack.gateway.client)
        page = await stack.gateway.client.get(f"/console/tasks/{created['id']}")
        assert page.status_code == 200
        assert f"delayed: notify host {host} is not answering" in page.text

        # The host recovers: the half-open probe is delivered and closes the breaker.
        receiver.default = 204
        task = await stack.wait_for(
            created["id"], lambda task: notification(task).get("status") == "delivered"
        )
        async with stack.gateway.sessions() as session:
            row = await session.get(NotifyHost, host)
        assert row is not None
        assert (row.failures, row.open_until) == (0, None)

    assert notification(task)["attempts"] == 3  # the delays were not attempts
    assert len(receiver.deliveries) == 3
    assert len({delivery.webhook_id for delivery in receiver.deliveries}) == 1
