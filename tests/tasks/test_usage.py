"""GET /v1/usage (docs/limits.md "Usage"): the caller's tasks and credits per UTC day, its
limits and its remaining budgets, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from app.core.clock import utcnow
from app.core.config import Settings
from app.tasks.models import CreditsSource, Task
from app.tasks.usage import current_month
from tests.conftest import BETA_KEY, auth, settings_values
from tests.support.gateway import Gateway, running_gateway

HIGH = 8.1059  # the estimate of a default create (high, 1024x1024, no reference)


@pytest.fixture
def limits_text() -> str | None:
    return None


@pytest.fixture
async def gateway(
    database_url: str, tmp_path: Path, limits_text: str | None
) -> AsyncIterator[Gateway]:
    values = settings_values(database_url)
    if limits_text is not None:
        path = tmp_path / "limits.toml"
        path.write_text(limits_text)
        values["limits_file"] = path
    async with running_gateway(Settings(**values)) as gateway:
        yield gateway


async def create(gateway: Gateway, key: str | None = None) -> str:
    response = await gateway.client.post(
        "/v1/images/generations", json={"prompt": "p"}, headers=auth(key) if key else auth()
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


async def alter(gateway: Gateway, task_id: str, **values: Any) -> None:
    async with gateway.sessions() as session:
        await session.execute(update(Task).where(Task.id == task_id).values(**values))
        await session.commit()


async def usage(gateway: Gateway, query: str = "", key: str | None = None) -> dict[str, Any]:
    response = await gateway.client.get(f"/v1/usage{query}", headers=auth(key) if key else auth())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def test_without_a_limits_file_the_current_month_is_listed_with_no_limits(
    gateway: Gateway,
) -> None:
    await create(gateway)

    body = await usage(gateway)

    first, last = current_month(utcnow())
    assert set(body) == {"caller", "from", "to", "days", "limits", "remaining"}
    assert (body["caller"], body["from"], body["to"]) == ("alpha", str(first), str(last))
    assert [day["date"] for day in body["days"]] == [
        str(first + timedelta(days=n)) for n in range((last - first).days + 1)
    ]
    today = next(day for day in body["days"] if day["date"] == str(utcnow().date()))
    assert today == {"date": str(utcnow().date()), "tasks": {"queued": 1}, "credits": HIGH}
    others = [day for day in body["days"] if day is not today]
    assert all(day["tasks"] == {} and day["credits"] == 0 for day in others)
    assert body["limits"] == {}
    assert body["remaining"] == {"daily_credits": None, "monthly_credits": None}


async def test_days_group_by_utc_day_and_status_and_count_only_the_callers_tasks(
    gateway: Gateway,
) -> None:
    late = await create(gateway)
    early = await create(gateway)
    failed = await create(gateway)
    outside = await create(gateway)
    theirs = await create(gateway, BETA_KEY)
    await alter(gateway, late, created_at=at("2025-03-01T23:59:59.999999"))
    await alter(gateway, early, created_at=at("2025-03-02T00:00:00"), credits=3.5)
    await alter(
        gateway,
        failed,
        created_at=at("2025-03-02T12:00:00"),
        status="failed",
        credits=252,
        credits_source=CreditsSource.PROVIDER,
    )
    await alter(gateway, outside, created_at=at("2025-03-04T00:00:00"))
    await alter(gateway, theirs, created_at=at("2025-03-02T08:00:00"))

    body = await usage(gateway, "?from=2025-03-01&to=2025-03-03")

    assert (body["from"], body["to"]) == ("2025-03-01", "2025-03-03")
    assert body["days"] == [
        {"date": "2025-03-01", "tasks": {"queued": 1}, "credits": HIGH},
        {"date": "2025-03-02", "tasks": {"failed": 1, "queued": 1}, "credits": 255.5},
        {"date": "2025-03-03", "tasks": {}, "credits": 0},
    ]
    beta = await usage(gateway, "?from=2025-03-02&to=2025-03-02", BETA_KEY)
    assert beta["caller"] == "beta"
    assert beta["days"] == [{"date": "2025-03-02", "tasks": {"queued": 1}, "credits": HIGH}]
    one_day = await usage(gateway, "?from=2025-03-04&to=2025-03-04")
    assert one_day["days"] == [{"date": "2025-03-04", "tasks": {"queued": 1}, "credits": HIGH}]


async def test_a_bound_alone_takes_the_other_from_the_current_month(gateway: Gateway) -> None:
    first, last = current_month(utcnow())

    body = await usage(gateway, f"?to={last}")
    assert (body["from"], body["to"]) == (str(first), str(last))
    body = await usage(gateway, f"?from={last}")
    assert (body["from"], body["to"]) == (str(last), str(last))
    # An empty value is a parameter not given, as everywhere in the API (app/core/auth.py).
    body = await usage(gateway, f"?from=&to={last}")
    assert (body["from"], body["to"]) == (str(first), str(last))
    year = await usage(gateway, f"?from={last - timedelta(days=365)}&to={last}")
    assert len(year["days"]) == 366


@pytest.mark.parametrize(
    "limits_text",
    [
        "[default]\ndaily_credits = 20\nmonthly_credits = 100\n"
        "[callers.alpha]\ncreates_per_minute = 5\n"
    ],
)
async def test_limits_are_the_merged_keys_and_remaining_counts_like_the_budgets(
    gateway: Gateway,
) -> None:
    await create(gateway)
    refused = await create(gateway)
    await alter(gateway, refused, status="failed", credits=0, credits_source="provider")
    last_month = await create(gateway)
    await create(gateway, BETA_KEY)
    month_first, _ = current_month(utcnow())
    await alter(gateway, last_month, created_at=at(f"{month_first}T00:00:00") - timedelta(days=1))

    body = await usage(gateway)

    assert body["limits"] == {
        "creates_per_minute": 5,
        "daily_credits": 20.0,
        "monthly_credits": 100.0,
    }
    assert body["remaining"] == {
        "daily_credits": round(20 - HIGH, 4),
        "monthly_credits": round(100 - HIGH, 4),
    }
    # The provider's figure replaces the estimate; a spent budget shows 0, never below.
    task = await create(gateway, BETA_KEY)
    await alter(gateway, task, credits=150, credits_source="provider")
    beta = await usage(gateway, key=BETA_KEY)
    assert beta["limits"] == {"daily_credits": 20.0, "monthly_credits": 100.0}
    assert beta["remaining"] == {"daily_credits": 0, "monthly_credits": 0}


@pytest.mark.parametrize("limits_text", ["[callers.beta]\nmonthly_credits = 50\n"])
async def test_only_the_budgets_the_caller_has_are_remaining(gateway: Gateway) -> None:
    await create(gateway, BETA_KEY)

    assert (await usage(gateway))["remaining"] == {"daily_credits": None, "monthly_credits": None}
    beta = await usage(gateway, key=BETA_KEY)
    assert beta["limits"] == {"monthly_credits": 50.0}
    assert beta["remaining"] == {"daily_credits": None, "monthly_credits": round(50 - HIGH, 4)}


async def test_usage_needs_a_caller_key(gateway: Gateway) -> None:
    response = await gateway.client.get("/v1/usage")
    assert response.status_code == 401
