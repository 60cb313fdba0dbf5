"""The submission delivers reference images: URLs in position order, signed `/inputs/` URLs or the
provider's Files API copies, the same on every retry; refusals fail the task, outages retry."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from app.core.clock import utcnow
from app.core.config import Settings
from app.core.input_tokens import input_expiry, input_key, input_url
from app.provider.simulator.app import Simulator
from app.provider.simulator.config import SimulatorConfig, SimulatorFaults
from app.runtime import SIMULATOR_MOUNT, provider_files_origin
from app.storage.store import ObjectStore, StoreError
from app.tasks import event_repository, service
from app.tasks.models import SubmitState
from app.tasks.provider_hold import CREATE, ProviderHold
from app.tasks.reference_delivery import PROVIDER_FILE_REUSE
from app.tasks.references import TaskReference
from app.tasks.schemas import CreateTaskRequest
from app.tasks.submission import Submitter
from app.workers.models import Job, JobKind
from app.workers.outcomes import Done, RetryAt
from tests.conftest import CALLBACK_SECRET, SIMULATOR_KEY, auth, settings_values
from tests.support.files_api import FakeFilesApi, running_files_api
from tests.support.gateway import Gateway, running_gateway
from tests.support.reference_rows import (
    Made,
    StoredReference,
    UrlReference,
    image_bytes,
    make_task_with_references,
    references_of,
)
from tests.support.servers import serve_app
from tests.support.stack import Stack, running_stack
from tests.support.waiting import eventually

KEY = input_key(CALLBACK_SECRET.encode())
PNG = image_bytes("image/png", shade=1)
JPEG = image_bytes("image/jpeg", shade=2)
WEBP = image_bytes("image/webp", shade=3)
GIVEN = "https://images.example.com/given.png"
LINKED = "https://images.example.com/linked.webp"


def not_fetching(duration_seconds: float = 0.5) -> SimulatorConfig:
    """A simulator that does not download the references: GIVEN and LINKED lead nowhere, and
    these tests are about what the gateway sends (tests/e2e/test_reference_images.py has the
    simulator download every reference)."""
    return SimulatorConfig(duration_seconds=duration_seconds, fetch_references=False)


def store_of(gateway: Gateway) -> ObjectStore:
    store: ObjectStore = gateway.app.state.store
    return store


def accepted(task: dict[str, Any]) -> bool:
    return task["provider_task_id"] is not None


async def four_references(gateway: Gateway, **task_fields: Any) -> Made:
    """image_urls [GIVEN], then reference_images [upload PNG, url LINKED, task JPEG]."""
    return await make_task_with_references(
        gateway.sessions,
        store_of(gateway),
        [StoredReference(PNG), UrlReference(LINKED), StoredReference(JPEG, "image/jpeg", "task")],
        image_urls=[GIVEN],
        **task_fields,
    )


async def timeline_of(gateway: Gateway, task_id: str) -> list[tuple[str, str | None, str | None]]:
    async with gateway.sessions() as session:
        lines = await event_repository.timeline(session, task_id)
    return [(line.kind, line.outcome, line.message) for line in lines]


async def submit_attempts(stack: Stack, task_id: str) -> int:
    jobs = await stack.gateway.jobs(task_id)
    return max(job.attempts for job in jobs if job.kind == JobKind.SUBMIT)


# signed-url


async def test_signed_urls_go_upstream_in_position_order_and_serve_the_bytes(
    database_url: str,
) -> None:
    # The task stays unfinished upstream while the test reads its /inputs/ URLs.
    async with running_stack(database_url, not_fetching(duration_seconds=60)) as stack:
        made = await four_references(stack.gateway)

        await stack.wait_for(made.task.id, accepted)

        [upstream] = await stack.sim_tasks()
        expires = input_expiry(made.task.created_at)
        base = stack.gateway_url
        assert upstream["request"]["image_urls"] == [
            GIVEN,
            input_url(base, KEY, made.task.id, 1, expires, "png"),
            LINKED,
            input_url(base, KEY, made.task.id, 3, expires, "jpg"),
        ]
        async with httpx.AsyncClient() as client:
            png = await client.get(upstream["request"]["image_urls"][1])
            jpeg = await client.get(upstream["request"]["image_urls"][3])
            head = await client.head(upstream["request"]["image_urls"][3])
            listing = await client.get(f"{base}/inputs/")
        assert (head.status_code, head.headers["content-length"]) == (200, str(len(JPEG)))
        assert (listing.status_code, listing.json()["error"]["code"]) == (404, "not_found")
        assert (png.status_code, png.content, png.headers["content-type"]) == (
            200,
            PNG,
            "image/png",
        )
        assert (jpeg.status_code, jpeg.content) == (200, JPEG)


async def test_a_retried_submission_sends_the_same_signed_urls(sqlite_database_url: str) -> None:
    config = not_fetching()
    config.faults = SimulatorFaults(down=True)
    async with running_stack(sqlite_database_url, config) as stack:
        made = await four_references(stack.gateway)
        await eventually(lambda: submit_attempts(stack, made.task.id), lambda n: n >= 2)
        await stack.set_faults(down=False)

        await stack.wait_for(made.task.id, accepted)

        [upstream] = await stack.sim_tasks()
        expires = input_expiry(made.task.created_at)
        assert upstream["request"]["image_urls"][1] == input_url(
            stack.gateway_url, KEY, made.task.id, 1, expires, "png"
        )
        row = await stack.gateway.task_row(made.task.id)
        assert row.submit_attempts >= 2


@pytest.mark.parametrize("delivery", ["signed-url", "provider-files"])
async def test_a_reference_missing_from_the_store_fails_the_task_clearly(
    sqlite_database_url: str, delivery: str
) -> None:
    async with (
        running_files_api() as files,
        running_stack(
            sqlite_database_url,
            not_fetching(),
            reference_delivery=delivery,
            provider_files_base_url=files.base_url,
        ) as stack,
    ):
        made = await make_task_with_references(
            stack.gateway.sessions,
            store_of(stack.gateway),
            [StoredReference(PNG), StoredReference(JPEG, "image/jpeg", stored=False)],
        )

        task = await stack.wait_for(made.task.id, lambda t: t["status"] == "failed")

        assert task["error"] == {
            "code": "submission_rejected",
            "message": "reference_images[1] is missing from the object store",
        }
        assert await stack.sim_tasks() == []
        row = await stack.gateway.task_row(made.task.id)
        assert (row.submit_state, row.submit_attempts) == (SubmitState.REJECTED, 0)
        assert ("submit", "rejected", task["error"]["message"]) in await timeline_of(
            stack.gateway, made.task.id
        )


async def test_a_task_without_reference_rows_sends_its_image_urls(sqlite_database_url: str) -> None:
    # Tasks made before reference rows existed (migration 0007) keep their image_urls.
    async with running_stack(sqlite_database_url, not_fetching()) as stack:
        async with stack.gateway.sessions() as session:
            task, _ = await service.create_task(
                session,
                caller="alpha",
                request=CreateTaskRequest(prompt="p", image_urls=[GIVEN, LINKED]),
                idempotency_key=None,
                now=utcnow(),
            )
            await session.execute(delete(TaskReference).where(TaskReference.task_id == task.id))
            await session.commit()
        created = {"id": task.id}

        await stack.wait_for(created["id"], accepted)

        [upstream] = await stack.sim_tasks()
        assert upstream["request"]["image_urls"] == [GIVEN, LINKED]
        assert await references_of(stack.gateway.sessions, created["id"]) == []


# provider-files


@contextlib.asynccontextmanager
async def files_stack(database_url: str, **overrides: Any) -> AsyncIterator[tuple[Stack, Any]]:
    async with (
        running_files_api() as files,
        running_stack(
            database_url,
            not_fetching(),
            reference_delivery="provider-files",
            provider_files_base_url=files.base_url,
            **overrides,
        ) as stack,
    ):
        yield stack, files


async def test_provider_files_are_uploaded_streamed_and_their_urls_sent_in_order(
    database_url: str,
) -> None:
    async with files_stack(database_url) as (stack, files):
        made = await four_references(stack.gateway)

        await stack.wait_for(made.task.id, accepted)

        [upstream] = await stack.sim_tasks()
        first, second = files.uploads
        assert upstream["request"]["image_urls"] == [
            GIVEN,
            f"{files.base_url}/files/{first.file_id}.png",
            LINKED,
            f"{files.base_url}/files/{second.file_id}.jpg",
        ]
        assert (first.sha256, first.content_type, first.size) == (
            StoredReference(PNG).sha256,
            "image/png",
            len(PNG),
        )
        assert (second.sha256, second.content_type) == (
            StoredReference(JPEG).sha256,
            "image/jpeg",
        )
        assert first.file_name == first.part_file_name == f"{made.task.id}-1.png"
        assert first.authorization == f"Bearer {SIMULATOR_KEY}"
        assert first.transfer_encoding is None
        assert int(first.content_length or 0) > len(PNG)
        rows = await references_of(stack.gateway.sessions, made.task.id)
        recorded = [(r.position, r.provider_file_id, r.provider_file_url) for r in rows]
        assert recorded == [
            (0, None, None),
            (1, first.file_id, upstream["request"]["image_urls"][1]),
            (2, None, None),
            (3, second.file_id, upstream["request"]["image_urls"][3]),
        ]
        assert all(r.provider_file_uploaded_at is not None for r in rows if r.key is not None)


async def test_a_files_api_refusal_fails_the_task_naming_the_reference(
    database_url: str,
) -> None:
    async with files_stack(database_url) as (stack, files):
        files.always = (402, {"success": False, "code": 402, "msg": "file quota exhausted"})
        made = await four_references(stack.gateway)

        task = await stack.wait_for(made.task.id, lambda t: t["status"] == "failed")

        message = (
            "the provider's Files API refused reference_images[0] (HTTP 402): file quota exhausted"
        )
        assert task["error"] == {"code": "submission_rejected", "message": message}
        assert await stack.sim_tasks() == []
        assert (files.uploads, files.refused) == ([], 1)
        lines = await timeline_of(stack.gateway, made.task.id)
        assert ("submit", "rejected", message) in lines
        events = await stack.gateway.client.get(f"/v1/tasks/{made.task.id}/events", headers=auth())
        assert message in events.text


async def test_a_files_api_outage_is_retried_and_ends_in_one_create(
    database_url: str,
) -> None:
    async with files_stack(database_url) as (stack, files):
        files.always = (503, {"success": False, "code": 503, "msg": "maintenance"})
        made = await four_references(stack.gateway)
        await eventually(lambda: submit_attempts(stack, made.task.id), lambda n: n >= 2)
        row = await stack.gateway.task_row(made.task.id)
        assert (row.status, row.submit_state, row.submit_attempts) == ("queued", "retry", 0)
        lines = await timeline_of(stack.gateway, made.task.id)
        assert (
            "submit",
            "retry",
            "the provider's Files API is unavailable for reference_images[0]: HTTP 503: "
            "maintenance",
        ) in lines
        files.always = None

        await stack.wait_for(made.task.id, accepted)

        assert len(await stack.sim_tasks()) == 1
        assert len(files.uploads) == 2
        row = await stack.gateway.task_row(made.task.id)
        assert row.submit_attempts == 1


async def test_a_files_api_429_holds_every_replica_s_submissions(database_url: str) -> None:
    async with files_stack(database_url) as (stack, files):
        files.always = (429, {"success": False, "code": 429, "msg": "slow down"})
        started = utcnow()
        made = await four_references(stack.gateway)

        async def hold() -> ProviderHold | None:
            async with stack.gateway.sessions() as session:
                return await session.get(ProviderHold, CREATE, populate_existing=True)

        found = await eventually(hold, lambda row: row is not None)
        assert found is not None
        # No Retry-After: the configured wait (a minute), for uploads and creates alike.
        wait = stack.gateway.app.state.settings.provider_rate_limit_wait_seconds
        assert found.not_before >= started + wait
        assert "HTTP 429" in found.reason
        job = await eventually(
            lambda: submit_job(stack, made.task.id),
            lambda job: job.lease_owner is None and job.run_at >= started + wait,
        )
        assert job.attempts == 1  # one upload refused, then the job waits for the hold
        assert (files.refused, files.uploads, await stack.sim_tasks()) == (1, [], [])


async def submit_job(stack: Stack, task_id: str) -> Job:
    [job] = [job for job in await stack.gateway.jobs(task_id) if job.kind == JobKind.SUBMIT]
    return job


# The submit job run by hand: a crash between the recorded upload and the create.


@dataclass
class Bench:
    """A gateway without workers, its simulator and Files API on real HTTP, and the submitter."""

    gateway: Gateway
    simulator: httpx.AsyncClient
    files: FakeFilesApi
    submitter: Submitter

    async def job(self, task_id: str) -> Job:
        [job] = [job for job in await self.gateway.jobs(task_id) if job.kind == JobKind.SUBMIT]
        return job

    async def creates(self) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = (await self.simulator.get("/_sim/tasks")).json()
        return tasks


@pytest.fixture
async def bench(database_url: str) -> AsyncIterator[Bench]:
    config = SimulatorConfig(duration_seconds=60, faults=SimulatorFaults(callback_drop_rate=1.0))
    config.allow_private_callbacks = True
    simulator = Simulator(config)
    async with (
        serve_app(simulator.app) as simulator_url,
        running_files_api() as files,
        httpx.AsyncClient(base_url=simulator_url) as sim,
    ):
        values = settings_values(
            database_url,
            provider_url=simulator_url,
            reference_delivery="provider-files",
            provider_files_base_url=files.base_url,
        )
        async with running_gateway(Settings(**values)) as gateway:
            yield Bench(gateway, sim, files, Submitter(gateway.app.state.runtime.tasks))


class WorkerKilled(Exception):
    """Stands for a SIGKILL of the worker at the point where it is raised."""


async def test_a_worker_killed_after_the_upload_reuses_it_and_creates_once(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await make_task_with_references(
        bench.gateway.sessions, store_of(bench.gateway), [StoredReference(PNG)]
    )
    job = await bench.job(made.task.id)
    original = Submitter._mark_in_flight

    async def killed(*args: Any, **kwargs: Any) -> bool:
        raise WorkerKilled

    monkeypatch.setattr(Submitter, "_mark_in_flight", killed)
    with pytest.raises(WorkerKilled):
        await bench.submitter(job)

    [upload] = bench.files.uploads
    [row] = await references_of(bench.gateway.sessions, made.task.id)
    assert row.provider_file_id == upload.file_id
    task = await bench.gateway.task_row(made.task.id)
    assert (task.status, task.submit_state, task.submit_attempts) == ("queued", "none", 0)
    assert await bench.creates() == []

    monkeypatch.setattr(Submitter, "_mark_in_flight", original)
    await bench.submitter(job)

    assert len(bench.files.uploads) == 1
    [create] = await bench.creates()
    assert create["request"]["image_urls"] == [row.provider_file_url]
    task = await bench.gateway.task_row(made.task.id)
    assert (task.provider_task_id, task.submit_attempts) == (create["id"], 1)


@pytest.mark.parametrize(
    ("age", "uploads"),
    [
        (PROVIDER_FILE_REUSE - timedelta(hours=1), 0),
        (PROVIDER_FILE_REUSE + timedelta(hours=1), 1),
    ],
)
async def test_a_provider_file_is_reused_for_48_hours_then_uploaded_again(
    bench: Bench, age: timedelta, uploads: int
) -> None:
    made = await make_task_with_references(
        bench.gateway.sessions, store_of(bench.gateway), [StoredReference(WEBP, "image/webp")]
    )
    earlier = "https://files.example.com/earlier.webp"
    async with bench.gateway.sessions() as session:
        row = await session.get(TaskReference, (made.task.id, 0))
        assert row is not None
        row.provider_file_id = "file_earlier"
        row.provider_file_url = earlier
        row.provider_file_uploaded_at = utcnow() - age
        await session.commit()

    await bench.submitter(await bench.job(made.task.id))

    assert len(bench.files.uploads) == uploads
    [create] = await bench.creates()
    [row] = await references_of(bench.gateway.sessions, made.task.id)
    if uploads:
        assert row.provider_file_url == f"{bench.files.base_url}/files/file_0001.webp"
        assert create["request"]["image_urls"] == [row.provider_file_url]
    else:
        assert create["request"]["image_urls"] == [earlier]


async def test_an_upload_for_a_task_that_moved_on_is_not_recorded_nor_created(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await make_task_with_references(
        bench.gateway.sessions, store_of(bench.gateway), [StoredReference(PNG)]
    )
    job = await bench.job(made.task.id)
    files = bench.gateway.app.state.runtime.tasks.files
    upload = type(files).upload

    async def cancelled_meanwhile(*args: Any, **kwargs: Any) -> Any:
        uploaded = await upload(*args, **kwargs)
        async with bench.gateway.sessions() as session:
            row = await session.get(type(made.task), made.task.id)
            assert row is not None
            row.status = "cancelled"
            await session.commit()
        return uploaded

    monkeypatch.setattr(type(files), "upload", cancelled_meanwhile)
    await bench.submitter(job)

    [row] = await references_of(bench.gateway.sessions, made.task.id)
    assert (len(bench.files.uploads), row.provider_file_id) == (1, None)
    assert await bench.creates() == []


def test_the_files_api_of_the_built_in_simulator_is_its_mount() -> None:
    values = settings_values("sqlite+aiosqlite:///unused.db", public_base_url="http://gw.test")
    builtin = Settings(**(values | {"provider": "simulator"}))
    evolink = Settings(**(values | {"provider_files_base_url": "https://files.example.com/"}))

    assert provider_files_origin(builtin) == "http://gw.test" + SIMULATOR_MOUNT
    assert provider_files_origin(evolink) == "https://files.example.com"


async def test_a_store_outage_is_retried_without_upload_or_create(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await make_task_with_references(
        bench.gateway.sessions, store_of(bench.gateway), [StoredReference(PNG)]
    )

    async def down(self: ObjectStore, key: str) -> Any:
        raise StoreError("get 'x' on s3://b failed: connection refused")

    monkeypatch.setattr(ObjectStore, "open", down)
    outcome = await bench.submitter(await bench.job(made.task.id))

    assert isinstance(outcome, RetryAt)
    task = await bench.gateway.task_row(made.task.id)
    assert (task.status, task.submit_state, task.submit_attempts) == ("queued", "retry", 0)
    assert (bench.files.uploads, await bench.creates()) == ([], [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "0" * 64}, "reference_images[0] in the object store does not match its sha256"),
        ({"bytes": 7}, "reference_images[0] in the object store has {size} bytes, not 7"),
        ({"key": "../../etc/passwd"}, "reference_images[0]: invalid object key '../../etc/passwd'"),
        ({"key": None}, "reference_images[0] names no stored object"),
    ],
)
async def test_an_object_that_is_not_the_one_checked_fails_the_task(
    bench: Bench, change: dict[str, Any], message: str
) -> None:
    made = await make_task_with_references(
        bench.gateway.sessions, store_of(bench.gateway), [StoredReference(PNG)]
    )
    async with bench.gateway.sessions() as session:
        row = await session.get(TaskReference, (made.task.id, 0))
        assert row is not None
        for name, value in change.items():
            setattr(row, name, value)
        await session.commit()

    outcome = await bench.submitter(await bench.job(made.task.id))

    assert isinstance(outcome, Done)
    task = await bench.gateway.task_row(made.task.id)
    assert (task.status, task.error_code) == ("failed", "submission_rejected")
    assert task.error_message is not None
    assert task.error_message.startswith(message.format(size=len(PNG)))
    assert (bench.files.uploads, await bench.creates()) == ([], [])
