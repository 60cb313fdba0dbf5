"""GET /metrics, read with the official client's parser: every family listed, and values move."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.core.config import Settings
from app.operations import metrics as metrics_endpoint
from app.provider.simulator.config import SimulatorConfig
from app.tasks import repository as tasks
from app.workers import repository as jobs
from app.workers.models import JobKind
from tests.conftest import auth, settings_values
from tests.support.callbacks import accepted_task, body, callback_path
from tests.support.gateway import running_gateway
from tests.support.proxy import cuttable
from tests.support.queries import ENDLESS
from tests.support.rows import make_task
from tests.support.stack import running_stack
from tests.support.waiting import eventually

FAMILIES = {
    "imagegen_http_request_duration_seconds": "histogram",
    "imagegen_callbacks": "counter",
    "imagegen_upstream_requests": "counter",
    "imagegen_upstream_request_duration_seconds": "histogram",
    "imagegen_archive_bytes": "counter",
    "imagegen_archive_copy_duration_seconds": "histogram",
    "imagegen_jobs_finished": "counter",
    "imagegen_job_lease_takeovers": "counter",
    "imagegen_database_scrape_success": "gauge",
    "imagegen_tasks": "gauge",
    "imagegen_jobs_due": "gauge",
    "imagegen_jobs_running": "gauge",
    "imagegen_jobs_oldest_due_age_seconds": "gauge",
    "imagegen_provider_credits_remaining": "gauge",
    "imagegen_provider_credits_unlimited": "gauge",
    "imagegen_provider_credits_reading_age_seconds": "gauge",
    "imagegen_provider_credits_read_failing": "gauge",
    "imagegen_creates_refused": "counter",
    "imagegen_caller_credits_today": "gauge",
    "imagegen_caller_credits_month": "gauge",
}
CALLBACK_ROUTE = "/callbacks/evolink/{task_id}/{nonce}/{token}"


class Scrape:
    """One parsed answer of /metrics."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: list[Sample] = []
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            self.samples.extend(family.samples)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")  # no API key: it is for the cluster's scraper
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def gateway_settings(database_url: str, **overrides: Any) -> Settings:
    return Settings(**settings_values(database_url, **overrides))


async def test_every_family_is_exposed_with_its_type(sqlite_database_url: str) -> None:
    async with running_gateway(gateway_settings(sqlite_database_url)) as gateway:
        found = await scrape(gateway.client)

    assert {name: found.types.get(name) for name in FAMILIES} == FAMILIES
    assert found.value("imagegen_database_scrape_success") == 1
    assert "process_cpu_seconds" in found.types  # the client's own process metrics


async def test_callbacks_are_counted_by_outcome(database_url: str) -> None:
    async with running_gateway(gateway_settings(database_url)) as gateway:
        task = await accepted_task(gateway.sessions)
        delivery = body(task.provider_task_id or "", "processing", progress=40)
        before = await scrape(gateway.client)

        first = await gateway.client.post(callback_path(task), content=delivery)
        after_first = await scrape(gateway.client)
        again = await gateway.client.post(callback_path(task), content=delivery)
        after_again = await scrape(gateway.client)
        forged = await gateway.client.post(
            callback_path(task, secret="another-secret-0123456789abcdefghijkl"), content=delivery
        )
        after_forged = await scrape(gateway.client)

    assert (first.json(), again.json(), forged.status_code) == (
        {"status": "accepted"},
        {"status": "duplicate"},
        401,
    )

    def moved(after: Scrape, outcome: str, start: Scrape = before) -> float:
        name = "imagegen_callbacks_total"
        return after.value(name, outcome=outcome) - start.value(name, outcome=outcome)

    assert [moved(after_first, o) for o in ("accepted", "duplicate", "rejected")] == [1, 0, 0]
    assert [moved(after_again, o, after_first) for o in ("accepted", "duplicate")] == [0, 1]
    assert [moved(after_forged, o, after_again) for o in ("accepted", "rejected")] == [0, 1]

    def requests(scraped: Scrape, status: str) -> float:
        return scraped.value(
            "imagegen_http_request_duration_seconds_count",
            method="POST",
            route=CALLBACK_ROUTE,
            status=status,
        )

    assert requests(after_forged, "2xx") - requests(before, "2xx") == 2
    assert requests(after_forged, "4xx") - requests(before, "4xx") == 1


