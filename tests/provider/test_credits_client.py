"""`EvolinkClient.get_credits`: the documented answer, odd shapes read tolerantly, failures."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import respx

from app.provider.credits import AccountCredits, ProviderCredits, parse_credits
from app.provider.evolink import EvolinkClient
from app.provider.parsing import ProviderBodyError
from app.provider.types import ProviderRejected, ProviderUnavailable

from .conftest import API_KEY, error_body

CREDITS_PATH = "/v1/credits"
DOCUMENTED = {
    "success": True,
    "message": "",
    "data": {
        "token": {
            "remaining_credits": 99416.4429,
            "unlimited_credits": False,
            "used_credits": 583.5571,
        },
        "user": {"remaining_credits": 1095.3996, "used_credits": 135.9048},
    },
}


async def test_the_documented_answer(upstream: respx.MockRouter, client: EvolinkClient) -> None:
    route = upstream.get(CREDITS_PATH).respond(200, json=DOCUMENTED)
    credits = await client.get_credits()
    assert credits == ProviderCredits(
        token=AccountCredits(99416.4429, 583.5571),
        user=AccountCredits(1095.3996, 135.9048),
        token_unlimited=False,
    )
    assert credits.lowest_limited() == 1095.3996
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.method == "GET"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (  # numbers as strings, unknown fields
            {
                "success": "true",
                "extra": [1],
                "data": {
                    "token": {"remaining_credits": " 12.5 ", "unlimited_credits": "false"},
                    "user": {"remaining_credits": "7", "used_credits": 3, "plan": "x"},
                },
            },
            ProviderCredits(AccountCredits(12.5, None), AccountCredits(7.0, 3.0), False),
        ),
        (  # no wrapper
            {"token": {"remaining_credits": 5}, "user": {"remaining_credits": 9}},
            ProviderCredits(AccountCredits(5.0, None), AccountCredits(9.0, None), False),
        ),
        (  # the key only
            {"data": {"token": {"remaining_credits": 4, "used_credits": 1}}},
            ProviderCredits(AccountCredits(4.0, 1.0), AccountCredits(None, None), False),
        ),
        (  # an unlimited key with garbage for its balance
            {"data": {"token": {"remaining_credits": "lots", "unlimited_credits": True}}},
            ProviderCredits(AccountCredits(None, None), AccountCredits(None, None), True),
        ),
        (  # non-finite and boolean numbers are unknown, a flag given as 1
            {
                "data": {
                    "token": {"remaining_credits": True, "unlimited_credits": 1},
                    "user": {"remaining_credits": "NaN", "used_credits": "inf"},
                }
            },
            ProviderCredits(AccountCredits(None, None), AccountCredits(None, None), True),
        ),
        (  # user not an object
            {"data": {"token": {"remaining_credits": 2}, "user": "n/a"}},
            ProviderCredits(AccountCredits(2.0, None), AccountCredits(None, None), False),
        ),
    ],
)
async def test_odd_shapes_are_read_tolerantly(
    upstream: respx.MockRouter,
    client: EvolinkClient,
    body: dict[str, Any],
    expected: ProviderCredits,
) -> None:
    upstream.get(CREDITS_PATH).respond(200, json=body)
    assert await client.get_credits() == expected


def test_the_lowest_limited_balance() -> None:
    both = ProviderCredits(AccountCredits(3.0, None), AccountCredits(8.0, None), False)
    assert both.lowest_limited() == 3.0
    unlimited = ProviderCredits(AccountCredits(3.0, None), AccountCredits(8.0, None), True)
    assert unlimited.lowest_limited() == 8.0
    nothing = ProviderCredits(AccountCredits(None, None), AccountCredits(None, None), True)
    assert nothing.lowest_limited() is None


@pytest.mark.parametrize(
    "body",
    [
        [],
        "credits",
        {},
        {"success": False, "message": "key disabled"},
        {"data": {"token": {"remaining_credits": "?"}, "user": {}}},
        {"data": None, "token": None},
    ],
)
def test_bodies_without_a_balance_are_errors(body: Any) -> None:
    with pytest.raises(ProviderBodyError):
        parse_credits(body)


async def test_an_unreadable_answer_is_unavailable(
    upstream: respx.MockRouter, client: EvolinkClient
) -> None:
    upstream.get(CREDITS_PATH).respond(200, text="<html>maintenance</html>")
    with pytest.raises(ProviderUnavailable, match="unreadable credits"):
        await client.get_credits()
    upstream.get(CREDITS_PATH).respond(200, json={"success": False, "message": "no"})
    with pytest.raises(ProviderUnavailable, match="success: false"):
        await client.get_credits()


async def test_a_wrong_key_is_rejected_without_a_log_line(
    upstream: respx.MockRouter, client: EvolinkClient, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.get(CREDITS_PATH).respond(
        401, json=error_body("unauthorized", "Invalid key", "authentication_error")
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderRejected) as raised:
        await client.get_credits()
    assert (raised.value.status_code, raised.value.code) == (401, "unauthorized")
    # httpx logs the request at INFO; nothing of this service's own (the poller logs a failing
    # streak once).
    assert [r for r in caplog.records if r.name.startswith("app.")] == []


async def test_server_errors_and_timeouts_are_unavailable(
    upstream: respx.MockRouter, client: EvolinkClient
) -> None:
    upstream.get(CREDITS_PATH).respond(503, json=error_body("internal_error", "down", "api_error"))
    with pytest.raises(ProviderUnavailable) as raised:
        await client.get_credits()
    assert raised.value.status_code == 503
    upstream.get(CREDITS_PATH).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(ProviderUnavailable, match="ReadTimeout"):
        await client.get_credits()
