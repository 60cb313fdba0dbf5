"""The per-host breaker of notify URLs, shared by every replica (its state is in the database).

Closed: notifications to the host are sent. After `threshold` consecutive timeouts or connection
failures to it, the breaker opens until `open_until`: notifications to the host are not sent but
delayed to that time (never lost, never counted as attempts). Once that time passes it is
half-open: the first attempt to come takes the probe (a compare-and-set on `open_until`, which
it pushes out by the probe's own time limit so others keep waiting); an answer from the host,
of any status, closes the breaker, another timeout opens it again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, String, Text, case, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import literal, null

from app.core.db import Base, UTCDateTime, matched_any, upsert_insert


class NotifyHost(Base):
    """The breaker of one notify host."""

    __tablename__ = "notify_hosts"

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)  # consecutive timeouts or connect failures
    open_until: Mapped[datetime | None] = mapped_column(UTCDateTime())  # None: closed
    last_error: Mapped[str | None] = mapped_column(Text)  # for operators
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True, slots=True)
class Delayed:
    """The breaker of the host is open: try again at `until`."""

    until: datetime


async def admit(
    session: AsyncSession, host: str, now: datetime, probe_time: timedelta
) -> Delayed | None:
    """None when an attempt to `host` may be sent now (closed, or this attempt is the half-open
    probe); else when to try again. Commits nothing: the caller commits at once."""
    open_until = await session.scalar(select(NotifyHost.open_until).where(NotifyHost.host == host))
    if open_until is None:
        return None
    if open_until > now:
        return Delayed(open_until)
    took_probe = await session.execute(
        update(NotifyHost)
        .where(NotifyHost.host == host, NotifyHost.open_until == open_until)
        .values(open_until=now + probe_time, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if matched_any(took_probe):
        return None
    later = await session.scalar(select(NotifyHost.open_until).where(NotifyHost.host == host))
    return Delayed(later) if later is not None and later > now else None


async def answered(session: AsyncSession, host: str, now: datetime) -> None:
    """The host answered (any HTTP status): the breaker closes."""
    await session.execute(
        update(NotifyHost)
        .where(NotifyHost.host == host)
        .values(failures=0, open_until=null(), last_error=null(), updated_at=now)
        .execution_options(synchronize_session=False)
    )


async def failed(
    session: AsyncSession,
    host: str,
    now: datetime,
    *,
    threshold: int,
    open_for: timedelta,
    error: str,
) -> None:
    """One more timeout or connection failure: at `threshold` in a row the breaker opens (a
    failed probe opens it again)."""
    insert = upsert_insert(session)
    opens = now + open_for
    statement = insert(NotifyHost).values(
        host=host,
        failures=1,
        open_until=opens if threshold <= 1 else None,
        last_error=error[:500],
        updated_at=now,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[NotifyHost.host],
        set_={
            "failures": NotifyHost.failures + 1,
            "open_until": case(
                (NotifyHost.failures + 1 >= threshold, literal(opens, NotifyHost.open_until.type)),
                else_=NotifyHost.open_until,
            ),
            "last_error": statement.excluded.last_error,
            "updated_at": now,
        },
    )
    await session.execute(statement)
