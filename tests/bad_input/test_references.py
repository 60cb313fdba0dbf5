"""Callers: bad `reference_images` on create, in the object and against what the service holds.

Each case answers its exact status, code and message naming `reference_images[i]`, and changes
nothing: every row of every table (tasks, task_references, jobs, uploads, ...) and every object
in the store is the same before and after, and the idempotency key sent with it is still free.
The gateway runs no workers, so without a job nothing can reach the provider; the last test
proves it with a real simulator and workers running."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from app.storage.store import ObjectStore
from tests.bad_input.conftest import CREATE, KEY, Seeded, error_of
from tests.conftest import auth
from tests.support.references import add_upload, succeeded_task, task_in_status
from tests.support.stack import running_stack
from tests.uploads.images import png

GOOD = {"url": "https://images.example.com/good.png"}  # reference_images[0] of every case
NO_UPLOAD = "no such upload (unknown, expired or deleted)"
ONE_SOURCE = "must hold exactly one of upload_id, task_id (with index) or url"
NOT_AN_OBJECT = (
    'must be an object: {"upload_id": ...}, {"task_id": ..., "index": ...} or {"url": ...}'
)


@dataclass
class Sources:
    """What the references of the cases point at."""

    upload: str  # alpha's, usable
    expired_upload: str  # alpha's, expired an hour ago
    deleted_upload: str  # alpha's, deleted with DELETE /v1/uploads/{id}
    theirs_upload: str  # beta's, usable
    succeeded: str  # alpha's, one archived image
    failed: str  # alpha's
    cancelled: str  # alpha's
    queued: str  # alpha's (the seeded task)
    theirs_succeeded: str  # beta's, one archived image


@pytest.fixture
async def sources(seeded: Seeded) -> Sources:
    gateway = seeded.gateway
    upload, _ = await add_upload(gateway, "alpha")
    expired, _ = await add_upload(gateway, "alpha", expires_in=timedelta(hours=-1))
    made = await seeded.client.post("/v1/uploads", content=png((4, 4)), headers=auth())
    assert made.status_code == 201, made.text
    deleted = made.json()["id"]
    gone = await seeded.client.delete(f"/v1/uploads/{deleted}", headers=auth())
    assert gone.status_code == 204, gone.text
    theirs_upload, _ = await add_upload(gateway, "beta")
    succeeded, _ = await succeeded_task(gateway, "alpha")
    theirs_succeeded, _ = await succeeded_task(gateway, "beta")
    failed = await task_in_status(
        gateway, "failed", error_code="archive_failed", error_message="gone"
    )
    cancelled = await task_in_status(gateway, "cancelled")
    return Sources(
        upload,
        expired,
        deleted,
        theirs_upload,
        succeeded,
        failed,
        cancelled,
        seeded.mine["id"],
        theirs_succeeded,
    )


Case = Callable[[Sources], tuple[dict[str, Any], str]]  # -> (body fields, the message)
TASK = "00000000-0000-4000-8000-000000000000"  # a well-formed task id nobody has


def refs(*references: Any) -> dict[str, Any]:
    return {"reference_images": [GOOD, *references]}


CASES: list[tuple[str, Case]] = [
    ("17 references", lambda s: (
        {"reference_images": [GOOD] * 17},
        "reference_images: List should have at most 16 items after validation, not 17",
    )),
    ("17 in all with image_urls", lambda s: (
        {"image_urls": [GOOD["url"]] * 9, "reference_images": [{"upload_id": s.upload}] * 8},
        "reference_images: image_urls and reference_images hold at most 16 images in all, "
        "got 9 + 8",
    )),
    ("upload of another caller", lambda s: (
        refs({"upload_id": s.theirs_upload}), f"reference_images[1]: {NO_UPLOAD}",
    )),
    ("expired upload", lambda s: (
        refs({"upload_id": s.expired_upload}), f"reference_images[1]: {NO_UPLOAD}",
    )),
    ("deleted upload", lambda s: (
        refs({"upload_id": s.deleted_upload}), f"reference_images[1]: {NO_UPLOAD}",
    )),
    ("unknown upload", lambda s: (
        refs({"upload_id": "upl_Qm9uZXMgb2YgdGhlIGRlYWQ"}), f"reference_images[1]: {NO_UPLOAD}",
    )),
    ("task of another caller", lambda s: (
        refs({"task_id": s.theirs_succeeded, "index": 0}), "reference_images[1]: no such task",
    )),
    ("unknown task", lambda s: (
        refs({"task_id": TASK, "index": 0}), "reference_images[1]: no such task",
    )),
    ("failed task", lambda s: (
        refs({"task_id": s.failed, "index": 0}),
        f"reference_images[1]: task {s.failed} has not succeeded (status failed)",
    )),
    ("cancelled task", lambda s: (
        refs({"task_id": s.cancelled, "index": 0}),
        f"reference_images[1]: task {s.cancelled} has not succeeded (status cancelled)",
    )),
    ("queued task", lambda s: (
        refs({"task_id": s.queued, "index": 0}),
        f"reference_images[1]: task {s.queued} has not succeeded (status queued)",
    )),
    ("index 1 of a one-image task", lambda s: (
        refs({"task_id": s.succeeded, "index": 1}),
        f"reference_images[1]: task {s.succeeded} has no image at index 1; it has 1",
    )),
    ("a good and two bad", lambda s: (
        refs({"upload_id": s.upload}, {"upload_id": s.expired_upload},
             {"task_id": s.failed, "index": 0}),
        f"reference_images[2]: {NO_UPLOAD}; "
        f"reference_images[3]: task {s.failed} has not succeeded (status failed)",
    )),
    ("malformed upload id", lambda s: (
        refs({"upload_id": "upload-1"}),
        "reference_images[1].upload_id: must be an upload id "
        "(upl_ and up to 36 letters, digits, _ or -)",
    )),
    ("upload id of 41 characters", lambda s: (
        refs({"upload_id": "upl_" + "a" * 37}),
        "reference_images[1].upload_id: must be an upload id "
        "(upl_ and up to 36 letters, digits, _ or -)",
    )),
    ("upload id a number", lambda s: (
        refs({"upload_id": 7}), "reference_images[1].upload_id: Input should be a valid string",
    )),
    ("malformed task id", lambda s: (
        refs({"task_id": "task-1", "index": 0}),
        "reference_images[1].task_id: must be a task id (a UUID in lower case)",
    )),
    ("task id in upper case", lambda s: (
        refs({"task_id": s.succeeded.upper(), "index": 0}),
        "reference_images[1].task_id: must be a task id (a UUID in lower case)",
    )),
    ("negative index", lambda s: (
        refs({"task_id": s.succeeded, "index": -1}),
        "reference_images[1].index: Input should be greater than or equal to 0",
    )),
    ("index a string", lambda s: (
        refs({"task_id": s.succeeded, "index": "0"}),
        "reference_images[1].index: Input should be a valid integer",
    )),
    ("index true", lambda s: (
        refs({"task_id": s.succeeded, "index": True}),
        "reference_images[1].index: Input should be a valid integer",
    )),
    ("index 2**31", lambda s: (
        refs({"task_id": s.succeeded, "index": 2**31}),
        "reference_images[1].index: Input should be less than or equal to 2147483647",
    )),
    ("task without index", lambda s: (
        refs({"task_id": s.succeeded}),
        "reference_images[1]: task_id needs index (0 for the first image)",
    )),
    ("index without task", lambda s: (
        refs({"upload_id": s.upload, "index": 0}),
        "reference_images[1]: index goes with task_id only",
    )),
    ("two sources", lambda s: (
        refs({"upload_id": s.upload, "url": GOOD["url"]}),
        f"reference_images[1]: {ONE_SOURCE}, got upload_id and url",
    )),
    ("three sources", lambda s: (
        refs({"upload_id": s.upload, "task_id": s.succeeded, "index": 0, "url": GOOD["url"]}),
        f"reference_images[1]: {ONE_SOURCE}, got upload_id, task_id and url",
    )),
    ("no source", lambda s: (
        {"reference_images": [{}]}, f"reference_images[0]: {ONE_SOURCE}, got none",
    )),
    ("null source", lambda s: (
        refs({"url": None}), f"reference_images[1]: {ONE_SOURCE}, got none",
    )),
    ("unknown key", lambda s: (
        refs({"upload_id": s.upload, "name": "cat.png"}),
        "reference_images[1].name: Extra inputs are not permitted",
    )),
    ("source named by a key", lambda s: (
        refs({"source": "upload", "upload_id": s.upload}),
        "reference_images[1].source: Extra inputs are not permitted",
    )),
    ("a string, not an object", lambda s: (
        refs(s.upload), f"reference_images[1]: {NOT_AN_OBJECT}",
    )),
    ("null, not an object", lambda s: (refs(None), f"reference_images[1]: {NOT_AN_OBJECT}")),
    ("not a list", lambda s: (
        {"reference_images": {"upload_id": s.upload}},
        "reference_images: Input should be a valid list",
    )),
    ("url ftp", lambda s: (
        refs({"url": "ftp://images.example.com/a.png"}),
        "reference_images[1].url: must be an absolute http or https URL",
    )),
    ("url relative", lambda s: (
        refs({"url": "/a.png"}), "reference_images[1].url: must be an absolute http or https URL",
    )),
    ("url with a newline", lambda s: (
        refs({"url": "https://e.com/a\n.png"}),
        "reference_images[1].url: must not contain control characters",
    )),
    ("url of 2049 characters", lambda s: (
        refs({"url": "https://e.com/" + "a" * 2035}),
        "reference_images[1].url: must be at most 2048 characters",
    )),
    ("image_urls item ftp", lambda s: (
        {"image_urls": [GOOD["url"], "ftp://e.com/a.png"]},
        "image_urls[1]: must be an absolute http or https URL",
    )),
]  # fmt: skip


async def store_keys(seeded: Seeded) -> list[str]:
    store: ObjectStore = seeded.gateway.app.state.store
    return sorted(await store.list_keys())


@pytest.mark.parametrize(("case", "make"), CASES, ids=[case for case, _ in CASES])
async def test_a_bad_reference_is_refused_naming_it_and_changes_nothing(
    seeded: Seeded, sources: Sources, case: str, make: Case
) -> None:
    fields, message = make(sources)
    before, objects = await seeded.snapshot(), await store_keys(seeded)
    key = f"bad-reference-{case.replace(' ', '-')}"

    response = await seeded.client.post(
        CREATE, json={"prompt": "p"} | fields, headers=auth() | {"Idempotency-Key": key}
    )

    assert response.status_code == 422, response.text
    assert error_of(response) == {"code": "validation_error", "message": message}
    assert await seeded.snapshot() == before
    assert await store_keys(seeded) == objects
    await seeded.key_still_works(key)


async def test_the_seeded_key_with_references_added_is_reused_not_resolved(
    seeded: Seeded, sources: Sources
) -> None:
    # The key's task exists: the body differs, so it is refused as such, whatever it refers to.
    before = await seeded.snapshot()
    body = {"prompt": "p", "reference_images": [{"upload_id": sources.expired_upload}]}

    response = await seeded.client.post(
        CREATE, json=body, headers=auth() | {"Idempotency-Key": KEY}
    )

    assert response.status_code == 422
    assert error_of(response)["code"] == "idempotency_key_reused"
    assert await seeded.snapshot() == before


async def test_refused_references_never_reach_the_provider(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        gateway = stack.gateway
        theirs, _ = await add_upload(gateway, "beta")
        failed = await task_in_status(gateway, "failed", error_code="x", error_message="y")
        refused: list[dict[str, Any]] = [
            {"reference_images": [{"upload_id": theirs}]},
            {"reference_images": [{"task_id": failed, "index": 0}]},
            {"image_urls": [GOOD["url"]] * 16, "reference_images": [GOOD]},
        ]
        answers = [
            await gateway.client.post(CREATE, json={"prompt": "refused"} | body, headers=auth())
            for body in refused
        ]
        accepted = await stack.create({"prompt": "accepted"})
        await stack.wait_for(accepted["id"], lambda task: task["provider_task_id"] is not None)

        assert [answer.status_code for answer in answers] == [422, 422, 422]
        upstream = await stack.sim_tasks()
        assert [task["request"]["prompt"] for task in upstream] == ["accepted"]
