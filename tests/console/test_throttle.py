"""Failed console sign-ins are limited per client address and per process over a sliding window;
past the limit the form answers 429 with Retry-After without checking the key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.console.throttle import LoginThrottle
from tests.conftest import ALPHA_KEY
from tests.console.helpers import OPERATOR_KEY, login, running_console
from tests.support.gateway import Gateway


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, *, per_client: int = 3, overall: int = 5) -> LoginThrottle:
    return LoginThrottle(per_client=per_client, overall=overall, window_seconds=300, clock=clock)


def test_a_client_is_refused_once_it_reaches_the_limit_until_its_oldest_failure_expires() -> None:
    clock = Clock()
    limit = throttle(clock)
    for _ in range(2):
        limit.failed("10.0.0.1")
        clock.now += 10
    assert limit.retry_after("10.0.0.1") is None  # two of three

    limit.failed("10.0.0.1")  # at 1020

    assert limit.retry_after("10.0.0.1") == 280  # the first failure (1000) leaves at 1300
    assert limit.retry_after("10.0.0.2") is None  # another address is not concerned
    clock.now = 1299.5
    assert limit.retry_after("10.0.0.1") == 1  # rounded up, never 0
    clock.now = 1300
    assert limit.retry_after("10.0.0.1") is None  # one of the three left the window


def test_failures_of_every_client_together_reach_the_overall_limit() -> None:
    clock = Clock()
    limit = throttle(clock)
    for client in range(5):
        limit.failed(f"10.0.0.{client}")
        clock.now += 1

    assert limit.retry_after("10.0.9.9") == 295  # an address that never failed is refused too
    clock.now = 1300
    assert limit.retry_after("10.0.9.9") is None


def test_expired_failures_are_forgotten() -> None:
    clock = Clock()
    limit = throttle(clock, per_client=2)
    limit.failed("10.0.0.1")
    clock.now += 301
    limit.failed("10.0.0.1")

    assert limit.retry_after("10.0.0.1") is None  # the first one no longer counts
    clock.now += 301
    limit.retry_after("10.0.0.1")
    assert limit._clients == {}  # nothing is kept for addresses without recent failures


@pytest.fixture
async def gateway(sqlite_database_url: str) -> AsyncIterator[Gateway]:
    async with running_console(sqlite_database_url) as gateway:
        yield gateway


@pytest.fixture
def clock(gateway: Gateway) -> Clock:
    """The gateway's sign-in limit, 3 failures of an address in 5 minutes, on a test clock."""
    moved = Clock()
    gateway.app.state.console_throttle = throttle(moved, per_client=3, overall=100)
    return moved


async def test_wrong_keys_are_counted_and_then_refused_without_checking_the_key(
    gateway: Gateway, clock: Clock
) -> None:
    for _ in range(3):
        assert (await login(gateway.client, "wrong-key-0123456789abcdef")).status_code == 401
        clock.now += 20

    refused = await login(gateway.client, OPERATOR_KEY)  # the right key, not even checked

    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "240"  # first failure at 1000, now 1060
    assert "Too many failed sign-ins" in refused.text
    assert "the key was not checked" in refused.text
    assert "imagegen_console=" not in refused.headers.get("set-cookie", "")
    assert "default-src 'self'" in refused.headers["content-security-policy"]
    assert (await gateway.client.get("/console")).status_code == 303  # still signed out
    clock.now = 1300
    assert (await login(gateway.client, OPERATOR_KEY)).status_code == 303


async def test_a_caller_api_key_counts_as_a_failure(gateway: Gateway, clock: Clock) -> None:
    for _ in range(3):
        assert (await login(gateway.client, ALPHA_KEY)).status_code == 401

    assert (await login(gateway.client, OPERATOR_KEY)).status_code == 429


async def test_successful_sign_ins_and_expired_forms_are_not_counted(
    gateway: Gateway, clock: Clock
) -> None:
    for _ in range(5):
        assert (await login(gateway.client)).status_code == 303
    for _ in range(5):
        forged = await gateway.client.post(
            "/console/login", data={"key": "wrong-key-0123456789abcdef", "csrf": "made-up"}
        )
        assert forged.status_code == 403
    for _ in range(2):
        assert (await login(gateway.client, "wrong-key-0123456789abcdef")).status_code == 401

    assert (await login(gateway.client)).status_code == 303  # two failures of three
