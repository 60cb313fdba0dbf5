"""The console's usage page: per caller per UTC day, tasks by status and credits, a chart of
credits per day and each caller's remaining budgets (docs/console.md "Usage")."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from app.console.usage_chart import credits_chart
from app.console.web import PREFIX, ConsoleRoute, OperatorDep, PageError, render
from app.core.clock import utcnow
from app.core.db import query_deadline
from app.core.deps import SessionDep, SettingsDep
from app.tasks.usage import RangeError, remaining_budgets, usage_by_day, usage_range

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

USAGE_QUERY_SECONDS = 10.0


@router.get("/usage")
async def usage_page(
    request: Request,
    operator: OperatorDep,
    session: SessionDep,
    settings: SettingsDep,
    first: Annotated[str | None, Query(alias="from", max_length=64)] = None,
    last: Annotated[str | None, Query(alias="to", max_length=64)] = None,
) -> Response:
    """Every configured caller's usage over the range (default: the current UTC month)."""
    now = utcnow()
    try:
        start, end = usage_range(first or None, last or None, now)
    except RangeError as exc:
        raise PageError(422, str(exc)) from None
    callers = sorted(set(settings.callers.values()))
    try:
        async with query_deadline(session, USAGE_QUERY_SECONDS):
            usage = await usage_by_day(session, callers, start, end)
            budgets: list[dict[str, Any]] = []
            for caller in callers:
                limits = settings.limits.for_caller(caller)
                remaining = await remaining_budgets(session, caller, limits, now)
                budgets.append({"caller": caller, "limits": limits, "remaining": remaining})
    except TimeoutError:
        raise PageError(503, "the database did not answer in time; retry") from None
    rows = [
        {"caller": caller, "day": day}
        for caller in callers
        for day in usage[caller]
        if day.tasks or day.credits
    ]
    return render(
        request,
        "usage.html",
        nav="usage",
        start=start.isoformat(),
        end=end.isoformat(),
        rows=rows,
        totals={caller: round(sum(day.credits for day in usage[caller]), 4) for caller in callers},
        chart=credits_chart(usage),
        budgets=budgets,
        now=now,
    )
