"""Submission upstream: accepted once, rejected clearly, retried after outages, never doubled."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from app.provider.simulator.config import SimulatorConfig, SimulatorFaults
from app.provider.types import ProviderTask
from app.tasks.direct_writes import Direct
from app.tasks.models import SubmitState, Task
from app.tasks.submission import Submitter
from app.workers.models import JobKind
from tests.support.images import ImageHost, image_bytes, sha256
from tests.support.servers import serve_app
from tests.support.stack import running_stack
from tests.support.waiting import eventually

ACCEPTED = ("pending", "processing", "archiving", "succeeded")


def status_is(*statuses: str) -> Any:
    return lambda task: task["status"] in statuses


async def test_task_is_submitted_once_and_follows_the_provider(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        created = await stack.create({"prompt": "a red fox", "size": "2:3", "quality": "low"})

        task = await stack.wait_for(created["id"], status_is("succeeded"))

        [upstream] = await stack.sim_tasks()
        assert task["provider_task_id"] == upstream["id"]
        assert task["progress"] == 100
        assert upstream["request"] == {
            "model": "gpt-image-1.5",
            "prompt": "a red fox",
            "size": "2:3",
            "quality": "low",
            "n": 1,
            "callback_url": upstream["callback_url"],
        }
        assert upstream["callback_url"].startswith(f"{stack.gateway_url}/callbacks/evolink/")
        assert created["id"] in upstream["callback_url"]


async def test_image_urls_are_sent_when_given(database_url: str) -> None:
    host = ImageHost()
    references = [image_bytes("png", seed=1), image_bytes("webp", seed=2)]
    paths = [host.add("a.png", references[0]), host.add("b.webp", references[1], "image/webp")]
    async with serve_app(host.app) as images, running_stack(database_url) as stack:
        urls = [f"{images}{path}" for path in paths]
        created = await stack.create({"prompt": "blend these", "image_urls": urls})

        await stack.wait_for(created["id"], status_is("succeeded"))

        [upstream] = await stack.sim_tasks()
        assert upstream["request"]["image_urls"] == urls
        # The provider downloaded exactly these bytes when the task started.
        assert [(r["url"], r["sha256"]) for r in upstream["references"]] == [
            (url, sha256(data)) for url, data in zip(urls, references, strict=True)
        ]


async def test_a_prompt_over_the_provider_token_limit_fails_clearly(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        created = await stack.create({"prompt": "word " * 5000})

        task = await stack.wait_for(created["id"], status_is("failed"))

        assert task["error"]["code"] == "submission_rejected"
        assert "HTTP 400" in task["error"]["message"]
        assert "token" in task["error"]["message"].lower()
        assert task["completed_at"] is not None
        assert await stack.sim_tasks() == []
        row = await stack.gateway.task_row(created["id"])
        assert row.submit_state == "rejected"


async def test_a_wrong_provider_key_fails_the_task_and_alerts_the_operator(
    sqlite_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_stack(sqlite_database_url, provider_api_key="sk-evo-wrong") as stack:
        created = await stack.create()

        task = await stack.wait_for(created["id"], status_is("failed"))

    assert task["error"]["code"] == "submission_rejected"
    assert "HTTP 401" in task["error"]["message"]
    alerts = [r for r in caplog.records if r.levelno == logging.ERROR and "operator" in r.message]
    assert alerts
    assert "sk-evo-wrong" not in caplog.text


async def test_an_upstream_outage_is_retried_and_ends_in_exactly_one_task(
    database_url: str,
) -> None:
    config = SimulatorConfig(duration_seconds=0.5, faults=SimulatorFaults(down=True))
    async with running_stack(database_url, config) as stack:
        created = await stack.create()

        async def submit_job_attempts() -> int:
            jobs = await stack.gateway.jobs(created["id"])
            return max(job.attempts for job in jobs if job.kind == JobKind.SUBMIT)

        await eventually(submit_job_attempts, lambda attempts: attempts >= 2)
        row = await eventually(
            lambda: stack.gateway.task_row(created["id"]),
            lambda row: row.submit_state == SubmitState.RETRY,
        )
        assert (row.status, row.provider_task_id) == ("queued", None)
        await stack.set_faults(down=False)

        task = await stack.wait_for(created["id"], status_is(*ACCEPTED))

        assert len(await stack.sim_tasks()) == 1
        assert task["provider_task_id"] == (await stack.sim_tasks())[0]["id"]


async def test_rate_limited_creates_are_retried(sqlite_database_url: str) -> None:
    config = SimulatorConfig(duration_seconds=0.5, faults=SimulatorFaults(create_429_rate=1.0))
    # No Retry-After from the simulator: every replica holds its creates for the configured wait.
    wait = {"provider_rate_limit_wait_seconds": 0.3}
    async with running_stack(sqlite_database_url, config, **wait) as stack:
        created = await stack.create()
        await eventually(
            lambda: stack.sim.get("/_sim/stats"), lambda r: r.json()["creates_rejected_429"] >= 2
        )
        await stack.set_faults(create_429_rate=0.0)

        await stack.wait_for(created["id"], status_is(*ACCEPTED))

        assert len(await stack.sim_tasks()) == 1


async def test_a_lost_create_answer_is_not_resubmitted_and_the_callback_adopts_the_task(
    database_url: str,
) -> None:
    config = SimulatorConfig(
        duration_seconds=1.0,
        faults=SimulatorFaults(create_hang_rate=1.0, create_hang_seconds=4.0),
    )
    async with running_stack(database_url, config, provider_create_timeout_seconds=0.3) as stack:
        created = await stack.create()

        task = await stack.wait_for(created["id"], status_is("succeeded"))

        [upstream] = await stack.sim_tasks()
        assert task["provider_task_id"] == upstream["id"]
        row = await stack.gateway.task_row(created["id"])
        assert row.submit_attempts == 1


async def test_a_lost_create_answer_without_callback_fails_after_the_wait(
    database_url: str,
) -> None:
    config = SimulatorConfig(
        duration_seconds=0.3,
        faults=SimulatorFaults(
            create_hang_rate=1.0, create_hang_seconds=2.0, callback_drop_rate=1.0
        ),
    )
    async with running_stack(
        database_url,
        config,
        provider_create_timeout_seconds=0.3,
        submit_uncertain_wait_seconds=2,
    ) as stack:
        created = await stack.create()

        task = await stack.wait_for(created["id"], status_is("failed"))

        assert task["error"]["code"] == "provider_timeout"
        assert "not submitted again" in task["error"]["message"]
        assert len(await stack.sim_tasks()) == 1
        row = await stack.gateway.task_row(created["id"])
        assert row.submit_attempts == 1


async def test_concurrent_requests_with_one_key_make_one_upstream_task(
    pg_database_url: str,
) -> None:
    async with running_stack(pg_database_url, SimulatorConfig(duration_seconds=0.3)) as stack:
        headers = {"Idempotency-Key": "burst-upstream"}

        created = await asyncio.gather(*(stack.create(headers=headers) for _ in range(20)))
        task = await stack.wait_for(created[0]["id"], status_is("succeeded"))

        assert {item["id"] for item in created} == {task["id"]}
        upstream = await stack.sim_tasks()
        assert [item["id"] for item in upstream] == [task["provider_task_id"]]


async def test_a_database_error_recording_an_accepted_create_is_ridden_out(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upstream id exists only in the worker's memory: losing it to a killed database
    # connection would leave the task uncertain (and, without a callback, failed).
    original = Submitter._record_answer
    calls = 0

    async def failing_once(self: Submitter, task: Task, accepted: ProviderTask) -> str | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("UPDATE tasks", {}, ConnectionResetError("connection closed"))
        return await original(self, task, accepted)

    monkeypatch.setattr(Submitter, "_record_answer", failing_once)
    config = SimulatorConfig(duration_seconds=0.3, faults=SimulatorFaults(callback_drop_rate=1.0))
    async with running_stack(database_url, config) as stack:
        created = await stack.create()

        task = await stack.wait_for(created["id"], status_is("succeeded"))

        [upstream] = await stack.sim_tasks()
        assert task["provider_task_id"] == upstream["id"]
        row = await stack.gateway.task_row(created["id"])
        assert (row.submit_attempts, row.submit_state) == (1, SubmitState.ACCEPTED)
    assert calls == 2


async def test_an_acceptance_whose_commit_failed_is_written_again_from_the_row(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through a session (SQLite): the first try applied the transition to the task in memory,
    # then its commit failed; the second try must decide from the row (still queued), not from
    # what the first try wrote. Straight on asyncpg (PostgreSQL: app/tasks/direct_writes.py):
    # the first try's statement committed and its answer was lost; the second try must find
    # the task pending and its "accepted" line, and write neither again.
    original = Submitter._accept
    real_commit = AsyncSession.commit
    real_fetch = Direct.fetch
    calls = 0
    failures = 0
    fail_next = False

    async def commit(self: AsyncSession) -> None:
        nonlocal fail_next, failures
        if fail_next:
            fail_next, failures = False, failures + 1
            await self.rollback()
            raise OperationalError("COMMIT", {}, ConnectionResetError("connection closed"))
        await real_commit(self)

    async def fetch(self: Direct, statement: Any, parameters: Any) -> Any:
        nonlocal fail_next, failures
        rows = await real_fetch(self, statement, parameters)
        if fail_next:
            fail_next, failures = False, failures + 1
            raise ConnectionResetError("connection closed")
        return rows

    async def accept_failing_once(
        self: Submitter, task: Task, accepted: ProviderTask, *, look: bool
    ) -> None:
        nonlocal calls, fail_next
        calls += 1
        fail_next = calls == 1
        await original(self, task, accepted, look=look)

    monkeypatch.setattr(AsyncSession, "commit", commit)
    monkeypatch.setattr(Direct, "fetch", fetch)
    monkeypatch.setattr(Submitter, "_accept", accept_failing_once)
    # No callback, and no poll for a minute: only the acceptance can move the task on.
    config = SimulatorConfig(duration_seconds=30, faults=SimulatorFaults(callback_drop_rate=1.0))
    async with running_stack(database_url, config, poll_after_seconds=60) as stack:
        created = await stack.create()

        async def submit_done() -> bool:
            jobs = await stack.gateway.jobs(created["id"])
            return any(job.kind == JobKind.SUBMIT and job.state == "done" for job in jobs)

        await eventually(submit_done, bool, 20, what="the submit job done")
        row = await stack.gateway.task_row(created["id"])

        lines = await stack.gateway.events(created["id"])

    assert (calls, failures) == (2, 1)
    assert row.status == "pending"
    accepted = [line for line in lines if (line.kind, line.outcome) == ("submit", "accepted")]
    moved = [line for line in lines if (line.kind, line.to_status) == ("transition", "pending")]
    assert (len(accepted), len(moved)) == (1, 1)
