"""Failed console sign-ins are limited per client address over a sliding window (past the limit
the form answers 429 with Retry-After without checking the key); past the limit of every address
together each attempt is slowed down, a wrong key answers 429 and a right key still signs in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from app.console.auth import SESSION_COOKIE
from app.console.throttle import DELAY_SECONDS, OVERALL, PER_CLIENT, LoginThrottle
from tests.conftest import ALPHA_KEY
from tests.console.helpers import OPERATOR_KEY, csrf_of, login, running_console
from tests.support.gateway import Gateway

WRONG_KEY = "wrong-key-0123456789abcdef"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Pauses:
    """Records the waits the throttle asks for instead of waiting."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def throttle(
    clock: Clock,
    *,
    per_client: int = 3,
    overall: int = 5,
    pauses: Pauses | None = None,
    max_clients: int = 1000,
) -> LoginThrottle:
    return LoginThrottle(
        per_client=per_client,
        overall=overall,
        window_seconds=300,
        max_clients=max_clients,
        clock=clock,
        pause=pauses or Pauses(),
    )


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


def test_failures_of_every_client_together_slow_everyone_down_but_refuse_no_one() -> None:
    clock, pauses = Clock(), Pauses()
    limit = throttle(clock, pauses=pauses)
    for client in range(5):
        limit.failed(f"10.0.0.{client}")
        clock.now += 1

    assert limit.retry_after("10.0.9.9") is None  # an address that never failed may try
    assert limit.overall_retry_after() == 295  # the first failure (1000) leaves at 1300
    clock.now = 1300
    assert limit.overall_retry_after() is None


async def test_attempts_wait_only_while_the_overall_limit_is_reached() -> None:
    clock, pauses = Clock(), Pauses()
    limit = throttle(clock, pauses=pauses)
    for client in range(4):
        limit.failed(f"10.0.0.{client}")
    await limit.slow_down()
    assert pauses.seconds == []  # four of five

    limit.failed("10.0.0.4")
    await limit.slow_down()
    await limit.slow_down()
    clock.now = 1300
    await limit.slow_down()

    assert pauses.seconds == [DELAY_SECONDS, DELAY_SECONDS]


def test_memory_stays_bounded_however_many_addresses_fail() -> None:
    clock = Clock()
    limit = throttle(clock, per_client=3, overall=5, max_clients=4)
    for client in range(50):
        for _ in range(5):
            limit.failed(f"10.0.{client}.1")

    assert list(limit._clients) == [f"10.0.{client}.1" for client in range(46, 50)]
    assert all(len(times) == 3 for times in limit._clients.values())
    assert len(limit._all) == 5
    assert limit.retry_after("10.0.49.1") == 300  # the latest addresses are still refused


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
def pauses() -> Pauses:
    return Pauses()


@pytest.fixture
def clock(gateway: Gateway, pauses: Pauses) -> Clock:
    """The gateway's sign-in limit, 3 failures of an address in 5 minutes, on a test clock."""
    moved = Clock()
    gateway.app.state.console_throttle = throttle(moved, per_client=3, overall=100, pauses=pauses)
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


def from_address(gateway: Gateway, address: str) -> httpx.AsyncClient:
    """A browser at `address` (the connection's peer the throttle counts)."""
    transport = httpx.ASGITransport(app=gateway.app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


async def test_a_flood_of_wrong_keys_from_many_addresses_does_not_lock_operators_out(
    gateway: Gateway,
) -> None:
    """The default limits: 10 failures per address, 100 of every address together."""
    clock, pauses = Clock(), Pauses()
    gateway.app.state.console_throttle = LoginThrottle(clock=clock, pause=pauses)
    answers = []
    for attacker in range(22):  # 5 wrong keys each: under the per-address limit
        async with from_address(gateway, f"10.1.{attacker}.7") as browser:
            answers += [(await login(browser, WRONG_KEY)) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [401] * (OVERALL - 1) + [429] * 11
    slowed = answers[-1]
    assert int(slowed.headers["retry-after"]) == 300
    assert "every attempt waits" in slowed.text
    assert 'id="login"' in slowed.text  # the form again: a right key may be given at once
    assert pauses.seconds == [DELAY_SECONDS] * 10  # each attempt after the 100th waited

    async with from_address(gateway, "192.0.2.10") as operator:
        signed_in = await login(operator, OPERATOR_KEY)
        overview = await operator.get("/console")

    assert signed_in.status_code == 303
    assert f"{SESSION_COOKIE}=" in signed_in.headers["set-cookie"]
    assert overview.status_code == 200
    assert pauses.seconds == [DELAY_SECONDS] * 11  # the operator waited too

    async with from_address(gateway, "10.9.9.9") as attacker_browser:
        for _ in range(PER_CLIENT):
            assert (await login(attacker_browser, WRONG_KEY)).status_code == 429
        refused = await login(attacker_browser, OPERATOR_KEY)
    assert refused.status_code == 429  # the per-address limit still holds
    assert "the key was not checked" in refused.text
    assert len(pauses.seconds) == 11 + PER_CLIENT  # refused before any wait

    clock.now += 301
    async with from_address(gateway, "192.0.2.11") as later:
        assert (await login(later, WRONG_KEY)).status_code == 401
    assert len(pauses.seconds) == 11 + PER_CLIENT  # the flood is over: no wait


class Gate:
    """A pause that holds every attempt until the test opens it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.opened = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.waiting += 1
        if self.waiting == self.expected:
            self.all_waiting.set()
        await self.opened.wait()


async def test_attempts_of_one_address_waiting_side_by_side_get_no_more_than_its_limit(
    gateway: Gateway,
) -> None:
    gate = Gate(expected=PER_CLIENT + 5)
    gateway.app.state.console_throttle = LoginThrottle(overall=1, clock=Clock(), pause=gate)
    async with from_address(gateway, "10.3.0.1") as other:
        assert (await login(other, WRONG_KEY)).status_code == 429  # the overall limit is reached

    async with from_address(gateway, "10.3.0.2") as attacker:
        token = csrf_of((await attacker.get("/console/login")).text)
        form = {"key": WRONG_KEY, "csrf": token}
        attempts = asyncio.gather(
            *(attacker.post("/console/login", data=form) for _ in range(gate.expected))
        )
        await asyncio.wait_for(gate.all_waiting.wait(), timeout=30)  # all passed the first check
        gate.opened.set()
        answers = await attempts

    assert {answer.status_code for answer in answers} == {429}
    checked = [answer for answer in answers if "every attempt waits" in answer.text]
    refused = [answer for answer in answers if "the key was not checked" in answer.text]
    assert (len(checked), len(refused)) == (PER_CLIENT, 5)
