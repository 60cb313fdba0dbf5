"""Per-caller limits at create (docs/limits.md): refusals with nothing saved or sent, replays
never refused nor counted, and budgets counted in estimates replaced by the provider's figure."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.core.limits import CallerLimits
from app.models import Base
from app.provider.simulator.billing import task_credits
from app.provider.types import ProviderStatus, ProviderTask
from app.tasks import quotas, service
from app.tasks.credits import changed_credits
from app.tasks.models import Task
from app.tasks.schemas import CreateTaskRequest
from app.tasks.states import ServiceFailure
from tests.conftest import BETA_KEY, auth, settings_values
from tests.support.gateway import Gateway, running_gateway
from tests.support.stack import running_stack

URL = "/v1/images/generations"
HIGH = 8.1059  # high, 1024x1024, no reference (app/provider/pricing.py)
LOW = 0.53
TASK = "task-unified-1757156493-imcg5zqt"


def limits_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.toml"
    path.write_text(text)
    return path


@pytest.fixture
def limits_text() -> str:
    return ""


@pytest.fixture
async def gateway(database_url: str, tmp_path: Path, limits_text: str) -> AsyncIterator[Gateway]:
    """A gateway without workers: nothing reaches the provider unless a submit job is written."""
    values = settings_values(database_url, limits_file=limits_file(tmp_path, limits_text))
    async with running_gateway(Settings(**values)) as gateway:
        yield gateway


async def snapshot(gateway: Gateway) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    async with gateway.sessions() as session:
        for table in Base.metadata.sorted_tables:
            rows = (await session.execute(select(table))).all()
            tables[table.name] = sorted((tuple(row) for row in rows), key=repr)
    return tables


async def create(
    gateway: Gateway, body: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    extra = {name.replace("_", "-"): value for name, value in headers.items()}
    return await gateway.client.post(URL, json=body or {"prompt": "p"}, headers=auth() | extra)


async def refused(
    gateway: Gateway, status: int, code: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    """A create that the limits refuse, with nothing written anywhere."""
    before = await snapshot(gateway)
    response = await create(gateway, body, Idempotency_Key="refused-key")
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert set(response.json()) == {"error"}
    assert await snapshot(gateway) == before
    return response


@pytest.mark.parametrize("limits_text", ["[default]\ncreates_per_minute = 2\n"])
async def test_over_creates_per_minute_is_429_with_retry_after(gateway: Gateway) -> None:
    first = await create(gateway, Idempotency_Key="k1")
    second = await create(gateway)
    assert first.status_code == second.status_code == 202

    response = await refused(gateway, 429, "rate_limited")

    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert "creates_per_minute" in response.json()["error"]["message"]
    # The repeat of an accepted create is neither refused nor counted; other callers are apart.
    replay = await create(gateway, Idempotency_Key="k1")
    assert (replay.status_code, replay.json()["id"]) == (200, first.json()["id"])
    other = await gateway.client.post(URL, json={"prompt": "p"}, headers=auth(BETA_KEY))
    assert other.status_code == 202


@pytest.mark.parametrize("limits_text", ["[default]\ncreates_per_minute = 0\n"])
async def test_a_rate_of_zero_refuses_every_create(gateway: Gateway) -> None:
    response = await refused(gateway, 429, "rate_limited")

    assert response.headers["Retry-After"] == "60"


@pytest.mark.parametrize("limits_text", ["[callers.alpha]\nmax_active_tasks = 1\n"])
async def test_over_max_active_tasks_is_429_until_a_task_ends(gateway: Gateway) -> None:
    first = (await create(gateway, Idempotency_Key="k1")).json()

    response = await refused(gateway, 429, "too_many_active_tasks")

    assert "Retry-After" not in response.headers
    assert "max_active_tasks = 1" in response.json()["error"]["message"]
    replay = await create(gateway, Idempotency_Key="k1")
    assert (replay.status_code, replay.json()["id"]) == (200, first["id"])
    await service.apply_alone(
        gateway.sessions, first["id"], ServiceFailure("provider_timeout", "x"), source="test"
    )
    assert (await create(gateway)).status_code == 202


@pytest.mark.parametrize("limits_text", ["[default]\ndaily_credits = 10\n"])
async def test_over_the_daily_budget_is_402_naming_it_and_its_reset(gateway: Gateway) -> None:
    first = await create(gateway, Idempotency_Key="k1")
    assert first.json()["usage"] == {"credits": HIGH, "source": "estimate"}

    response = await refused(gateway, 402, "budget_exhausted")

    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert response.json()["error"]["message"] == (
        f"daily_credits budget of 10 is exhausted (used {HIGH}, this task needs about {HIGH}); "
        f"it resets at {tomorrow}T00:00:00Z"
    )
    # A cheaper task still fits, even with the refused create's key (a refusal keeps nothing);
    # the replay is not counted again.
    assert (await create(gateway, Idempotency_Key="k1")).status_code == 200
    cheap = await create(gateway, {"prompt": "p", "quality": "low"}, Idempotency_Key="refused-key")
    assert cheap.status_code == 202
    assert cheap.json()["usage"] == {"credits": LOW, "source": "estimate"}


@pytest.mark.parametrize("limits_text", ["[default]\nmonthly_credits = 5\n"])
async def test_over_the_monthly_budget_counts_references_in_the_estimate(
    gateway: Gateway,
) -> None:
    urls = [f"https://images.example.com/{n}.png" for n in range(6)]
    body = {"prompt": "p", "quality": "low", "image_urls": urls}

    response = await refused(gateway, 402, "budget_exhausted", body)

    message = response.json()["error"]["message"]
    assert message.startswith("monthly_credits budget of 5 is exhausted (used 0, this task ")
    assert re.search(r"resets at \d{4}-\d{2}-01T00:00:00Z$", message)
    assert (await create(gateway, body | {"image_urls": urls[:5]})).status_code == 202


@pytest.mark.parametrize("limits_text", ["[default]\nmax_active_tasks = 0\n"])
async def test_a_cap_of_zero_refuses_every_create(gateway: Gateway) -> None:
    await refused(gateway, 429, "too_many_active_tasks")


async def test_without_limits_every_task_still_has_its_estimate(gateway: Gateway) -> None:
    sizes = {"1024x1536": 12.1588, "3:2": 12.0965}
    for size, credits in sizes.items():
        task = (await create(gateway, {"prompt": "p", "size": size})).json()
        assert task["usage"] == {"credits": credits, "source": "estimate"}
        row = await gateway.task_row(task["id"])
        assert (row.credits, row.credits_source) == (credits, "estimate")


async def test_the_provider_figure_replaces_the_estimate_in_the_budget(
    database_url: str, tmp_path: Path
) -> None:
    billed = task_credits("high", "1024x1024", 0)  # what the simulator reserves for it
    budget = billed + 8  # one high task as the provider bills it, and 8 credits more
    path = limits_file(tmp_path, f"[callers.alpha]\ndaily_credits = {budget}\n")
    async with running_stack(database_url, limits_file=path) as stack:
        first = await stack.create({"prompt": "p"})
        assert first["usage"] == {"credits": HIGH, "source": "estimate"}

        task = await stack.wait_for(first["id"], lambda t: t["usage"]["source"] == "provider")

        assert task["usage"] == {"credits": billed, "source": "provider"}
        response = await stack.gateway.client.post(URL, json={"prompt": "p"}, headers=auth())
        assert response.status_code == 402, response.text
        assert f"(used {billed}, this task needs about {HIGH})" in response.text
        cheap = await stack.create({"prompt": "p", "quality": "low"})
        assert cheap["usage"]["source"] == "estimate"
        await stack.wait_for(cheap["id"], lambda t: t["status"] == "succeeded")
        # Nothing of the refused create reached the provider.
        assert len(await stack.sim_tasks()) == 2


async def test_rate_limited_creates_never_reach_the_provider(
    database_url: str, tmp_path: Path
) -> None:
    path = limits_file(tmp_path, "[default]\ncreates_per_minute = 1\n")
    async with running_stack(database_url, limits_file=path) as stack:
        task = await stack.create({"prompt": "p"})
        response = await stack.gateway.client.post(URL, json={"prompt": "q"}, headers=auth())
        assert response.status_code == 429
        await stack.wait_for(task["id"], lambda t: t["status"] == "succeeded")

        assert [t["request"]["prompt"] for t in await stack.sim_tasks()] == ["p"]


async def test_a_create_the_provider_refuses_costs_nothing(database_url: str) -> None:
    async with running_stack(database_url) as stack:
        created = await stack.create({"prompt": "word " * 5000})

        task = await stack.wait_for(created["id"], lambda t: t["status"] == "failed")

    assert task["error"]["code"] == "submission_rejected"
    assert task["usage"] == {"credits": 0.0, "source": "provider"}


async def test_retry_after_is_when_the_window_frees_a_slot(gateway: Gateway) -> None:
    start = datetime(2026, 12, 31, 23, 59, 0, tzinfo=UTC)
    async with gateway.sessions() as session:
        for seconds in (0, 10):
            await service.create_task(
                session,
                caller="alpha",
                request=CreateTaskRequest(prompt="p"),
                idempotency_key=None,
                now=start + timedelta(seconds=seconds),
            )
        await session.commit()
        at = start + timedelta(seconds=30, microseconds=1)
        waits = {}
        for limit in (1, 2):
            with pytest.raises(quotas.Refused) as raised:
                await quotas.check_create(
                    session, "alpha", CallerLimits(creates_per_minute=limit), estimate=1, now=at
                )
            waits[limit] = raised.value.headers
        # Past the window of both, nothing is counted; the year's last day resets at midnight.
        await quotas.check_create(
            session,
            "alpha",
            CallerLimits(creates_per_minute=1),
            estimate=1,
            now=start + timedelta(seconds=70, microseconds=1),
        )
        with pytest.raises(quotas.Refused) as budget:
            await quotas.check_create(
                session, "alpha", CallerLimits(monthly_credits=16.3), estimate=0.1, now=at
            )

    assert waits == {1: {"Retry-After": "40"}, 2: {"Retry-After": "30"}}
    assert budget.value.message == (
        "monthly_credits budget of 16.3 is exhausted (used 16.2118, this task needs about "
        "0.1); it resets at 2027-01-01T00:00:00Z"
    )


def test_a_poll_writes_the_providers_figure_only_when_it_changes() -> None:
    task = Task(credits=HIGH, credits_source="estimate")
    news = ProviderTask(
        id=TASK,
        status=ProviderStatus.COMPLETED,
        raw_status="completed",
        progress=100,
        credits=251.5,
    )

    assert changed_credits(task, news) == {"credits": 251.5, "credits_source": "provider"}
    task.credits, task.credits_source = 251.5, "provider"
    assert changed_credits(task, news) == {}
    assert changed_credits(task, replace(news, credits=None)) == {}
