"""Queries on the callback inbox."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.callbacks.models import CallbackDelivery
from app.core.db import upsert_insert


async def record_if_new(
    session: AsyncSession, *, task_id: str, digest: str, body: bytes, now: datetime
) -> bool:
    """Insert a delivery unless this body was seen for this task; True when new.

    `ON CONFLICT DO NOTHING RETURNING` decides concurrent duplicates in the database: exactly
    one of them gets a row id, so exactly one applies the transition."""
    insert = upsert_insert(session)
    statement = (
        insert(CallbackDelivery)
        .values(
            task_id=task_id,
            digest=digest,
            body=body,
            outcome="",
            deliveries=1,
            received_at=now,
            last_received_at=now,
        )
        .on_conflict_do_nothing(index_elements=[CallbackDelivery.task_id, CallbackDelivery.digest])
        .returning(CallbackDelivery.task_id)
    )
    return await session.scalar(statement) is not None


async def count_repeat(
    session: AsyncSession, *, task_id: str, digest: str, now: datetime
) -> str | None:
    """Note one more delivery of a body already recorded; what was done with its first one."""
    outcome: str | None = await session.scalar(
        update(CallbackDelivery)
        .where(CallbackDelivery.task_id == task_id, CallbackDelivery.digest == digest)
        .values(deliveries=CallbackDelivery.deliveries + 1, last_received_at=now)
        .returning(CallbackDelivery.outcome)
        .execution_options(synchronize_session=False)
    )
    return outcome


async def set_outcome(
    session: AsyncSession, task_id: str, digest: str, outcome: str, reported_status: str | None
) -> None:
    """What was done with a new delivery."""
    await session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.task_id == task_id, CallbackDelivery.digest == digest)
        .values(outcome=outcome, reported_status=reported_status)
        .execution_options(synchronize_session=False)
    )
