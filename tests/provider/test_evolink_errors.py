"""How `EvolinkClient` maps the provider's errors and transport failures to its three outcomes.

A create that may have reached the provider is `ProviderOutcomeUnknown` (resubmitting could
pay twice); a query is a safe GET, so every transient failure there is `ProviderUnavailable`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import respx

from app.provider.evolink import EvolinkClient
from app.provider.types import (
    ProviderCallError,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderTask,
    ProviderUnavailable,
)
from tests.provider.conftest import (
    API_KEY,
    CREATE_PATH,
    QUERY_PATH,
    TASK_ID,
    error_body,
    task_body,
    text_to_image,
)

Call = Callable[[EvolinkClient], Awaitable[ProviderTask]]

REJECTED_BODIES = [
    pytest.param(400, "invalid_request", "invalid_request", id="400"),
    pytest.param(401, "unauthorized", "unauthorized", id="401"),
    pytest.param(402, "insufficient_quota", "insufficient_quota", id="402"),
    pytest.param(403, "model_access_denied", "model_access_denied", id="403"),
    pytest.param(404, "resource_not_found", "resource_not_found", id="404"),
    pytest.param(413, "request_too_large", "request_too_large", id="413"),
    pytest.param(400, 400, "400", id="400-integer-code"),
    pytest.param(401, 401, "401", id="401-integer-code"),
    pytest.param(402, 402, "402", id="402-integer-code"),
    pytest.param(413, 413, "413", id="413-integer-code"),
]
CONNECT_FAILURES = [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout]
LOST_ANSWERS = [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteTimeout]


async def create(client: EvolinkClient) -> ProviderTask:
    return await client.create_task(text_to_image())


async def query(client: EvolinkClient) -> ProviderTask:
    return await client.get_task(TASK_ID)


# --- create -------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code", "expected_code"), REJECTED_BODIES)
async def test_create_maps_a_refusal_to_rejected_with_the_providers_code_and_message(
    upstream: respx.MockRouter,
    client: EvolinkClient,
    status: int,
    code: str | int,
    expected_code: str,
) -> None:
    upstream.post(CREATE_PATH).respond(status, json=error_body(code, f"refused with {status}"))

    with pytest.raises(ProviderRejected) as caught:
        await create(client)

    assert caught.value.status_code == status
    assert caught.value.code == expected_code
    assert caught.value.message == f"refused with {status}"


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413])
async def test_create_maps_a_non_json_refusal_to_rejected_with_the_body_as_message(
    upstream: respx.MockRouter, client: EvolinkClient, status: int
) -> None:
    upstream.post(CREATE_PATH).respond(status, text="<html>nginx says no</html>")

    with pytest.raises(ProviderRejected) as caught:
        await create(client)

    assert caught.value.status_code == status
    assert caught.value.code == ""
    assert caught.value.message == "<html>nginx says no</html>"


@pytest.mark.parametrize(
    ("status", "operator_problem"),
    [(400, False), (401, True), (402, True), (403, True), (404, False), (413, False)],
)
async def test_create_flags_and_logs_account_problems_at_error_level(
    upstream: respx.MockRouter,
    client: EvolinkClient,
    caplog: pytest.LogCaptureFixture,
    status: int,
    operator_problem: bool,
) -> None:
    upstream.post(CREATE_PATH).respond(status, json=error_body("some_code", "nope"))

    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderRejected) as caught:
        await create(client)

    assert caught.value.is_operator_problem is operator_problem
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    if operator_problem:
        assert len(errors) == 1
        assert errors[0].name == "app.provider.calls"
        assert errors[0].__dict__["http_status"] == status
        assert errors[0].__dict__["provider_code"] == "some_code"
    else:
        assert errors == []


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        pytest.param({"Retry-After": "7"}, 7.0, id="with-retry-after"),
        pytest.param({}, None, id="without-retry-after"),
    ],
)
async def test_create_maps_429_to_unavailable_with_retry_after(
    upstream: respx.MockRouter,
    client: EvolinkClient,
    headers: dict[str, str],
    retry_after: float | None,
) -> None:
    body = error_body("rate_limit_exceeded", "slow down", "rate_limit_error")
    upstream.post(CREATE_PATH).respond(429, json=body, headers=headers)

    with pytest.raises(ProviderUnavailable) as caught:
        await create(client)

    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.message == "slow down"
    assert caught.value.retry_after == retry_after


@pytest.mark.parametrize(
    "value", ["7.5", "0", "-5", "99999", "inf", "nan", "Wed, 21 Oct 2015 07:28:00 GMT", ""]
)
async def test_retry_after_is_none_or_a_finite_delay_within_an_hour(
    upstream: respx.MockRouter, client: EvolinkClient, value: str
) -> None:
    upstream.post(CREATE_PATH).respond(429, json={}, headers={"Retry-After": value})

    with pytest.raises(ProviderUnavailable) as caught:
        await create(client)

    retry_after = caught.value.retry_after
    assert retry_after is None or (math.isfinite(retry_after) and 0.0 <= retry_after <= 3600.0)


@pytest.mark.parametrize("status", [408, 500, 502, 503])
async def test_create_maps_transient_statuses_to_unavailable(
    upstream: respx.MockRouter, client: EvolinkClient, status: int
) -> None:
    body = error_body("internal_error", "try later", "api_error")
    upstream.post(CREATE_PATH).respond(status, json=body)

    with pytest.raises(ProviderUnavailable) as caught:
        await create(client)

    assert caught.value.status_code == status
    assert caught.value.code == "internal_error"
    assert caught.value.message == "try later"
    assert caught.value.retry_after is None


async def test_create_maps_504_to_outcome_unknown(
    upstream: respx.MockRouter, client: EvolinkClient
) -> None:
    upstream.post(CREATE_PATH).respond(504, text="gateway timeout")

    with pytest.raises(ProviderOutcomeUnknown) as caught:
        await create(client)

    assert caught.value.status_code == 504


@pytest.mark.parametrize("error", CONNECT_FAILURES)
async def test_create_maps_a_request_never_sent_to_unavailable(
    upstream: respx.MockRouter, client: EvolinkClient, error: type[httpx.HTTPError]
) -> None:
    upstream.post(CREATE_PATH).mock(side_effect=error)

    with pytest.raises(ProviderUnavailable) as caught:
        await create(client)

    assert caught.value.status_code is None
    assert caught.value.retry_after is None
    assert isinstance(caught.value.__cause__, error)


@pytest.mark.parametrize("error", LOST_ANSWERS)
async def test_create_maps_a_lost_answer_to_outcome_unknown(
    upstream: respx.MockRouter, client: EvolinkClient, error: type[httpx.HTTPError]
) -> None:
    upstream.post(CREATE_PATH).mock(side_effect=error)

    with pytest.raises(ProviderOutcomeUnknown) as caught:
        await create(client)

    assert caught.value.status_code is None
    assert isinstance(caught.value.__cause__, error)


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(httpx.Response(200, text="<html>ok</html>"), id="non-json"),
        pytest.param(httpx.Response(200, text=""), id="empty"),
        pytest.param(httpx.Response(200, json={"status": "pending"}), id="json-without-id"),
        pytest.param(httpx.Response(200, json=[task_body()]), id="json-list"),
        # an id that is no upstream id was recorded as accepted; the task then waited hours
        pytest.param(httpx.Response(200, json=task_body(id="../../admin")), id="id-not-upstream"),
        pytest.param(httpx.Response(200, json=task_body(id="task-unified-")), id="id-prefix-only"),
    ],
)
async def test_create_maps_an_unreadable_success_to_outcome_unknown(
    upstream: respx.MockRouter, client: EvolinkClient, response: httpx.Response
) -> None:
    upstream.post(CREATE_PATH).mock(return_value=response)

    with pytest.raises(ProviderOutcomeUnknown) as caught:
        await create(client)

    assert caught.value.status_code == 200


# --- query --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "invalid_task_id"), (401, "unauthorized"), (404, "resource_not_found")],
)
async def test_get_task_maps_a_refusal_to_rejected(
    upstream: respx.MockRouter, client: EvolinkClient, status: int, code: str
) -> None:
    upstream.get(QUERY_PATH).respond(status, json=error_body(code, "no such task"))

    with pytest.raises(ProviderRejected) as caught:
        await query(client)

    assert caught.value.status_code == status
    assert caught.value.code == code
    assert caught.value.message == "no such task"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_get_task_maps_transient_statuses_to_unavailable(
    upstream: respx.MockRouter, client: EvolinkClient, status: int
) -> None:
    upstream.get(QUERY_PATH).respond(status, json=error_body("internal_error", "busy"))

    with pytest.raises(ProviderUnavailable) as caught:
        await query(client)

    assert caught.value.status_code == status
    assert caught.value.code == "internal_error"


async def test_get_task_keeps_retry_after_of_a_429(
    upstream: respx.MockRouter, client: EvolinkClient
) -> None:
    upstream.get(QUERY_PATH).respond(429, json={}, headers={"Retry-After": "7"})

    with pytest.raises(ProviderUnavailable) as caught:
        await query(client)

    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize("error", CONNECT_FAILURES + LOST_ANSWERS)
async def test_get_task_maps_every_transport_error_to_unavailable(
    upstream: respx.MockRouter, client: EvolinkClient, error: type[httpx.HTTPError]
) -> None:
    upstream.get(QUERY_PATH).mock(side_effect=error)

    with pytest.raises(ProviderUnavailable) as caught:
        await query(client)

    assert caught.value.status_code is None
    assert isinstance(caught.value.__cause__, error)


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(httpx.Response(200, text="garbage"), id="non-json"),
        pytest.param(httpx.Response(200, json={"status": "completed"}), id="json-without-id"),
        pytest.param(httpx.Response(200, json="task-unified-1"), id="json-string"),
    ],
)
async def test_get_task_maps_an_unreadable_success_to_unavailable(
    upstream: respx.MockRouter, client: EvolinkClient, response: httpx.Response
) -> None:
    upstream.get(QUERY_PATH).mock(return_value=response)

    with pytest.raises(ProviderUnavailable):
        await query(client)


# --- secrets ------------------------------------------------------------------------------

SCENARIOS: list[Any] = [
    pytest.param(create, {"status_code": status}, id=f"create-{status}")
    for status in (400, 401, 402, 403, 404, 408, 413, 429, 500, 502, 503, 504)
]
SCENARIOS += [
    pytest.param(query, {"status_code": status}, id=f"query-{status}")
    for status in (400, 401, 404, 429, 500, 503)
]
SCENARIOS += [
    pytest.param(call, {"side_effect": error}, id=f"{call.__name__}-{error.__name__}")
    for call in (create, query)
    for error in CONNECT_FAILURES + LOST_ANSWERS
]
SCENARIOS += [
    pytest.param(call, {"status_code": 200, "text": "not json"}, id=f"{call.__name__}-garbage")
    for call in (create, query)
]


@pytest.mark.parametrize(("call", "mock"), SCENARIOS)
async def test_the_api_key_never_appears_in_an_error(
    upstream: respx.MockRouter,
    client: EvolinkClient,
    caplog: pytest.LogCaptureFixture,
    call: Call,
    mock: dict[str, Any],
) -> None:
    route = upstream.route()
    if "side_effect" in mock:
        route.mock(side_effect=mock["side_effect"])
    else:
        route.respond(**mock)

    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderCallError) as caught:
        await call(client)

    assert route.called
    assert API_KEY not in str(caught.value)
    assert API_KEY not in caught.value.message
    assert API_KEY not in repr(caught.value.args)
    assert API_KEY not in caplog.text
