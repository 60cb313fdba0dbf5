"""All queries on the uploads table. Functions flush at most; the caller's boundary commits."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import delete, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import upsert_insert
from app.tasks.reference_usage import upload_in_use_clause
from app.uploads.models import Upload


async def insert_if_new(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert an upload unless (caller, idempotency_key) exists; True when inserted."""
    insert = upsert_insert(session)
    statement = (
        insert(Upload)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[Upload.caller, Upload.idempotency_key])
        .returning(Upload.id)
    )
    return await session.scalar(statement) is not None


async def get_by_idempotency_key(session: AsyncSession, caller: str, key: str) -> Upload | None:
    """The caller's upload made with this Idempotency-Key, expired or not."""
    return await session.scalar(
        select(Upload).where(Upload.caller == caller, Upload.idempotency_key == key)
    )


async def get_visible(
    session: AsyncSession, caller: str, upload_id: str, now: datetime
) -> Upload | None:
    """The caller's upload, unless it expired and no task that is not terminal uses it."""
    return await session.scalar(
        select(Upload).where(
            Upload.id == upload_id,
            Upload.caller == caller,
            or_(Upload.expires_at > now, upload_in_use_clause(Upload.id)),
        )
    )


async def lock_usable(
    session: AsyncSession, caller: str, upload_id: str, now: datetime
) -> Upload | None:
    """For a create that references the upload: the caller's upload if it has not expired,
    share-locked until the transaction ends (on PostgreSQL), so that a concurrent DELETE waits
    for the create's references and then sees them (see `app.uploads.service.delete_upload`)."""
    return await session.scalar(
        select(Upload)
        .where(Upload.id == upload_id, Upload.caller == caller, Upload.expires_at > now)
        .with_for_update(read=True)
    )


async def delete_own(session: AsyncSession, caller: str, upload_id: str) -> Upload | None:
    """Delete the caller's upload row; what it held, or None when there is none."""
    row = await session.execute(
        delete(Upload)
        .where(Upload.id == upload_id, Upload.caller == caller)
        .returning(*Upload.__table__.columns)
    )
    found = row.mappings().one_or_none()
    return None if found is None else Upload(**dict(found))


async def delete_expired(
    session: AsyncSession, cutoff: datetime, limit: int
) -> list[tuple[str, str]]:
    """Delete up to `limit` uploads that expired before `cutoff` and that no task that is not
    terminal uses; their (id, key). A row another sweeper deleted first is simply not returned."""
    unused = (Upload.expires_at < cutoff, not_(upload_in_use_clause(Upload.id)))
    chosen = select(Upload.id).where(*unused).order_by(Upload.expires_at).limit(limit)
    result = await session.execute(
        delete(Upload)
        .where(Upload.id.in_(chosen.scalar_subquery()), *unused)
        .returning(Upload.id, Upload.key)
    )
    return [(row.id, row.key) for row in result]


async def known_keys(session: AsyncSession, keys: Collection[str]) -> set[str]:
    """Those of `keys` that an upload row names."""
    if not keys:
        return set()
    found = await session.scalars(select(Upload.key).where(Upload.key.in_(list(keys))))
    return set(found)
