"""Notifications end to end: simulator, gateway and a receiving server, all on real HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from app.notify.notifying import Attempt, Notifier
from app.tasks.notifications import Notification
from app.workers.models import Job, JobKind, JobState
from tests.conftest import NOTIFY_SECRET, auth
from tests.notify.receiver import HANG, receiving, signature_is_valid
from tests.support.stack import Stack, running_stack
from tests.support.waiting import eventually

FAST: dict[str, Any] = {"notify_retry_schedule": "0.2,0.2,0.2,0.2", "notify_timeout_seconds": 0.5}


def notification(task: dict[str, Any]) -> dict[str, Any]:
    note: dict[str, Any] = task.get("notification") or {}
    return note


def is_(status: str) -> Any:
    return lambda task: notification(task).get("status") == status


async def timeline(stack: Stack, task_id: str, kind: str) -> list[dict[str, Any]]:
    response = await stack.gateway.client.get(f"/v1/tasks/{task_id}/events", headers=auth())
    assert response.status_code == 200, response.text
    return [line for line in response.json()["data"] if line["kind"] == kind]


async def notify_jobs(stack: Stack, task_id: str) -> list[Job]:
    return [job for job in await stack.gateway.jobs(task_id) if job.kind == JobKind.NOTIFY]


def without_notification(task: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in task.items() if key != "notification"}


def test_the_independent_check_refuses_a_changed_body_id_timestamp_or_key() -> None:
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000"}
    body = b'{"type":"task.failed"}'
    # Signed by the gateway's library: the independent check must agree with it.
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    at = datetime.fromtimestamp(1700000000, UTC)
    headers["webhook-signature"] = Webhook(NOTIFY_SECRET).sign("msg_1", at, body.decode())

    assert signature_is_valid(NOTIFY_SECRET, headers, body)
    assert not signature_is_valid(NOTIFY_SECRET, headers, body.replace(b"failed", b"succeeded"))
    assert not signature_is_valid(NOTIFY_SECRET, headers | {"webhook-id": "msg_2"}, body)
    assert not signature_is_valid(
        NOTIFY_SECRET, headers | {"webhook-timestamp": "1700000001"}, body
    )
    other_key = "whsec_" + "b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXk="
    assert not signature_is_valid(other_key, headers, body)


async def test_a_finished_task_is_notified_once_with_the_signed_task_object(
    database_url: str,
) -> None:
    async with receiving() as receiver, running_stack(database_url) as stack:
        created = await stack.create({"prompt": "a lighthouse", "notify_url": receiver.url})
        task = await stack.wait_for(created["id"], is_("delivered"))
        jobs = await eventually(
            lambda: notify_jobs(stack, created["id"]),
            lambda jobs: {job.state for job in jobs} == {JobState.DONE},
        )
        lines = await timeline(stack, created["id"], "notify")

    [delivery] = receiver.deliveries
    assert delivery.valid
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.webhook_id.startswith("msg_")
    assert abs(int(delivery.headers["webhook-timestamp"]) - delivery.received_at) < 5
    message = delivery.message
    assert message["type"] == "task.succeeded"
    assert message["timestamp"] == task["completed_at"]
    assert without_notification(message["data"]) == without_notification(task)
    assert message["data"]["status"] == "succeeded"
    assert message["data"]["images"][0]["sha256"]
    assert notification(message["data"])["status"] == "pending"
    assert notification(task) | {"delivered_at": None} == {
        "webhook_id": delivery.webhook_id,
        "type": "task.succeeded",
        "status": "delivered",
        "attempts": 1,
        "last_status_code": 204,
        "last_error": None,
        "next_attempt_at": None,
        "delivered_at": None,
    }
    assert notification(task)["delivered_at"] is not None
    assert len(jobs) == 1
    assert [(line["outcome"], line["detail"]["http_status"]) for line in lines] == [
        ("delivered", 204)
    ]


async def test_a_failing_receiver_gets_the_same_webhook_id_until_it_answers_2xx(
    database_url: str,
) -> None:
    async with receiving() as receiver, running_stack(database_url, **FAST) as stack:
        receiver.plan = [500, HANG, 302, 200]
        created = await stack.create({"prompt": "a lighthouse", "notify_url": receiver.url})
        task = await stack.wait_for(created["id"], is_("delivered"))
        lines = await timeline(stack, created["id"], "notify")

    assert len(receiver.deliveries) == 4
    assert {d.webhook_id for d in receiver.deliveries} == {notification(task)["webhook_id"]}
    assert all(d.valid for d in receiver.deliveries)
    assert {d.message["type"] for d in receiver.deliveries} == {"task.succeeded"}
    assert notification(task)["attempts"] == 4
    assert [line["outcome"] for line in lines] == ["error", "error", "error", "delivered"]
    assert lines[0]["message"] == "answered 500"
    assert "did not answer" in lines[1]["message"]
    assert lines[2]["message"] == "answered 302 (redirects are not followed)"
    gaps = [
        b.received_at - a.received_at
        for a, b in zip(receiver.deliveries, receiver.deliveries[1:], strict=False)
    ]
    assert all(gap >= 0.2 for gap in gaps)  # the schedule's delay separates the attempts


async def test_a_notification_is_given_up_visibly_and_redriven_with_the_same_id(
    database_url: str,
) -> None:
    async with receiving(default=503) as receiver, running_stack(database_url, **FAST) as stack:
        created = await stack.create({"prompt": "a lighthouse", "notify_url": receiver.url})
        given_up = await stack.wait_for(created["id"], is_("failed"))
        count_at_give_up = len(receiver.deliveries)
        receiver.default = 200

        retried = await stack.gateway.client.post(
            f"/v1/tasks/{created['id']}/retry", headers=auth()
        )
        delivered = await stack.wait_for(created["id"], is_("delivered"))
        again = await stack.gateway.client.post(f"/v1/tasks/{created['id']}/retry", headers=auth())
        lines = await timeline(stack, created["id"], "notify")
        redrives = await timeline(stack, created["id"], "redrive")

    assert given_up["status"] == "succeeded"
    assert notification(given_up) | {"webhook_id": ""} == {
        "webhook_id": "",
        "type": "task.succeeded",
        "status": "failed",
        "attempts": 5,  # the first attempt and one per delay of the schedule
        "last_status_code": 503,
        "last_error": "answered 503",
        "next_attempt_at": None,
        "delivered_at": None,
    }
    assert count_at_give_up == 5
    assert retried.status_code == 202
    assert retried.headers["retried-step"] == "notification"
    assert notification(retried.json())["status"] == "pending"
    assert len(receiver.deliveries) == 6
    assert {d.webhook_id for d in receiver.deliveries} == {notification(given_up)["webhook_id"]}
    assert all(d.valid for d in receiver.deliveries)
    assert notification(delivered)["attempts"] == 1  # a new series
    assert [line["outcome"] for line in lines] == ["error"] * 4 + ["given_up", "delivered"]
    assert [line["detail"]["series"] for line in lines] == [1] * 5 + [2]
    assert [line["outcome"] for line in redrives] == ["notification"]
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_retryable"
    assert "delivered" in again.json()["error"]["message"]


async def test_a_task_without_notify_url_is_never_notified(database_url: str) -> None:
    async with receiving() as receiver, running_stack(database_url) as stack:
        created = await stack.create({"prompt": "a lighthouse"})
        task = await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")
        jobs = await stack.gateway.jobs(created["id"])

    assert task["notification"] is None
    assert JobKind.NOTIFY not in {job.kind for job in jobs}
    assert receiver.deliveries == []


async def test_a_delivery_recorded_after_a_database_error_is_not_sent_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Notifier._record
    calls = 0

    async def failing_once(self: Notifier, row: Notification, attempt: Attempt) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("UPDATE notifications", {}, ConnectionResetError("closed"))
        await original(self, row, attempt)

    monkeypatch.setattr(Notifier, "_record", failing_once)
    async with receiving() as receiver, running_stack(database_url) as stack:
        created = await stack.create({"prompt": "a lighthouse", "notify_url": receiver.url})
        await stack.wait_for(created["id"], is_("delivered"))
        await eventually(
            lambda: notify_jobs(stack, created["id"]),
            lambda jobs: {job.state for job in jobs} == {JobState.DONE},
        )

    assert len(receiver.deliveries) == 1
    assert calls == 2
