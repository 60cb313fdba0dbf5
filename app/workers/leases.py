"""Named leases in the database: whoever takes one may do its work until it expires, and no one
else may take it before then (one poll of the provider's balance per period across every
replica, for instance). A lease is never released early: its expiry is its period."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime, upsert_insert


class Lease(Base):
    """One named lease and its current holder."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


async def take(
    session: AsyncSession, name: str, holder: str, now: datetime, duration: timedelta
) -> bool:
    """Take the lease `name` until `now + duration` if no one holds it past `now` (the holder
    itself included); True when taken. One statement: concurrent takers on PostgreSQL wait for
    each other's row lock and see the winner's expiry, so exactly one of them wins."""
    insert = upsert_insert(session)
    statement = insert(Lease).values(name=name, holder=holder, expires_at=now + duration)
    statement = statement.on_conflict_do_update(
        index_elements=[Lease.name],
        set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
        where=Lease.expires_at <= now,
    ).returning(Lease.name)
    return (await session.execute(statement)).scalar_one_or_none() is not None
