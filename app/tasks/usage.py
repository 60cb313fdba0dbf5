"""A caller's usage (GET /v1/usage, docs/limits.md "Usage"): its tasks and credits per UTC day
of creation, counted by the rule the budgets use, and what is left of its budgets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.limits import CallerLimits
from app.tasks import repository
from app.tasks.models import Task
from app.tasks.quotas import day_start, month_start

MAX_DAYS = 366  # the longest range one request may ask for (a leap year)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class RangeError(ValueError):
    """A `from`/`to` that cannot be used; `parameter` names the one at fault."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter


def parse_day(parameter: str, text: str) -> date:
    """A calendar date written exactly YYYY-MM-DD."""
    if not _DATE.fullmatch(text):
        raise RangeError(parameter, f"must be a date written YYYY-MM-DD, got {text[:40]!r}")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise RangeError(parameter, f"no such date: {text!r}") from None


def current_month(now: datetime) -> tuple[date, date]:
    """The first and last day of `now`'s UTC month."""
    first = now.astimezone(UTC).date().replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


def usage_range(first: str | None, last: str | None, now: datetime) -> tuple[date, date]:
    """The inclusive range asked for: each bound defaults to the current UTC month's."""
    month_first, month_last = current_month(now)
    start = parse_day("from", first) if first is not None else month_first
    end = parse_day("to", last) if last is not None else month_last
    if start > end:
        raise RangeError("from", f"{start.isoformat()} is after to ({end.isoformat()})")
    if (end - start).days + 1 > MAX_DAYS:
        raise RangeError("to", f"the range may span at most {MAX_DAYS} days")
    return start, end


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One caller's tasks created on one UTC day: how many in each status, and their credits."""

    day: date
    tasks: dict[str, int]
    credits: float


def _utc_day(dialect: str) -> ColumnElement[Any]:
    """The UTC day of a task's created_at as text YYYY-MM-DD on either database."""
    if dialect == "sqlite":  # stored as UTC text "YYYY-MM-DD HH:MM:SS[.ffffff]" (app/core/db.py)
        return func.substr(Task.created_at, 1, 10)
    return func.to_char(func.timezone("UTC", Task.created_at), "YYYY-MM-DD")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


async def usage_by_day(
    session: AsyncSession, callers: list[str], start: date, end: date
) -> dict[str, list[DayUsage]]:
    """Each caller's usage on every day from `start` to `end` (inclusive; a day without tasks
    is listed with none and 0 credits), in one query grouped by caller, UTC day and status."""
    day = _utc_day(session.get_bind().dialect.name).label("day")
    rows = (
        await session.execute(
            select(
                Task.caller,
                day,
                Task.status,
                func.count(),
                func.coalesce(func.sum(Task.credits), 0.0),
            )
            .where(
                Task.caller.in_(callers),
                Task.created_at >= _midnight(start),
                Task.created_at < _midnight(end + timedelta(days=1)),
            )
            .group_by(Task.caller, day, Task.status)
        )
    ).all()
    counts: dict[tuple[str, str], dict[str, int]] = {}
    credits: dict[tuple[str, str], float] = {}
    for caller, day_text, status, count, summed in rows:
        key = (caller, day_text)
        counts.setdefault(key, {})[str(status)] = int(count)
        credits[key] = credits.get(key, 0.0) + float(summed)
    days = [start + timedelta(days=offset) for offset in range((end - start).days + 1)]
    return {
        caller: [
            DayUsage(
                day=one,
                tasks=dict(sorted(counts.get((caller, one.isoformat()), {}).items())),
                credits=round(credits.get((caller, one.isoformat()), 0.0), 4),
            )
            for one in days
        ]
        for caller in callers
    }


async def remaining_budgets(
    session: AsyncSession, caller: str, limits: CallerLimits, now: datetime
) -> dict[str, float | None]:
    """What is left of the caller's daily and monthly budgets now (never below 0; None: no
    such budget), counted as the create's check counts them (app/tasks/quotas.py)."""
    remaining: dict[str, float | None] = {"daily_credits": None, "monthly_credits": None}
    if not limits.has_budget:
        return remaining
    today, month = day_start(now), month_start(now)
    _, used_today, used_month = await repository.recent_usage(
        session, caller, since=month, minute_start=now, day_start=today
    )
    if limits.daily_credits is not None:
        remaining["daily_credits"] = round(max(limits.daily_credits - used_today, 0.0), 4)
    if limits.monthly_credits is not None:
        remaining["monthly_credits"] = round(max(limits.monthly_credits - used_month, 0.0), 4)
    return remaining


@dataclass(frozen=True, slots=True)
class CreditsNow:
    """Credits of tasks created today and this month (UTC), of one caller and source."""

    today: float
    month: float


async def credits_by_caller_and_source(
    session: AsyncSession, callers: list[str], now: datetime
) -> dict[tuple[str, str], CreditsNow]:
    """(caller, credits source) -> credits of the tasks created today and this month: one
    grouped range scan of this month's tasks (the metrics' gauges)."""
    today = case((Task.created_at >= day_start(now), Task.credits), else_=0.0)
    rows = (
        await session.execute(
            select(
                Task.caller,
                Task.credits_source,
                func.coalesce(func.sum(today), 0.0),
                func.coalesce(func.sum(Task.credits), 0.0),
            )
            .where(Task.caller.in_(callers), Task.created_at >= month_start(now))
            .group_by(Task.caller, Task.credits_source)
        )
    ).all()
    return {
        (caller, str(source)): CreditsNow(today=float(day), month=float(month))
        for caller, source, day, month in rows
    }
