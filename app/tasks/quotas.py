"""The limits a create must pass (docs/limits.md): the caller's rate, its unfinished tasks and
its credit budgets, counted in the database inside the create's own transaction, after the
caller's creates were serialized (repository.lock_caller_creates), so that no number of replicas
can overshoot them."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import ApiProblem
from app.core.limits import CallerLimits
from app.tasks import repository

log = logging.getLogger(__name__)

RATE_WINDOW = timedelta(seconds=60)


def day_start(now: datetime) -> datetime:
    """Midnight UTC of `now`'s day."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    """Midnight UTC of the first of `now`'s month."""
    return day_start(now).replace(day=1)


def next_month(now: datetime) -> datetime:
    start = month_start(now)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def credits_text(value: float) -> str:
    """Credits as people read them: at most 4 decimals, no trailing zeros."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


class Refused(ApiProblem):
    """A create refused by one of the caller's limits (`code` says which)."""


async def check_create(
    session: AsyncSession, caller: str, limits: CallerLimits, *, estimate: float, now: datetime
) -> None:
    """Refuse the create (Refused) when it would break one of the caller's limits. Call it
    inside the create's transaction, after `repository.lock_caller_creates`."""
    minute_start = now - RATE_WINDOW
    today, month = day_start(now), month_start(now)
    starts = []
    if limits.creates_per_minute is not None:
        starts.append(minute_start)
    if limits.daily_credits is not None:
        starts.append(today)
    if limits.monthly_credits is not None:
        starts.append(month)
    active: int | None = None
    if starts:
        window = {"since": min(starts), "minute_start": minute_start, "day_start": today}
        if limits.max_active_tasks is not None:
            recent, used_today, used_since, active = await repository.recent_usage_and_active(
                session, caller, **window
            )
        else:
            recent, used_today, used_since = await repository.recent_usage(
                session, caller, **window
            )
        if limits.creates_per_minute is not None and recent >= limits.creates_per_minute:
            await _refuse_rate(session, caller, limits.creates_per_minute, now)
    if limits.max_active_tasks is not None:
        if active is None:
            active = await repository.count_active(session, caller)
        if active >= limits.max_active_tasks:
            raise Refused(
                429,
                "too_many_active_tasks",
                f"{active} of your tasks are not finished yet, the most allowed "
                f"(max_active_tasks = {limits.max_active_tasks}); create again when one ends",
            )
    if limits.daily_credits is not None:
        _check_budget(
            "daily_credits", limits.daily_credits, used_today, estimate, today + timedelta(days=1)
        )
    if limits.monthly_credits is not None:
        _check_budget(
            "monthly_credits", limits.monthly_credits, used_since, estimate, next_month(now)
        )


async def _refuse_rate(session: AsyncSession, caller: str, limit: int, now: datetime) -> None:
    """429 with the whole seconds until the window holds fewer than `limit` creates."""
    wait = RATE_WINDOW.total_seconds()
    if limit > 0:
        frees = await repository.nth_newest_created_at(
            session, caller, after=now - RATE_WINDOW, n=limit
        )
        if frees is not None:
            wait = (frees + RATE_WINDOW - now).total_seconds()
    seconds = min(max(math.ceil(wait), 1), int(RATE_WINDOW.total_seconds()))
    raise Refused(
        429,
        "rate_limited",
        f"at most {limit} creates a minute (creates_per_minute); try again in {seconds} s",
        {"Retry-After": str(seconds)},
    )


def _check_budget(name: str, budget: float, used: float, estimate: float, resets: datetime) -> None:
    if used + estimate <= budget:
        return
    raise Refused(
        402,
        "budget_exhausted",
        f"{name} budget of {credits_text(budget)} is exhausted (used {credits_text(used)}, "
        f"this task needs about {credits_text(estimate)}); it resets at {rfc3339(resets)}",
    )
