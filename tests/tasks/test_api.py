"""Create, read and list tasks; API keys; callers scoped to their own tasks; idempotency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.core.config import Settings
from app.tasks.models import Task
from app.workers.models import Job, JobKind
from tests.conftest import ALPHA_KEY, BETA_KEY, auth, settings_values
from tests.support.gateway import Gateway, running_gateway

URL = "/v1/images/generations"


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(Settings(**settings_values(database_url))) as gateway:
        yield gateway


async def test_create_answers_202_with_a_queued_task_and_location(gateway: Gateway) -> None:
    response = await gateway.client.post(
        URL,
        json={"prompt": "a red fox", "size": "3:2", "metadata": {"order": 7}},
        headers=auth(),
    )

    assert response.status_code == 202
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["status"] == "queued"
    assert task["progress"] == 0
    assert task["model"] == "gpt-image-1.5"
    assert task["size"] == "3:2"
    assert task["quality"] == "high"
    assert task["image_urls"] == []
    assert task["metadata"] == {"order": 7}
    assert task["provider_task_id"] is None
    assert task["images"] == []
    assert task["error"] is None
    assert task["completed_at"] is None
    row = await gateway.task_row(task["id"])
    assert row.caller == "alpha"
    jobs = await gateway.jobs(task["id"])
    assert [(job.kind, job.state) for job in jobs] == [(JobKind.SUBMIT, "queued")]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "p"},
        {
            "prompt": "a fox, \u00e9t\u00e9 \u2603",
            "size": "2:3",
            "quality": "low",
            "image_urls": ["https://example.com/a.png", "https://example.com/b.png"],
            "metadata": {"order": 7, "tags": ["x", "y"], "nested": {"k": None}},
            "notify_url": "https://example.com/hook",
        },
    ],
    ids=["minimal", "every field"],
)
async def test_get_and_a_replay_return_the_same_task(
    gateway: Gateway, body: dict[str, object]
) -> None:
    # The create's answer is made from what it wrote, the others from the rows read back.
    headers = auth() | {"Idempotency-Key": "same-task"}
    created = await gateway.client.post(URL, json=body, headers=headers)

    response = await gateway.client.get(f"/v1/tasks/{created.json()['id']}", headers=auth())
    replayed = await gateway.client.post(URL, json=body, headers=headers)

    assert (created.status_code, response.status_code, replayed.status_code) == (202, 200, 200)
    assert response.json() == created.json()
    assert replayed.json() == created.json()
    assert created.headers["content-type"] == replayed.headers["content-type"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"Authorization": f"Basic {ALPHA_KEY}"},
        {"Authorization": "Bearer "},
        {"Authorization": ALPHA_KEY},
    ],
    ids=["missing", "wrong", "basic scheme", "empty bearer", "no scheme"],
)
async def test_every_route_needs_a_valid_key(gateway: Gateway, headers: dict[str, str]) -> None:
    for method, path in [("POST", URL), ("GET", "/v1/tasks"), ("GET", "/v1/tasks/some-id")]:
        response = await gateway.client.request(
            method, path, json={"prompt": "p"} if method == "POST" else None, headers=headers
        )
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == "unauthorized"
    assert await gateway.count(Task) == 0


async def test_callers_see_only_their_own_tasks(gateway: Gateway) -> None:
    alpha = (await gateway.client.post(URL, json={"prompt": "a"}, headers=auth())).json()
    beta = (await gateway.client.post(URL, json={"prompt": "b"}, headers=auth(BETA_KEY))).json()

    hidden = await gateway.client.get(f"/v1/tasks/{alpha['id']}", headers=auth(BETA_KEY))
    listed = await gateway.client.get("/v1/tasks", headers=auth(BETA_KEY))

    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "not_found"
    assert [task["id"] for task in listed.json()["data"]] == [beta["id"]]


@pytest.mark.parametrize(
    "task_id",
    ["00000000-0000-0000-0000-000000000000", "0" * 36, "%00", "x" * 300, "..%2F..%2Fetc"],
)
async def test_unknown_task_is_404(gateway: Gateway, task_id: str) -> None:
    response = await gateway.client.get(f"/v1/tasks/{task_id}", headers=auth())

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_list_pages_newest_first_and_is_stable_under_inserts(gateway: Gateway) -> None:
    ids = []
    for index in range(7):
        created = await gateway.client.post(URL, json={"prompt": f"p{index}"}, headers=auth())
        ids.append(created.json()["id"])
    seen: list[str] = []

    first = (await gateway.client.get("/v1/tasks?limit=3", headers=auth())).json()
    seen += [task["id"] for task in first["data"]]
    # New tasks arriving between pages must not shift or repeat what follows.
    for index in range(3):
        await gateway.client.post(URL, json={"prompt": f"late{index}"}, headers=auth())
    cursor = first["next_cursor"]
    while cursor:
        page = (
            await gateway.client.get(f"/v1/tasks?limit=3&cursor={cursor}", headers=auth())
        ).json()
        seen += [task["id"] for task in page["data"]]
        cursor = page["next_cursor"]

    assert seen == list(reversed(ids))


async def test_list_filters_by_status(gateway: Gateway) -> None:
    await gateway.client.post(URL, json={"prompt": "p"}, headers=auth())

    queued = (await gateway.client.get("/v1/tasks?status=queued", headers=auth())).json()
    failed = (await gateway.client.get("/v1/tasks?status=failed", headers=auth())).json()

    assert len(queued["data"]) == 1
    assert failed == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("cursor=garbage!!", "cursor"),
        ("cursor=" + "A" * 600, "cursor"),
        ("cursor=WyJub3QtYS1kYXRlIiwieCJd", "cursor"),
        # a well-formed cursor whose id carries a NUL: refused before it reaches the database
        ("cursor=WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwiXHUwMDAwIl0", "cursor"),
    ],
)
async def test_bad_list_parameters_are_refused(gateway: Gateway, query: str, field: str) -> None:
    response = await gateway.client.get(f"/v1/tasks?{query}", headers=auth())

    assert response.status_code == 422
    assert field in response.json()["error"]["message"]


async def test_same_key_and_body_returns_the_same_task(gateway: Gateway) -> None:
    headers = auth() | {"Idempotency-Key": "order-42"}
    body = {"prompt": "a cat", "quality": "low"}

    first = await gateway.client.post(URL, json=body, headers=headers)
    # The same request with defaults spelled out asks for the same thing.
    second = await gateway.client.post(URL, json=body | {"size": "1024x1024"}, headers=headers)

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert await gateway.count(Task) == 1
    assert await gateway.count(Job) == 1


async def test_same_key_with_another_body_is_refused(gateway: Gateway) -> None:
    headers = auth() | {"Idempotency-Key": "order-43"}
    await gateway.client.post(URL, json={"prompt": "a cat"}, headers=headers)

    response = await gateway.client.post(URL, json={"prompt": "a dog"}, headers=headers)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert await gateway.count(Task) == 1


async def test_the_same_key_of_two_callers_makes_two_tasks(gateway: Gateway) -> None:
    body = {"prompt": "a cat"}
    first = await gateway.client.post(URL, json=body, headers=auth() | {"Idempotency-Key": "k1"})
    second = await gateway.client.post(
        URL, json=body, headers=auth(BETA_KEY) | {"Idempotency-Key": "k1"}
    )

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]


@pytest.mark.postgres
async def test_concurrent_requests_with_one_key_make_one_task(pg_database_url: str) -> None:
    settings = Settings(**settings_values(pg_database_url))
    async with running_gateway(settings) as gateway:
        headers = auth() | {"Idempotency-Key": "burst-1"}

        responses = await asyncio.gather(
            *(gateway.client.post(URL, json={"prompt": "p"}, headers=headers) for _ in range(20))
        )

        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] * 19 + [202]
        assert len({response.json()["id"] for response in responses}) == 1
        assert await gateway.count(Task) == 1
        assert await gateway.count(Job, Job.kind == JobKind.SUBMIT) == 1
