"""All queries on the provider balance row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.balance.models import PROVIDER, ProviderBalance
from app.core.db import upsert_insert
from app.provider.credits import ProviderCredits


@dataclass(frozen=True, slots=True)
class BalanceView:
    """What the overview and the metrics show of the row."""

    token_remaining: float | None
    token_unlimited: bool
    user_remaining: float | None
    read_at: datetime | None
    attempted_at: datetime
    error: str | None
    failing_since: datetime | None

    @property
    def lowest_limited(self) -> float | None:
        """The smallest remaining balance that limits creates (the key's unless unlimited)."""
        known = [self.user_remaining] + ([] if self.token_unlimited else [self.token_remaining])
        values = [value for value in known if value is not None]
        return min(values) if values else None


async def record_reading(session: AsyncSession, credits: ProviderCredits, now: datetime) -> bool:
    """Store a good reading; True when it ends a streak of failed ones."""
    values = {
        "token_remaining": credits.token.remaining,
        "token_used": credits.token.used,
        "token_unlimited": credits.token_unlimited,
        "user_remaining": credits.user.remaining,
        "user_used": credits.user.used,
        "read_at": now,
        "attempted_at": now,
        "error": None,
        "failing_since": None,
    }
    was_failing = (
        await session.execute(
            select(ProviderBalance.failing_since)
            .where(ProviderBalance.name == PROVIDER)
            .with_for_update()
        )
    ).scalar_one_or_none() is not None
    insert = upsert_insert(session)
    statement = insert(ProviderBalance).values(name=PROVIDER, **values)
    await session.execute(
        statement.on_conflict_do_update(index_elements=[ProviderBalance.name], set_=values)
    )
    return was_failing


async def record_failure(session: AsyncSession, error: str, now: datetime) -> bool:
    """Note a failed reading (the last good one stays); True when it starts a failing streak."""
    insert = upsert_insert(session)
    statement = insert(ProviderBalance).values(
        name=PROVIDER, attempted_at=now, error=error, failing_since=now
    )
    statement = statement.on_conflict_do_update(
        index_elements=[ProviderBalance.name],
        set_={
            "attempted_at": now,
            "error": error,
            "failing_since": func.coalesce(
                ProviderBalance.failing_since, literal(now, ProviderBalance.failing_since.type)
            ),
        },
    ).returning(ProviderBalance.failing_since)
    since = (await session.execute(statement)).scalar_one()
    return bool(since == now)


async def latest(session: AsyncSession) -> BalanceView | None:
    """The row, None before the first attempt."""
    row = await session.get(ProviderBalance, PROVIDER)
    if row is None:
        return None
    return BalanceView(
        token_remaining=row.token_remaining,
        token_unlimited=row.token_unlimited,
        user_remaining=row.user_remaining,
        read_at=row.read_at,
        attempted_at=row.attempted_at,
        error=row.error,
        failing_since=row.failing_since,
    )
