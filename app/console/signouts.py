"""Signing out for good: a signed-out session's cookie is refused on every replica, even when a
copy of it outlives the browser's (the cookie itself stays valid until it expires)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.console.auth import Operator
from app.console.models import ConsoleSignout
from app.core.db import upsert_insert


async def sign_out(
    session: AsyncSession, operator: Operator, *, now: datetime, max_age: timedelta
) -> None:
    """Refuse this session from now on; forget signed-out sessions whose cookies expired."""
    await session.execute(delete(ConsoleSignout).where(ConsoleSignout.expires_at < now))
    insert = upsert_insert(session)
    await session.execute(
        insert(ConsoleSignout)
        .values(
            session_id=operator.session_id,
            operator=operator.name,
            signed_out_at=now,
            expires_at=now + max_age,  # no cookie of the session lives longer than this
        )
        .on_conflict_do_nothing(index_elements=[ConsoleSignout.session_id])
    )


async def is_signed_out(session: AsyncSession, operator: Operator) -> bool:
    """Whether this session was signed out."""
    found = await session.scalar(
        select(ConsoleSignout.session_id).where(ConsoleSignout.session_id == operator.session_id)
    )
    return found is not None