async def test_requests_are_labelled_by_route_template(sqlite_database_url: str) -> None:
    missing = "/v1/tasks/00000000-0000-4000-8000-000000000000"
    async with running_gateway(gateway_settings(sqlite_database_url)) as gateway:
        before = await scrape(gateway.client)
        for _ in range(3):
            assert (await gateway.client.get(missing, headers=auth())).status_code == 404
        assert (await gateway.client.get("/no/such/path")).status_code == 404
        after = await scrape(gateway.client)

    def count(scraped: Scrape, route: str) -> float:
        return scraped.value(
            "imagegen_http_request_duration_seconds_count", method="GET", route=route, status="4xx"
        )

    assert count(after, "/v1/tasks/{task_id}") - count(before, "/v1/tasks/{task_id}") == 3
    assert count(after, "unmatched") - count(before, "unmatched") == 1
    assert not [s for s in after.samples if "00000000-0000" in s.labels.get("route", "")]


async def test_task_and_queue_gauges_are_read_from_the_database(database_url: str) -> None:
    async with running_gateway(gateway_settings(database_url)) as gateway:
        for index in range(3):
            await make_task(gateway.sessions, prompt=f"p{index}")
        queued = await scrape(gateway.client)
        async with gateway.sessions.begin() as session:
            await jobs.claim(
                session,
                worker="some-worker",
                kinds=[JobKind.SUBMIT],
                now=utcnow(),
                lease=timedelta(minutes=5),
                limit=2,
            )
        claimed = await scrape(gateway.client)

    assert queued.value("imagegen_tasks", status="queued") == 3
    assert queued.value("imagegen_tasks", status="succeeded") == 0
    assert queued.value("imagegen_jobs_due", kind="submit") == 3
    assert queued.value("imagegen_jobs_due", kind="archive") == 0
    assert queued.value("imagegen_jobs_oldest_due_age_seconds", kind="submit") >= 0
    assert (
        claimed.value("imagegen_jobs_due", kind="submit"),
        claimed.value("imagegen_jobs_running", kind="submit"),
    ) == (1, 2)


async def test_a_full_task_moves_upstream_archive_and_job_metrics(
    sqlite_database_url: str,
) -> None:
    config = SimulatorConfig(duration_seconds=0.2)
    async with running_stack(sqlite_database_url, config, poll_after_seconds=3600) as stack:
        before = await scrape(stack.gateway.client)
        created = await stack.create()
        done = await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")
        archived = {"name": "imagegen_jobs_finished_total", "kind": "archive", "outcome": "done"}
        # The job's outcome is recorded just after the task it finished turns `succeeded`.
        after: Scrape = await eventually(
            lambda: scrape(stack.gateway.client),
            lambda found: found.value(**archived) > before.value(**archived),
        )

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    image_bytes = done["images"][0]["bytes"]
    assert moved("imagegen_upstream_requests_total", operation="create", outcome="ok") == 1
    assert moved("imagegen_upstream_requests_total", operation="query", outcome="ok") >= 1
    assert moved("imagegen_upstream_request_duration_seconds_count", operation="create") == 1
    assert moved("imagegen_archive_bytes_total") == image_bytes
    assert moved("imagegen_archive_copy_duration_seconds_count", outcome="stored") == 1
    assert moved("imagegen_jobs_finished_total", kind="archive", outcome="done") == 1
    assert moved("imagegen_jobs_finished_total", kind="submit", outcome="done") == 1
    assert after.value("imagegen_tasks", status="succeeded") == 1


async def test_metrics_answer_while_the_database_is_down(pg_database_url: str) -> None:
    async with (
        cuttable(pg_database_url) as proxy,
        running_gateway(gateway_settings(proxy.url)) as gateway,
    ):
        proxy.cut()
        down = await scrape(gateway.client)
        proxy.restore()
        up = await scrape(gateway.client)

    assert down.value("imagegen_database_scrape_success") == 0
    assert "imagegen_tasks" not in down.types
    assert "imagegen_callbacks" in down.types
    assert up.value("imagegen_database_scrape_success") == 1


async def test_metrics_answer_when_the_database_is_too_slow(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    count_by_status = tasks.count_by_status

    async def stuck(session: AsyncSession) -> dict[str, int]:
        await session.execute(ENDLESS)  # a real query the database never finishes
        return await count_by_status(session)

    async with running_gateway(gateway_settings(database_url)) as gateway:
        monkeypatch.setattr(metrics_endpoint, "SCRAPE_QUERY_SECONDS", 0.5)
        monkeypatch.setattr(tasks, "count_by_status", stuck)
        slow = await scrape(gateway.client)
        monkeypatch.undo()
        again = await scrape(gateway.client)

    assert slow.value("imagegen_database_scrape_success") == 0
    assert "imagegen_tasks" not in slow.types
    assert again.value("imagegen_database_scrape_success") == 1
    assert again.types["imagegen_tasks"] == "gauge"
