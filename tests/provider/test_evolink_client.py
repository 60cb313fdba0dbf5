"""What `EvolinkClient` sends upstream and how it reads the provider's successful answers."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import respx

from app.provider.evolink import EvolinkClient
from app.provider.types import CreateTaskRequest, ProviderRejected, ProviderStatus
from tests.provider.conftest import (
    API_KEY,
    CREATE_PATH,
    QUERY_PATH,
    TASK_ID,
    task_body,
    text_to_image,
)

REFERENCES = ("https://images.example.com/a.png", "https://images.example.com/b.webp")
CALLBACK = "https://gateway.example.com/callbacks/evolink/abc/token"


# --- create -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(
            text_to_image(),
            {
                "model": "gpt-image-1.5",
                "prompt": "a lighthouse at dusk",
                "size": "1:1",
                "quality": "low",
                "n": 1,
            },
            id="text-to-image-omits-image_urls-and-callback_url",
        ),
        pytest.param(
            text_to_image(image_urls=REFERENCES, size="1536x1024", quality="high"),
            {
                "model": "gpt-image-1.5",
                "prompt": "a lighthouse at dusk",
                "size": "1536x1024",
                "quality": "high",
                "n": 1,
                "image_urls": list(REFERENCES),
            },
            id="image-to-image-sends-image_urls",
        ),
        pytest.param(
            text_to_image(callback_url=CALLBACK),
            {
                "model": "gpt-image-1.5",
                "prompt": "a lighthouse at dusk",
                "size": "1:1",
                "quality": "low",
                "n": 1,
                "callback_url": CALLBACK,
            },
            id="callback_url-sent-when-given",
        ),
    ],
)
async def test_create_posts_the_exact_json_body_with_bearer_auth(
    upstream: respx.MockRouter,
    client: EvolinkClient,
    request_: CreateTaskRequest,
    expected: dict[str, Any],
) -> None:
    route = upstream.post(CREATE_PATH).respond(200, json=task_body())

    await client.create_task(request_)

    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.method == "POST"
    assert sent.url == "https://api.evolink.test/v1/images/generations"
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.content) == expected


async def test_create_parses_the_documented_response_and_ignores_unknown_fields(
    upstream: respx.MockRouter, client: EvolinkClient
) -> None:
    body = task_body(brand_new_field={"nested": [1, 2]}, another="x")
    upstream.post(CREATE_PATH).respond(200, json=body)

    task = await client.create_task(text_to_image())

    assert task.id == TASK_ID
    assert task.status is ProviderStatus.PENDING
    assert task.raw_status == "pending"
    assert task.progress == 0
    assert task.results == ()
    assert task.error is None
    assert task.raw == body


# --- query --------------------------------------------------------------------------------


async def test_get_task_queries_the_task_path_with_bearer_auth(
    upstream: respx.MockRouter, client: EvolinkClient
) -> None:
    route = upstream.get(QUERY_PATH).respond(200, json=task_body(status="processing"))

    task = await client.get_task(TASK_ID)

    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.method == "GET"
    assert sent.url == f"https://api.evolink.test/v1/tasks/{TASK_ID}"
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert task.status is ProviderStatus.PROCESSING


async def test_get_task_reads_a_completed_task_with_its_results(
    upstream: respx.MockRouter, client: EvolinkClient
) -> None:
    url = "https://tempfile.example-cdn.com/s/generated_image.png"
    body = task_body(status="completed", progress=100, results=[url], task_info={})
    upstream.get(QUERY_PATH).respond(200, json=body)

    task = await client.get_task(TASK_ID)

    assert task.status is ProviderStatus.COMPLETED
    assert task.progress == 100
    assert task.results == (url,)
    assert task.error is None


@pytest.mark.parametrize(
    ("code", "expected_code"),
    [
        pytest.param("content_policy_violation", "content_policy_violation", id="string-code"),
        pytest.param(500, "500", id="integer-code"),
    ],
)
async def test_get_task_reads_a_failed_task_with_its_error(
    upstream: respx.MockRouter, client: EvolinkClient, code: str | int, expected_code: str
) -> None:
    error = {"code": code, "message": "Content policy violation.", "type": "task_error"}
    upstream.get(QUERY_PATH).respond(200, json=task_body(status="failed", error=error))

    task = await client.get_task(TASK_ID)

    assert task.status is ProviderStatus.FAILED
    assert task.error is not None
    assert task.error.code == expected_code
    assert task.error.message == "Content policy violation."


@pytest.mark.parametrize("spelling", ["cancelled", "canceled"])
async def test_get_task_reads_both_spellings_of_cancelled(
    upstream: respx.MockRouter, client: EvolinkClient, spelling: str
) -> None:
    upstream.get(QUERY_PATH).respond(200, json=task_body(status=spelling))

    task = await client.get_task(TASK_ID)

    assert task.status is ProviderStatus.CANCELLED
    assert task.raw_status == spelling


async def test_get_task_maps_an_unknown_status_to_unknown_and_logs_a_warning(
    upstream: respx.MockRouter, client: EvolinkClient, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.get(QUERY_PATH).respond(200, json=task_body(status="paused_by_moderator"))

    with caplog.at_level(logging.WARNING, logger="app.provider.parsing"):
        task = await client.get_task(TASK_ID)

    assert task.status is ProviderStatus.UNKNOWN
    assert task.raw_status == "paused_by_moderator"
    assert not task.status.is_final
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "app.provider.parsing"
    assert warnings[0].__dict__["provider_status"] == "paused_by_moderator"


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        pytest.param("55", 55, id="string"),
        pytest.param(55.7, 55, id="float"),
        pytest.param(-3, 0, id="negative"),
        pytest.param(250, 100, id="above-100"),
        pytest.param(None, 0, id="null"),
        pytest.param("garbage", 0, id="garbage"),
    ],
)
async def test_get_task_clamps_progress_to_an_int_in_0_to_100(
    upstream: respx.MockRouter, client: EvolinkClient, progress: object, expected: int
) -> None:
    upstream.get(QUERY_PATH).respond(200, json=task_body(status="processing", progress=progress))

    task = await client.get_task(TASK_ID)

    assert task.progress == expected
    assert type(task.progress) is int


@pytest.mark.parametrize(
    "task_id",
    [
        pytest.param("", id="empty"),
        pytest.param("abc", id="no-prefix"),
        pytest.param("TASK-UNIFIED-1-abc", id="wrong-case-prefix"),
        pytest.param("x-task-unified-1-abc", id="prefix-not-at-start"),
        pytest.param("task-unified-1/../../images/generations", id="path-traversal"),
        pytest.param("task-unified-1-abc/", id="trailing-slash"),
    ],
)
async def test_get_task_refuses_a_malformed_id_without_any_request(
    upstream: respx.MockRouter, client: EvolinkClient, task_id: str
) -> None:
    anything = upstream.route()

    with pytest.raises(ProviderRejected) as caught:
        await client.get_task(task_id)

    assert not anything.called
    assert caught.value.code == "invalid_task_id"
    assert caught.value.status_code is None
    assert not caught.value.is_operator_problem


@pytest.mark.parametrize(
    "task_id",
    [
        pytest.param("task-unified-1-abc?status=completed", id="query-string"),
        pytest.param("task-unified-1-abc#other", id="fragment"),
    ],
)
async def test_get_task_never_queries_another_task_than_the_one_asked(
    upstream: respx.MockRouter, client: EvolinkClient, task_id: str
) -> None:
    """An id that escapes its path segment must be refused locally or sent whole."""
    anything = upstream.route().respond(200, json=task_body(id=task_id))

    try:
        await client.get_task(task_id)
    except ProviderRejected:
        assert not anything.called
        return
    sent: httpx.Request = anything.calls.last.request
    assert sent.url.path == f"/v1/tasks/{task_id}"
    assert sent.url.query == b""
