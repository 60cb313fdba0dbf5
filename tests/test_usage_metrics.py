"""The usage metrics (docs/operations.md): credits of the configured callers by source, read
from the database at scrape time, and refused creates by caller and reason; no label for a
caller that is not configured."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from app.core.clock import utcnow
from app.core.config import Settings
from app.tasks.models import Task
from app.tasks.quotas import month_start
from tests.conftest import ALPHA_KEY, BETA_KEY, auth, settings_values
from tests.support.gateway import running_gateway
from tests.support.rows import make_task
from tests.test_metrics import scrape

HIGH = 8.1059  # the estimate of a default create


async def test_credits_of_each_configured_caller_by_source(database_url: str) -> None:
    async with running_gateway(Settings(**settings_values(database_url))) as gateway:
        kept = await make_task(gateway.sessions)
        billed = await make_task(gateway.sessions)
        earlier = await make_task(gateway.sessions)
        await make_task(gateway.sessions, caller="ghost")  # no longer in IMAGEGEN_API_KEYS
        async with gateway.sessions.begin() as session:
            await session.execute(
                update(Task)
                .where(Task.id == billed.id)
                .values(credits=100, credits_source="provider")
            )
            await session.execute(
                update(Task)
                .where(Task.id == earlier.id)
                .values(created_at=month_start(utcnow()).replace(year=2000))
            )
        found = await scrape(gateway.client)

    assert kept.credits == HIGH
    for family in ("imagegen_caller_credits_today", "imagegen_caller_credits_month"):
        assert found.value(family, caller="alpha", source="estimate") == HIGH
        assert found.value(family, caller="alpha", source="provider") == 100
        assert [
            (sample.labels["caller"], sample.labels["source"], sample.value)
            for sample in found.samples
            if sample.name == family and sample.labels["caller"] != "alpha"
        ] == [("beta", "estimate", 0), ("beta", "provider", 0)]
    assert not [sample for sample in found.samples if sample.labels.get("caller") == "ghost"]


async def test_refused_creates_are_counted_by_caller_and_reason(
    sqlite_database_url: str, tmp_path: Path
) -> None:
    limits = tmp_path / "limits.toml"
    limits.write_text(
        "[callers.alpha]\ncreates_per_minute = 0\n[callers.beta]\ndaily_credits = 0\n"
    )
    values = settings_values(sqlite_database_url, limits_file=limits)
    async with running_gateway(Settings(**values)) as gateway:
        before = await scrape(gateway.client)
        url = "/v1/images/generations"
        for key in (ALPHA_KEY, ALPHA_KEY, BETA_KEY, "not-a-key-0123456789abcdef"):
            response = await gateway.client.post(url, json={"prompt": "p"}, headers=auth(key))
            assert response.status_code in (401, 402, 429)
        after = await scrape(gateway.client)

    def added(**labels: str) -> float:
        name = "imagegen_creates_refused_total"
        return after.value(name, **labels) - before.value(name, **labels)

    assert added(caller="alpha", reason="rate_limited") == 2
    assert added(caller="beta", reason="budget_exhausted") == 1
    assert added(caller="alpha", reason="budget_exhausted") == 0
    assert added() == 3  # the unknown key is refused before any limit: no label of its own
