"""The stored balance as every replica shows it: the gauges at scrape time and the console
overview (normal, low with a warning, a failed reading with the last good one, never read)."""

from __future__ import annotations

import html as html_module
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.balance import repository
from app.core.clock import utcnow
from app.provider.credits import AccountCredits, ProviderCredits
from tests.console.helpers import running_console, signed_in
from tests.support.gateway import Gateway

READING = ProviderCredits(
    token=AccountCredits(99416.4429, 583.5571),
    user=AccountCredits(1095.3996, 135.9048),
    token_unlimited=False,
)


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_console(database_url, provider_credits_warn_below=2000) as gateway:
        await signed_in(gateway.client)
        yield gateway


async def store(gateway: Gateway, credits: ProviderCredits, *, ago: timedelta) -> None:
    async with gateway.sessions.begin() as session:
        await repository.record_reading(session, credits, utcnow() - ago)


async def fail(gateway: Gateway, error: str) -> None:
    async with gateway.sessions.begin() as session:
        await repository.record_failure(session, error, utcnow())


async def gauges(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await gateway.client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        if family.name.startswith("imagegen_provider_credits")
        for sample in family.samples
    }


def balance_section(page: str) -> str:
    found = re.search(r'<section data-testid="provider-balance">(.*?)</section>', page, re.S)
    assert found is not None
    return found.group(1)


def text_of(fragment: str) -> str:
    return " ".join(html_module.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


async def overview(gateway: Gateway) -> str:
    page = await gateway.client.get("/console")
    assert page.status_code == 200
    sections = await gateway.client.get("/console/overview/sections")
    assert sections.status_code == 200
    assert balance_section(sections.text) == balance_section(page.text)
    return text_of(balance_section(page.text))


async def test_nothing_before_the_first_reading(gateway: Gateway) -> None:
    assert await gauges(gateway) == {}
    shown = await overview(gateway)
    assert "Not read yet: a worker reads GET /v1/credits every 300 s." in shown
    assert "Provider balance low" not in shown


async def test_a_reading_as_gauges(gateway: Gateway) -> None:
    await store(gateway, READING, ago=timedelta(seconds=90))
    found = await gauges(gateway)
    age = found.pop(("imagegen_provider_credits_reading_age_seconds", ()))
    assert 90 <= age < 150
    assert found == {
        ("imagegen_provider_credits_remaining", (("account", "token"),)): 99416.4429,
        ("imagegen_provider_credits_remaining", (("account", "user"),)): 1095.3996,
        ("imagegen_provider_credits_unlimited", ()): 0.0,
        ("imagegen_provider_credits_read_failing", ()): 0.0,
    }


async def test_an_unlimited_key_has_no_token_gauge(gateway: Gateway) -> None:
    unlimited = ProviderCredits(READING.token, READING.user, token_unlimited=True)
    await store(gateway, unlimited, ago=timedelta(0))
    found = await gauges(gateway)
    assert ("imagegen_provider_credits_remaining", (("account", "token"),)) not in found
    assert found[("imagegen_provider_credits_unlimited", ())] == 1.0
    shown = await overview(gateway)
    assert "API key (token) remaining unlimited" in shown


async def test_a_failed_reading_as_gauges_keeps_the_last_good_one(gateway: Gateway) -> None:
    await store(gateway, READING, ago=timedelta(minutes=10))
    await fail(gateway, "HTTP 503: Service temporarily unavailable, please retry")
    found = await gauges(gateway)
    assert found[("imagegen_provider_credits_read_failing", ())] == 1.0
    assert found[("imagegen_provider_credits_remaining", (("account", "user"),))] == 1095.3996
    assert found[("imagegen_provider_credits_reading_age_seconds", ())] >= 600


async def test_the_overview_shows_the_balance_and_the_threshold(gateway: Gateway) -> None:
    rich = ProviderCredits(AccountCredits(99416.4429, 1.0), AccountCredits(5000.0, 2.0), False)
    await store(gateway, rich, ago=timedelta(0))
    shown = await overview(gateway)
    assert "account (user) remaining 5,000 credits" in shown
    assert "API key (token) remaining 99,416.4429 credits" in shown
    assert "warning below 2,000 credits" in shown
    assert re.search(r"read \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(every 300 s\)", shown)
    assert "Provider balance low" not in shown
    assert "Could not read" not in shown


async def test_the_overview_warns_below_the_threshold(gateway: Gateway) -> None:
    await store(gateway, READING, ago=timedelta(0))
    shown = await overview(gateway)
    assert re.search(
        r"Provider balance low: 1,095.3996 credits left, below the threshold of 2,000 "
        r"\(read \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)\. Top up the provider account",
        shown,
    ), shown
    page = await gateway.client.get("/console")
    assert 'data-testid="balance-warning"' in page.text


async def test_the_overview_says_when_a_reading_failed(gateway: Gateway) -> None:
    await store(
        gateway,
        ProviderCredits(READING.token, AccountCredits(3000.0, None), False),
        ago=timedelta(minutes=10),
    )
    await fail(gateway, "HTTP 401: Invalid or missing API key <b>")
    shown = await overview(gateway)
    assert re.search(
        r"Could not read: HTTP 401: Invalid or missing API key <b> \(failing since .+ UTC, "
        r"last attempt .+ UTC\)\. Below: the last good reading\.",
        shown,
    ), shown
    assert "account (user) remaining 3,000 credits" in shown
    page = await gateway.client.get("/console")
    assert "&lt;b&gt;" in page.text  # escaped


async def test_a_failure_before_any_reading(gateway: Gateway) -> None:
    await fail(gateway, "ReadTimeout")
    shown = await overview(gateway)
    assert "Could not read: ReadTimeout" in shown
    assert "Below: the last good reading" not in shown
    assert "Not read yet" in shown
    assert ("imagegen_provider_credits_read_failing", ()) in await gauges(gateway)


async def test_without_a_threshold_there_is_no_warning(database_url: str) -> None:
    async with running_console(database_url) as gateway:
        await signed_in(gateway.client)
        await store(
            gateway,
            ProviderCredits(AccountCredits(0.5, 0), AccountCredits(0.5, 0), False),
            ago=timedelta(0),
        )
        shown = await overview(gateway)
    assert "warning below no threshold set" in shown
    assert "Provider balance low" not in shown
