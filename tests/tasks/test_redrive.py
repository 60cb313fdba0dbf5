"""POST /v1/tasks/{id}/retry: a failed archive and a timed-out poll run again through the state
machine, 409 with the reason when nothing can, one redrive for two concurrent retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.core.clock import utcnow
from app.core.config import Settings
from app.provider.simulator.config import SimulatorConfig
from app.tasks import repository, service
from app.tasks.events import EventKind, TaskEvent
from app.tasks.states import ServiceFailure
from tests.conftest import BETA_KEY, auth, settings_values
from tests.notify.receiver import receiving
from tests.notify.test_delivery import is_, timeline
from tests.support.gateway import Gateway, running_gateway
from tests.support.stack import running_stack
from tests.support.waiting import eventually


async def retry(client: Any, task_id: str, key: str | None = None) -> Any:
    return await client.post(f"/v1/tasks/{task_id}/retry", headers=auth(*([key] if key else [])))


async def test_an_archive_that_failed_is_copied_again_and_the_caller_told_both_outcomes(
    database_url: str, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    blocker = images / "tasks"  # a file where the store wants a directory: every put fails
    blocker.write_text("not a directory")
    async with (
        receiving() as receiver,
        running_stack(
            database_url, storage_url=f"file://{images}", archive_deadline_seconds=0
        ) as stack,
    ):
        created = await stack.create({"prompt": "a lighthouse", "notify_url": receiver.url})
        failed = await stack.wait_for(
            created["id"], lambda t: t["status"] == "failed" and is_("delivered")(t)
        )
        blocker.unlink()

        retried = await retry(stack.gateway.client, created["id"])
        succeeded = await stack.wait_for(
            created["id"], lambda t: t["status"] == "succeeded" and is_("delivered")(t)
        )
        redrives = await timeline(stack, created["id"], "redrive")
        transitions = await timeline(stack, created["id"], "transition")

    assert failed["error"]["code"] == "archive_failed"
    assert retried.status_code == 202
    assert retried.headers["retried-step"] == "archive"
    assert retried.json()["status"] in ("archiving", "succeeded")
    assert succeeded["error"] is None
    assert succeeded["completed_at"] is not None
    assert (images / "tasks" / created["id"] / "images" / "0").is_file()
    assert [d.message["type"] for d in receiver.deliveries] == ["task.failed", "task.succeeded"]
    assert len({d.webhook_id for d in receiver.deliveries}) == 2
    assert all(d.valid for d in receiver.deliveries)
    assert receiver.deliveries[0].message["data"]["error"]["code"] == "archive_failed"
    assert [line["outcome"] for line in redrives] == ["archive"]
    assert [(line["from_status"], line["to_status"]) for line in transitions][-3:] == [
        ("archiving", "failed"),
        ("failed", "archiving"),
        ("archiving", "succeeded"),
    ]


async def test_a_task_that_timed_out_upstream_is_polled_again(database_url: str) -> None:
    async with running_stack(
        database_url,
        # The task must still be running upstream when the gateway gives up on it after 0.5 s;
        # 6 s leaves a slow, loaded machine room to decide before the provider finishes.
        SimulatorConfig(duration_seconds=6.0),
        poll_max_wait_seconds=0.5,
    ) as stack:
        created = await stack.create({"prompt": "a lighthouse"})
        failed = await stack.wait_for(created["id"], lambda t: t["status"] == "failed")
        await eventually(stack.sim_tasks, lambda tasks: tasks[0]["status"] == "completed")

        retried = await retry(stack.gateway.client, created["id"])
        assert retried.status_code == 202, retried.text
        succeeded = await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")
        redrives = await timeline(stack, created["id"], "redrive")

    assert failed["error"]["code"] == "provider_timeout"
    assert retried.headers["retried-step"] == "poll"
    assert retried.json()["status"] in ("pending", "processing", "archiving", "succeeded")
    assert retried.json()["completed_at"] is None or retried.json()["status"] == "succeeded"
    assert succeeded["images"][0]["sha256"]
    assert [line["outcome"] for line in redrives] == ["poll"]


# --- below the HTTP stack: rows in a given state, the API in process ----------------------


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    settings = Settings(**settings_values(database_url))
    async with running_gateway(settings) as running:
        yield running


async def failed_task(
    gateway: Gateway,
    code: str,
    *,
    results: bool = True,
    completed_ago: timedelta = timedelta(minutes=5),
    provider_task_id: str | None = "task-unified-1-redrive",
) -> str:
    response = await gateway.client.post(
        "/v1/images/generations", json={"prompt": "p"}, headers=auth()
    )
    task_id: str = response.json()["id"]
    completed = utcnow() - completed_ago
    async with gateway.sessions() as session:
        await repository.update_fields(
            session,
            task_id,
            {
                "status": "archiving",
                "progress": 100,
                "provider_task_id": provider_task_id,
                "result_urls": ["https://cdn.example.com/a.png"] if results else None,
                "provider_completed_at": completed,
            },
        )
        await session.commit()
    await service.apply_alone(gateway.sessions, task_id, ServiceFailure(code, "why"), source="t")
    return task_id


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"code": "submission_rejected"}, "submission_rejected, which a retry cannot repair"),
        ({"code": "links_expired"}, "links_expired, which a retry cannot repair"),
        ({"code": "content_policy_violation"}, "which a retry cannot repair"),
        ({"code": "archive_failed", "results": False}, "no result link"),
        (
            {"code": "archive_failed", "completed_ago": timedelta(hours=24, seconds=1)},
            "links expired at",
        ),
        ({"code": "provider_timeout", "provider_task_id": None}, "never confirmed taking"),
    ],
    ids=["rejected", "links-expired", "provider-error", "no-links", "too-late", "never-taken"],
)
async def test_a_failure_that_a_retry_cannot_repair_is_409_with_the_reason(
    gateway: Gateway, setup: dict[str, Any], reason: str
) -> None:
    task_id = await failed_task(gateway, **setup)

    response = await retry(gateway.client, task_id)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_retryable"
    assert reason in response.json()["error"]["message"]
    assert (await gateway.task_row(task_id)).status == "failed"


async def test_a_task_still_running_or_one_that_succeeded_is_409(gateway: Gateway) -> None:
    queued = (
        await gateway.client.post("/v1/images/generations", json={"prompt": "p"}, headers=auth())
    ).json()["id"]
    succeeded = await failed_task(gateway, "archive_failed")
    async with gateway.sessions() as session:
        await repository.update_fields(
            session, succeeded, {"status": "succeeded", "error_code": None, "error_message": None}
        )
        await session.commit()

    still = await retry(gateway.client, queued)
    done = await retry(gateway.client, succeeded)

    assert still.status_code == 409
    assert still.json()["error"]["message"] == "the task is still queued: nothing has failed"
    assert done.status_code == 409
    assert "succeeded without a notification to send" in done.json()["error"]["message"]


async def test_another_callers_task_and_unknown_ids_are_404(gateway: Gateway) -> None:
    task_id = await failed_task(gateway, "archive_failed")

    other = await retry(gateway.client, task_id, BETA_KEY)
    unknown = await retry(gateway.client, "00000000-0000-4000-8000-000000000000")
    malformed = await retry(gateway.client, "nope")
    events = await gateway.client.get(f"/v1/tasks/{task_id}/events", headers=auth(BETA_KEY))

    assert [r.status_code for r in (other, unknown, malformed, events)] == [404] * 4
    assert (await gateway.task_row(task_id)).status == "failed"


async def test_concurrent_retries_make_exactly_one_redrive(gateway: Gateway) -> None:
    task_id = await failed_task(gateway, "archive_failed")

    answers = await asyncio.gather(*(retry(gateway.client, task_id) for _ in range(8)))

    assert sorted(r.status_code for r in answers) == [202] + [409] * 7
    assert (await gateway.task_row(task_id)).status == "archiving"
    async with gateway.sessions() as session:
        lines = (await session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id))).all()
    assert [line.outcome for line in lines if line.kind == EventKind.REDRIVE] == ["archive"]
    back = [line for line in lines if (line.from_status, line.to_status) == ("failed", "archiving")]
    assert len(back) == 1
    jobs = [job for job in await gateway.jobs(task_id) if job.kind == "archive"]
    assert len(jobs) == 1
