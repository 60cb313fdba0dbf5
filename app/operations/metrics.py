"""GET /metrics: this process's metrics, plus gauges read from the shared database at scrape time.

No API key: the endpoint is for the cluster's scraper and shows counts, never task content."""

from __future__ import annotations

import logging
from datetime import datetime

from fastapi import APIRouter, Response
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.balance import repository as balances
from app.balance.repository import BalanceView
from app.core import metrics
from app.core.clock import utcnow
from app.core.db import query_deadline
from app.core.deps import SessionsDep, SettingsDep
from app.tasks import repository as tasks
from app.tasks.models import CreditsSource
from app.tasks.states import TaskStatus
from app.tasks.usage import CreditsNow, credits_by_caller_and_source
from app.workers import repository as jobs
from app.workers.models import JobKind

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

SCRAPE_QUERY_SECONDS = 5.0
JOB_KINDS = (JobKind.SUBMIT, JobKind.POLL, JobKind.ARCHIVE, JobKind.NOTIFY)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE_PLAIN_0_0_4: {}}}},
)
async def get_metrics(sessions: SessionsDep, settings: SettingsDep) -> Response:
    """Prometheus text format."""
    families = await database_families(sessions, sorted(set(settings.callers.values())))
    return Response(metrics.exposition(families), media_type=metrics.CONTENT_TYPE_PLAIN_0_0_4)


async def database_families(
    sessions: async_sessionmaker[AsyncSession], callers: list[str] | None = None
) -> list[Metric]:
    """Tasks by status, the job queue and the configured callers' credits, as the database has
    them now (same on every replica)."""
    callers = callers or []
    up = GaugeMetricFamily(
        "imagegen_database_scrape_success",
        "Whether the database gauges below could be read at this scrape (1) or not (0).",
    )
    try:
        async with sessions() as session, query_deadline(session, SCRAPE_QUERY_SECONDS):
            now = utcnow()
            statuses = await tasks.count_by_status(session)
            queue = await jobs.queue_stats(session, now)
            balance = await balances.latest(session)
            credits = await credits_by_caller_and_source(session, callers, now) if callers else {}
    except Exception:
        log.warning("metrics: cannot read the database gauges", exc_info=True)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    by_status = GaugeMetricFamily(
        "imagegen_tasks", "Tasks in the database by status.", labels=["status"]
    )
    for status in TaskStatus:
        by_status.add_metric([status.value], statuses.get(status.value, 0))
    waiting = GaugeMetricFamily(
        "imagegen_jobs_due",
        "Jobs due now and waiting for a worker (no live lease), by kind.",
        labels=["kind"],
    )
    running = GaugeMetricFamily(
        "imagegen_jobs_running", "Jobs held by a worker's live lease, by kind.", labels=["kind"]
    )
    oldest = GaugeMetricFamily(
        "imagegen_jobs_oldest_due_age_seconds",
        "How long the oldest waiting due job has been due, by kind (0 when none waits).",
        labels=["kind"],
    )
    for kind in sorted(set(JOB_KINDS) | set(queue)):
        stats = queue.get(kind, jobs.QueueStats(0, 0, None))
        waiting.add_metric([kind], stats.waiting)
        running.add_metric([kind], stats.running)
        age = (now - stats.oldest_due).total_seconds() if stats.oldest_due else 0.0
        oldest.add_metric([kind], max(age, 0.0))
    return [
        up,
        by_status,
        waiting,
        running,
        oldest,
        *balance_families(balance, now),
        *credit_families(callers, credits),
    ]


def balance_families(balance: BalanceView | None, now: datetime) -> list[Metric]:
    """The provider's balance as the last reading stored it (no samples before the first)."""
    remaining = GaugeMetricFamily(
        "imagegen_provider_credits_remaining",
        "The provider's remaining credits at the last good reading: of the API key (token; "
        "absent when the key is unlimited) and of the account (user).",
        labels=["account"],
    )
    unlimited = GaugeMetricFamily(
        "imagegen_provider_credits_unlimited",
        "Whether the provider reports the API key as unlimited (1) at the last good reading.",
    )
    age = GaugeMetricFamily(
        "imagegen_provider_credits_reading_age_seconds",
        "Seconds since the last good reading of the provider's balance.",
    )
    failing = GaugeMetricFamily(
        "imagegen_provider_credits_read_failing",
        "Whether the last attempt to read the provider's balance failed (1) or not (0).",
    )
    if balance is not None:
        failing.add_metric([], 1 if balance.error is not None else 0)
        if balance.read_at is not None:
            if balance.token_remaining is not None and not balance.token_unlimited:
                remaining.add_metric(["token"], balance.token_remaining)
            if balance.user_remaining is not None:
                remaining.add_metric(["user"], balance.user_remaining)
            unlimited.add_metric([], 1 if balance.token_unlimited else 0)
            age.add_metric([], max((now - balance.read_at).total_seconds(), 0.0))
    return [remaining, unlimited, age, failing]


def credit_families(callers: list[str], credits: dict[tuple[str, str], CreditsNow]) -> list[Metric]:
    """Credits of each configured caller's tasks created this UTC day and month, by source
    (estimate or provider): the figures the budgets count. Every caller of IMAGEGEN_API_KEYS
    and source is listed (0 when none), and no other: the labels are bounded by the keys."""
    today = GaugeMetricFamily(
        "imagegen_caller_credits_today",
        "Credits of the caller's tasks created this UTC day, by source.",
        labels=["caller", "source"],
    )
    month = GaugeMetricFamily(
        "imagegen_caller_credits_month",
        "Credits of the caller's tasks created this UTC calendar month, by source.",
        labels=["caller", "source"],
    )
    for caller in callers:
        for source in CreditsSource:
            figures = credits.get((caller, source.value), CreditsNow(0.0, 0.0))
            today.add_metric([caller, source.value], figures.today)
            month.add_metric([caller, source.value], figures.month)
    return [today, month]
