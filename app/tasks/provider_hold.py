"""The provider's "slow down" shared by every replica: after a 429 to a create, no replica sends
another create before `not_before` (the provider's Retry-After, else
IMAGEGEN_PROVIDER_RATE_LIMIT_WAIT_SECONDS).

One row per scope (`create`). Read by the submit job before its creates (while there is no
hold, at most once a second per process: HoldWatch) and written when a create is answered 429;
a later hold only ever moves the time later."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import String, Text, case, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime, upsert_insert

CREATE = "create"
# How long a read that found no hold stands for a process (HoldWatch).
RECHECK_SECONDS = 1.0


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


class HoldWatch:
    """One process's view of the hold of a scope, read at most once a RECHECK_SECONDS while
    there is none: a hold another replica records is seen up to that late (a create sent
    meanwhile is answered 429 at worst, and its own hold is then seen at once). A hold found
    is read again each time (it may have been lifted), and one recorded here after forget()."""

    def __init__(
        self,
        scope: str,
        recheck: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scope = scope
        self._recheck = recheck
        self._clock = clock
        self._clear_until = float("-inf")  # before this clock reading, no hold needs reading

    def due(self) -> bool:
        """Whether `active_until` would read the hold (else it answers None without reading)."""
        return self._clock() >= self._clear_until

    async def active_until(self, session: AsyncSession, now: datetime) -> datetime | None:
        """When the hold lifts, if it has not yet (as read at most RECHECK_SECONDS ago)."""
        if not self.due():
            return None
        held = await active_until(session, self._scope, now)
        if held is None:
            self._clear_until = self._clock() + self._recheck
        return held

    def forget(self) -> None:
        """Read the hold on the next look (this process is about to record one)."""
        self._clear_until = float("-inf")
