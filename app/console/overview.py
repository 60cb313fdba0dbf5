"""The console's overview page: the provider's balance, counts of the last hour and day, the
archive queue, upstream errors, callbacks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession

from app.balance import repository as balances
from app.console import repository
from app.console.web import (
    PREFIX,
    ConsoleRoute,
    OperatorDep,
    PageError,
    render,
)
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.db import query_deadline
from app.core.deps import SessionDep, SettingsDep
from app.tasks.states import TaskStatus

router = APIRouter(
    prefix=PREFIX,
    route_class=ConsoleRoute,
    include_in_schema=False,
)

_CALLBACKS_TOTAL = "imagegen_callbacks_total"  # app/core/metrics.py, this process
_PROCESS_CALLBACK_OUTCOMES = ("accepted", "duplicate", "rejected", "unavailable")
OVERVIEW_QUERY_SECONDS = 10.0


@router.get("")
async def overview(
    request: Request, operator: OperatorDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """The provider's balance, counts of the last hour and day, the archive queue, upstream
    errors, callbacks."""
    context = await _overview(session, settings)
    return render(request, "overview.html", nav="overview", **context)


@router.get("/overview/sections")
async def overview_sections(
    request: Request, operator: OperatorDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """The overview's sections alone, for the page's live refresh."""
    return render(request, "_overview_sections.html", **await _overview(session, settings))


async def _overview(session: AsyncSession, settings: Settings) -> dict[str, Any]:
    now = utcnow()
    hour, day = now - timedelta(hours=1), now - timedelta(days=1)
    try:
        async with query_deadline(session, OVERVIEW_QUERY_SECONDS):
            context: dict[str, Any] = {
                "now": now,
                "statuses": [status.value for status in TaskStatus],
                "counts_hour": await repository.status_counts(session, hour),
                "counts_day": await repository.status_counts(session, day),
                "backlog": await repository.archive_backlog(session, now),
                "failed_codes": await repository.failed_by_code(session, day),
                "upstream": await repository.upstream_failures(session, day),
                "callbacks_hour": await repository.callback_counts(session, hour),
                "callbacks_day": await repository.callback_counts(session, day),
                "recovered_hour": await repository.recovered_by_polling(session, hour),
                "recovered_day": await repository.recovered_by_polling(session, day),
                "balance": await balances.latest(session),
            }
    except TimeoutError:
        raise PageError(503, "the database did not answer in time; retry") from None
    context["process_callbacks"] = {
        outcome: int(REGISTRY.get_sample_value(_CALLBACKS_TOTAL, {"outcome": outcome}) or 0)
        for outcome in _PROCESS_CALLBACK_OUTCOMES
    }
    context.update(_balance_context(context["balance"], settings))
    oldest = context["backlog"].oldest_due
    context["oldest_due_age"] = (now - oldest).total_seconds() if oldest is not None else None
    return context


def _balance_context(balance: balances.BalanceView | None, settings: Settings) -> dict[str, Any]:
    """The threshold, the poll period and whether the last good reading is below the threshold."""
    warn_below = settings.provider_credits_warn_below
    lowest = balance.lowest_limited if balance is not None and balance.read_at else None
    return {
        "balance_warn_below": warn_below,
        "balance_poll_seconds": int(settings.provider_credits_poll_seconds.total_seconds()),
        "balance_lowest": lowest,
        "balance_low": warn_below is not None and lowest is not None and lowest < warn_below,
    }
