"""The provider's "slow down" shared by every replica: after a 429 to a create, no replica sends
another create before `not_before` (the provider's Retry-After, else
IMAGEGEN_PROVIDER_RATE_LIMIT_WAIT_SECONDS).

One row per scope (`create`). Read by the submit job before each create and written when a
create is answered 429; a later hold only ever moves the time later."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text, case, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime, upsert_insert

CREATE = "create"


class ProviderHold(Base):
    """Until when the provider asked every replica to wait before calls of one scope."""

    __tablename__ = "provider_holds"

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


async def active_until(session: AsyncSession, scope: str, now: datetime) -> datetime | None:
    """When the hold of `scope` lifts, if it has not yet."""
    until = await session.scalar(select(ProviderHold.not_before).where(ProviderHold.scope == scope))
    return until if until is not None and until > now else None


async def hold(
    session: AsyncSession, scope: str, until: datetime, reason: str, now: datetime
) -> None:
    """Hold `scope` until `until`, unless it is held longer already."""
    insert = upsert_insert(session)
    statement = insert(ProviderHold).values(
        scope=scope, not_before=until, reason=reason[:500], updated_at=now
    )
    later = statement.excluded.not_before > ProviderHold.not_before
    statement = statement.on_conflict_do_update(
        index_elements=[ProviderHold.scope],
        set_={
            "not_before": case(
                (later, statement.excluded.not_before), else_=ProviderHold.not_before
            ),
            "reason": case((later, statement.excluded.reason), else_=ProviderHold.reason),
            "updated_at": now,
        },
    )
    await session.execute(statement)
