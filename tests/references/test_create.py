"""Reference images at create: each source checked and saved as a row in request order, the task
object showing them with only their source's fields, and replays that never check them again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, update

from app.core.clock import utcnow
from app.core.config import Settings
from app.tasks.models import Task
from app.tasks.references import TaskReference
from app.uploads.models import Upload
from app.workers.models import Job
from tests.conftest import BETA_KEY, auth, settings_values
from tests.support.gateway import Gateway, running_gateway
from tests.support.references import (
    PNG,
    WEBP,
    Source,
    add_upload,
    reference_rows,
    succeeded_task,
)

CREATE = "/v1/images/generations"
URL_A, URL_B, URL_C = (f"https://images.example.com/{name}.png" for name in "abc")


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(Settings(**settings_values(database_url))) as gateway:
        yield gateway


async def create(
    gateway: Gateway, key: str | None = None, *, caller_key: str | None = None, **body: Any
) -> dict[str, Any]:
    headers = auth(caller_key) if caller_key else auth()
    if key is not None:
        headers["Idempotency-Key"] = key
    response = await gateway.client.post(CREATE, json={"prompt": "edit"} | body, headers=headers)
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    return task


def upload_out(upload_id: str, source: Source) -> dict[str, Any]:
    return {
        "source": "upload",
        "upload_id": upload_id,
        "content_type": source.content_type,
        "bytes": source.bytes,
        "sha256": source.sha256,
    }


def task_out(task_id: str, index: int, source: Source) -> dict[str, Any]:
    return {
        "source": "task",
        "task_id": task_id,
        "index": index,
        "content_type": source.content_type,
        "bytes": source.bytes,
        "sha256": source.sha256,
    }


def row(position: int, source: str, **values: Any) -> dict[str, Any]:
    """A task_references row as a plain dict (task_id left out), every column named."""
    return {
        "position": position,
        "source": source,
        "url": None,
        "upload_id": None,
        "source_task_id": None,
        "source_index": None,
        "key": None,
        "content_type": None,
        "bytes": None,
        "sha256": None,
        "provider_file_id": None,
        "provider_file_url": None,
        "provider_file_uploaded_at": None,
    } | values


def without_task_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{name: value for name, value in r.items() if name != "task_id"} for r in rows]


async def test_an_upload_reference_is_saved_with_what_was_checked_of_it(gateway: Gateway) -> None:
    upload_id, source = await add_upload(gateway, data=WEBP, content_type="image/webp")

    task = await create(gateway, reference_images=[{"upload_id": upload_id}])

    assert task["reference_images"] == [upload_out(upload_id, source)]
    assert task["image_urls"] == []
    assert without_task_id(await reference_rows(gateway, task["id"])) == [
        row(
            0,
            "upload",
            upload_id=upload_id,
            key=source.key,
            content_type="image/webp",
            bytes=len(WEBP),
            sha256=source.sha256,
        )
    ]


async def test_a_task_reference_names_the_archived_image(gateway: Gateway) -> None:
    source_id, [first, second] = await succeeded_task(gateway, images=(PNG, WEBP))

    task = await create(gateway, reference_images=[{"task_id": source_id, "index": 1}])

    assert task["reference_images"] == [task_out(source_id, 1, second)]
    assert first != second
    assert without_task_id(await reference_rows(gateway, task["id"])) == [
        row(
            0,
            "task",
            source_task_id=source_id,
            source_index=1,
            key=second.key,
            content_type="image/webp",
            bytes=second.bytes,
            sha256=second.sha256,
        )
    ]


async def test_a_url_reference_is_kept_as_given(gateway: Gateway) -> None:
    task = await create(gateway, reference_images=[{"url": URL_A}])

    assert task["reference_images"] == [{"source": "url", "url": URL_A}]
    assert task["image_urls"] == []
    assert without_task_id(await reference_rows(gateway, task["id"])) == [row(0, "url", url=URL_A)]


async def test_image_urls_come_first_then_references_in_the_order_given(gateway: Gateway) -> None:
    upload_id, upload = await add_upload(gateway)
    source_id, [image] = await succeeded_task(gateway)
    references = [
        {"task_id": source_id, "index": 0},
        {"url": URL_C},
        {"upload_id": upload_id},
        {"upload_id": upload_id},  # the same upload twice is two references
    ]

    task = await create(gateway, image_urls=[URL_A, URL_B], reference_images=references)

    expected = [
        {"source": "url", "url": URL_A},
        {"source": "url", "url": URL_B},
        task_out(source_id, 0, image),
        {"source": "url", "url": URL_C},
        upload_out(upload_id, upload),
        upload_out(upload_id, upload),
    ]
    assert task["reference_images"] == expected
    assert task["image_urls"] == [URL_A, URL_B]  # as the caller gave them
    rows = await reference_rows(gateway, task["id"])
    assert [(r["position"], r["source"]) for r in rows] == [
        (0, "url"),
        (1, "url"),
        (2, "task"),
        (3, "url"),
        (4, "upload"),
        (5, "upload"),
    ]
    assert [r["key"] for r in rows] == [None, None, image.key, None, upload.key, upload.key]
    got = await gateway.client.get(f"/v1/tasks/{task['id']}", headers=auth())
    listed = await gateway.client.get("/v1/tasks", headers=auth())
    assert got.json()["reference_images"] == expected
    [mine] = [t for t in listed.json()["data"] if t["id"] == task["id"]]
    assert mine["reference_images"] == expected


async def test_16_references_in_all_are_accepted(gateway: Gateway) -> None:
    upload_id, _ = await add_upload(gateway)
    references = [{"upload_id": upload_id}] * 6 + [{"url": URL_C}] * 6

    task = await create(gateway, image_urls=[URL_A] * 4, reference_images=references)

    assert len(task["reference_images"]) == 16
    assert [r["position"] for r in await reference_rows(gateway, task["id"])] == list(range(16))


async def test_fields_that_do_not_apply_are_absent_and_the_tasks_nulls_stay(
    gateway: Gateway,
) -> None:
    upload_id, _ = await add_upload(gateway)
    source_id, _ = await succeeded_task(gateway)

    task = await create(
        gateway,
        reference_images=[
            {"url": URL_A},
            {"upload_id": upload_id},
            {"task_id": source_id, "index": 0},
        ],
    )

    shown = [sorted(reference) for reference in task["reference_images"]]
    assert shown == [
        ["source", "url"],
        ["bytes", "content_type", "sha256", "source", "upload_id"],
        ["bytes", "content_type", "index", "sha256", "source", "task_id"],
    ]
    nulls = ("provider_task_id", "completed_at", "error", "notification", "notify_url")
    assert {name: task[name] for name in nulls} == dict.fromkeys(nulls)


async def test_a_task_without_references_shows_an_empty_list(gateway: Gateway) -> None:
    task = await create(gateway)

    assert task["reference_images"] == []
    assert await reference_rows(gateway, task["id"]) == []


async def test_a_task_made_before_references_were_rows_shows_its_image_urls(
    gateway: Gateway,
) -> None:
    task = await create(gateway, image_urls=[URL_A, URL_B])
    async with gateway.sessions() as session:  # as a task made before migration 0007
        await session.execute(delete(TaskReference).where(TaskReference.task_id == task["id"]))
        await session.commit()

    got = await gateway.client.get(f"/v1/tasks/{task['id']}", headers=auth())

    assert got.json()["reference_images"] == [
        {"source": "url", "url": URL_A},
        {"source": "url", "url": URL_B},
    ]


async def test_a_replay_is_not_checked_again_after_the_upload_expired(gateway: Gateway) -> None:
    upload_id, upload = await add_upload(gateway)
    body = {"prompt": "edit", "reference_images": [{"upload_id": upload_id}]}
    headers = auth() | {"Idempotency-Key": "replay-after-expiry"}
    first = await gateway.client.post(CREATE, json=body, headers=headers)
    async with gateway.sessions() as session:
        expired = utcnow() - timedelta(days=1)
        await session.execute(update(Upload).values(expires_at=expired))
        await session.commit()

    replay = await gateway.client.post(CREATE, json=body, headers=headers)
    another = await gateway.client.post(CREATE, json=body | {"prompt": "another"}, headers=headers)
    fresh = await gateway.client.post(CREATE, json=body, headers=auth())

    assert first.status_code == 202, first.text
    assert (replay.status_code, replay.json()) == (200, first.json())
    assert replay.json()["reference_images"] == [upload_out(upload_id, upload)]
    assert another.status_code == 422
    assert another.json()["error"]["code"] == "idempotency_key_reused"
    assert fresh.status_code == 422  # the same body without the key is a new create: checked
    assert fresh.json()["error"] == {
        "code": "validation_error",
        "message": "reference_images[0]: no such upload (unknown, expired or deleted)",
    }
    assert await gateway.count(Task) == 1
    assert await gateway.count(TaskReference) == 1
    assert await gateway.count(Job) == 1


async def test_a_replay_is_not_checked_again_after_the_upload_and_source_task_are_gone(
    gateway: Gateway,
) -> None:
    upload_id, _ = await add_upload(gateway)
    source_id, _ = await succeeded_task(gateway)
    body = {
        "prompt": "edit",
        "reference_images": [{"upload_id": upload_id}, {"task_id": source_id, "index": 0}],
    }
    headers = auth() | {"Idempotency-Key": "replay-after-deletion"}
    first = await gateway.client.post(CREATE, json=body, headers=headers)
    async with gateway.sessions() as session:
        await session.execute(delete(Upload))
        await session.execute(delete(Task).where(Task.id == source_id))
        await session.commit()

    replay = await gateway.client.post(CREATE, json=body, headers=headers)

    assert first.status_code == 202, first.text
    assert (replay.status_code, replay.json()) == (200, first.json())


async def test_an_upload_about_to_expire_is_refused_one_with_time_left_is_not(
    gateway: Gateway,
) -> None:
    soon, _ = await add_upload(gateway, expires_in=timedelta(seconds=20))
    later, _ = await add_upload(gateway, expires_in=timedelta(minutes=10))

    refused = await gateway.client.post(
        CREATE, json={"prompt": "p", "reference_images": [{"upload_id": soon}]}, headers=auth()
    )
    accepted = await create(gateway, reference_images=[{"upload_id": later}])

    assert refused.status_code == 422
    assert refused.json()["error"]["message"] == (
        "reference_images[0]: no such upload (unknown, expired or deleted)"
    )
    assert accepted["reference_images"][0]["upload_id"] == later


async def test_every_failing_reference_is_named(gateway: Gateway) -> None:
    upload_id, _ = await add_upload(gateway)
    source_id, _ = await succeeded_task(gateway)
    references = [
        {"upload_id": "upl_unknown"},
        {"upload_id": upload_id},
        {"task_id": source_id, "index": 3},
        {"url": URL_A},
        {"task_id": "00000000-0000-4000-8000-000000000000", "index": 0},
    ]

    response = await gateway.client.post(
        CREATE, json={"prompt": "p", "reference_images": references}, headers=auth()
    )

    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "reference_images[0]: no such upload (unknown, expired or deleted); "
        f"reference_images[2]: task {source_id} has no image at index 3; it has 1; "
        "reference_images[4]: no such task"
    )


async def test_beta_sees_the_same_refusal_for_alphas_upload_as_for_an_unknown_one(
    gateway: Gateway,
) -> None:
    upload_id, _ = await add_upload(gateway, "alpha")

    answers = [
        await gateway.client.post(
            CREATE,
            json={"prompt": "p", "reference_images": [{"upload_id": wanted}]},
            headers=auth(BETA_KEY),
        )
        for wanted in (upload_id, "upl_neverexisted")
    ]

    assert [a.status_code for a in answers] == [422, 422]
    assert answers[0].json() == answers[1].json()


async def test_a_page_of_tasks_reads_its_references_in_one_query(gateway: Gateway) -> None:
    upload_id, _ = await add_upload(gateway)
    engine = gateway.app.state.runtime.engine.sync_engine
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    async def listing_statements() -> list[str]:
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            response = await gateway.client.get("/v1/tasks?limit=100", headers=auth())
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert response.status_code == 200
        return [s for s in statements if "task_references" in s]

    await create(gateway, image_urls=[URL_A], reference_images=[{"upload_id": upload_id}])
    one = await listing_statements()
    for _ in range(5):
        await create(gateway, image_urls=[URL_B], reference_images=[{"url": URL_C}])
    six = await listing_statements()

    assert len(one) == len(six) == 1
