"""The callback endpoint: authenticate, record, transition, commit, acknowledge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from app.callbacks.models import CallbackDelivery
from app.core.clock import utcnow
from app.core.config import Settings
from app.tasks.events import EventKind, TaskEvent
from app.tasks.models import Task
from app.workers.models import Job, JobKind, JobState
from tests.conftest import settings_values
from tests.support.callbacks import accepted_task, body, callback_path
from tests.support.gateway import Gateway, running_gateway

PROVIDER_ID = "task-unified-1-abcd1234"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(Settings(**settings_values(database_url))) as gateway:
        yield gateway


async def deliveries(gateway: Gateway, task_id: str) -> list[CallbackDelivery]:
    async with gateway.sessions() as session:
        query = select(CallbackDelivery).where(CallbackDelivery.task_id == task_id)
        return list((await session.scalars(query.order_by(CallbackDelivery.received_at))).all())


async def transitions(gateway: Gateway, task_id: str) -> list[tuple[str | None, str | None]]:
    async with gateway.sessions() as session:
        query = (
            select(TaskEvent)
            .where(TaskEvent.task_id == task_id, TaskEvent.kind == EventKind.TRANSITION)
            .order_by(TaskEvent.id)
        )
        return [(e.from_status, e.to_status) for e in (await session.scalars(query)).all()]


async def open_polls(gateway: Gateway, task_id: str) -> list[Job]:
    return [
        job
        for job in await gateway.jobs(task_id)
        if job.kind == JobKind.POLL and job.state == JobState.QUEUED
    ]


async def test_a_final_callback_is_recorded_and_queues_a_confirmation(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    before = utcnow()

    response = await gateway.client.post(
        callback_path(task), content=body(PROVIDER_ID, "completed"), headers=JSON
    )

    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    [delivery] = await deliveries(gateway, task.id)
    assert delivery.outcome == "applied"
    assert delivery.reported_status == "completed"
    assert delivery.body == body(PROVIDER_ID, "completed")
    # A callback is a hint: nothing changes until the provider's query confirms it.
    row = await gateway.task_row(task.id)
    assert (row.status, row.result_urls) == ("pending", None)
    [poll] = await open_polls(gateway, task.id)
    assert poll.run_at <= utcnow()
    assert poll.run_at >= before


async def test_a_progress_callback_moves_the_task_forward(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)

    response = await gateway.client.post(
        callback_path(task), content=body(PROVIDER_ID, "processing", 40), headers=JSON
    )

    assert response.status_code == 200
    row = await gateway.task_row(task.id)
    assert (row.status, row.progress) == ("processing", 40)
    assert await transitions(gateway, task.id) == [("pending", "processing")]


async def test_a_duplicate_is_acknowledged_and_changes_nothing(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    content = body(PROVIDER_ID, "processing", 40)
    await gateway.client.post(callback_path(task), content=content, headers=JSON)

    again = await gateway.client.post(callback_path(task), content=content, headers=JSON)

    assert again.status_code == 200
    assert again.json() == {"status": "duplicate"}
    [delivery] = await deliveries(gateway, task.id)
    assert delivery.deliveries == 2
    assert await transitions(gateway, task.id) == [("pending", "processing")]


async def test_concurrent_duplicates_make_one_transition(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    content = body(PROVIDER_ID, "processing", 60)

    responses = await asyncio.gather(
        *(gateway.client.post(callback_path(task), content=content, headers=JSON) for _ in range(4))
    )

    assert sorted(r.json()["status"] for r in responses) == ["accepted"] + ["duplicate"] * 3
    assert all(r.status_code == 200 for r in responses)
    [delivery] = await deliveries(gateway, task.id)
    assert delivery.deliveries == 4
    assert await transitions(gateway, task.id) == [("pending", "processing")]


async def test_a_stale_state_after_the_final_one_is_ignored(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    async with gateway.sessions() as session:
        row = await session.get(Task, task.id)
        assert row is not None
        row.status, row.progress = "archiving", 100
        await session.commit()

    response = await gateway.client.post(
        callback_path(task), content=body(PROVIDER_ID, "processing", 50), headers=JSON
    )

    assert response.status_code == 200
    row = await gateway.task_row(task.id)
    assert (row.status, row.progress) == ("archiving", 100)
    assert await transitions(gateway, task.id) == []


@pytest.mark.parametrize("terminal", ["succeeded", "failed", "cancelled"])
async def test_nothing_changes_a_terminal_task(gateway: Gateway, terminal: str) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    async with gateway.sessions() as session:
        row = await session.get(Task, task.id)
        assert row is not None
        row.status = terminal
        await session.commit()
    jobs_before = len(await gateway.jobs(task.id))

    for status in ("pending", "processing", "completed", "failed", "canceled"):
        response = await gateway.client.post(
            callback_path(task), content=body(PROVIDER_ID, status, 10), headers=JSON
        )
        assert response.status_code == 200

    assert (await gateway.task_row(task.id)).status == terminal
    assert len(await gateway.jobs(task.id)) == jobs_before
    assert await transitions(gateway, task.id) == []


async def test_an_unknown_status_is_recorded_and_ignored(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)

    response = await gateway.client.post(
        callback_path(task), content=body(PROVIDER_ID, "teleporting", 70), headers=JSON
    )

    assert response.status_code == 200
    assert (await gateway.task_row(task.id)).status == "pending"
    [delivery] = await deliveries(gateway, task.id)
    assert delivery.reported_status == "teleporting"


async def test_a_forged_token_is_refused_and_nothing_is_recorded(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    forged = callback_path(task, secret="another-secret-0123456789abcdefghijklmn")

    response = await gateway.client.post(
        forged, content=body(PROVIDER_ID, "completed"), headers=JSON
    )

    assert response.status_code == 401
    assert await deliveries(gateway, task.id) == []
    assert await open_polls(gateway, task.id) == []
    assert (await gateway.task_row(task.id)).status == "pending"


async def test_another_tasks_token_is_refused(gateway: Gateway) -> None:
    victim = await accepted_task(gateway.sessions, PROVIDER_ID)
    other = await accepted_task(gateway.sessions, "task-unified-2-other")
    other_token = callback_path(other).rsplit("/", 1)[1]
    path = callback_path(victim).rsplit("/", 1)[0] + "/" + other_token

    response = await gateway.client.post(path, content=body(PROVIDER_ID, "completed"), headers=JSON)

    assert response.status_code == 401
    assert await deliveries(gateway, victim.id) == []
    assert await deliveries(gateway, other.id) == []


@pytest.mark.parametrize(
    "path",
    [
        "/callbacks/evolink/00000000-0000-0000-0000-000000000000/" + "A" * 43,
        "/callbacks/evolink/" + "x" * 500 + "/token",
        "/callbacks/evolink/%00/token",
    ],
    ids=["unknown task", "overlong id", "nul id"],
)
async def test_an_unknown_task_is_404(gateway: Gateway, path: str) -> None:
    response = await gateway.client.post(path, content=body(PROVIDER_ID, "completed"))

    assert response.status_code == 404
    assert await gateway.count(CallbackDelivery) == 0


async def test_an_oversized_body_is_refused_unread(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    huge = b'{"id": "' + b"x" * (1024 * 1024) + b'"}'

    declared = await gateway.client.post(callback_path(task), content=huge, headers=JSON)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 65536

    streamed = await gateway.client.post(callback_path(task), content=chunks(), headers=JSON)

    assert declared.status_code == streamed.status_code == 413
    assert await deliveries(gateway, task.id) == []


async def test_a_body_of_exactly_one_mebibyte_is_read(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    content = body(PROVIDER_ID, "processing", 30)
    padded = content[:-1] + b" " * (1024 * 1024 - len(content)) + b"}"

    response = await gateway.client.post(callback_path(task), content=padded, headers=JSON)

    assert len(padded) == 1024 * 1024
    assert response.status_code == 200


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"[1, 2]", b'"text"', b'{"status": "completed"}', b"\xff\xfe\x00"],
    ids=["broken", "empty", "array", "string", "no id", "binary"],
)
async def test_malformed_bodies_are_recorded_and_answered_400(
    gateway: Gateway, content: bytes
) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)

    response = await gateway.client.post(callback_path(task), content=content, headers=JSON)
    again = await gateway.client.post(callback_path(task), content=content, headers=JSON)

    # The same body gets the same answer (not a 2xx "duplicate" the second time).
    assert (response.status_code, again.status_code) == (400, 400)
    assert again.json() == response.json()
    [delivery] = await deliveries(gateway, task.id)
    assert (delivery.outcome, delivery.body, delivery.deliveries) == ("malformed", content, 2)
    assert (await gateway.task_row(task.id)).status == "pending"
    assert await open_polls(gateway, task.id) == []


async def test_a_body_about_another_upstream_task_changes_nothing(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)

    elsewhere = body("task-unified-9-elsewhere", "completed")
    response = await gateway.client.post(callback_path(task), content=elsewhere, headers=JSON)
    again = await gateway.client.post(callback_path(task), content=elsewhere, headers=JSON)
    ours = await gateway.client.post(
        callback_path(task), content=body(PROVIDER_ID, "processing", 10), headers=JSON
    )
    ours_again = await gateway.client.post(
        callback_path(task), content=body(PROVIDER_ID, "processing", 10), headers=JSON
    )

    assert (response.status_code, again.status_code) == (400, 400)
    assert again.json() == response.json()
    assert (ours.json(), ours_again.json()) == ({"status": "accepted"}, {"status": "duplicate"})
    found = {d.outcome: d.deliveries for d in await deliveries(gateway, task.id)}
    assert found == {"mismatch": 2, "applied": 2}
    assert await open_polls(gateway, task.id) == []


@pytest.mark.parametrize(
    ("content", "reported"),
    [
        (b'{"id": "%s", "status": "\\u0000"}' % PROVIDER_ID.encode(), "\ufffd"),
        (b'{"id": "%s", "status": "\\ud800"}' % PROVIDER_ID.encode(), "\ufffd"),
        (b'{"id": "%s", "status": "x\\udc00\\u0000y"}' % PROVIDER_ID.encode(), "x\ufffd\ufffdy"),
    ],
    ids=["NUL", "lone surrogate", "both"],
)
async def test_a_status_that_cannot_be_stored_is_recorded_cleaned(
    gateway: Gateway, content: bytes, reported: str
) -> None:
    # were a 503 on PostgreSQL (text refuses NUL) and a 500 on SQLite (UTF-8 refuses surrogates)
    task = await accepted_task(gateway.sessions, PROVIDER_ID)

    response = await gateway.client.post(callback_path(task), content=content, headers=JSON)

    assert response.status_code == 200
    [delivery] = await deliveries(gateway, task.id)
    assert (delivery.outcome, delivery.reported_status) == ("applied", reported)
    assert (await gateway.task_row(task.id)).status == "pending"


async def test_an_upstream_id_that_cannot_be_stored_is_malformed(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    content = b'{"id": "%s\\u0000", "status": "completed"}' % PROVIDER_ID.encode()

    response = await gateway.client.post(callback_path(task), content=content, headers=JSON)

    assert response.status_code == 400
    [delivery] = await deliveries(gateway, task.id)
    assert delivery.outcome == "malformed"
    assert await open_polls(gateway, task.id) == []
