"""Making and deleting uploads: the order of store writes and row changes, and idempotency.

The object is always written before its row and deleted after it, so a crash at any point
leaves at worst an object without a row (an orphan, removed later by the sweep,
`app.uploads.sweeping`), never a row that names a missing object."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.errors import ApiProblem
from app.storage.store import ObjectStore, StoreError
from app.tasks.reference_usage import key_referenced, upload_in_use
from app.uploads import repository
from app.uploads.ingest import Ingested, ingest
from app.uploads.models import Upload
from app.uploads.schemas import new_upload_id

log = logging.getLogger(__name__)

Sessions = async_sessionmaker[AsyncSession]


def _not_found() -> ApiProblem:
    return ApiProblem(404, "not_found", "no such upload (unknown, expired or deleted)")


async def discard_object(store: ObjectStore, key: str) -> None:
    """Delete an object no row or task needs; a store failure leaves it to the orphan sweep."""
    try:
        await store.delete(key)
    except StoreError as exc:
        log.warning(
            "could not delete an upload's object; the sweep will",
            extra={"key": key, "error": str(exc)},
        )


async def create_upload(
    sessions: Sessions,
    store: ObjectStore,
    *,
    caller: str,
    idempotency_key: str | None,
    chunks: AsyncIterator[bytes],
    file_name: Callable[[], str | None],
    ttl: timedelta,
) -> tuple[Upload, bool]:
    """Check, store and record one upload; (the upload, True) when new, (the earlier upload
    of this Idempotency-Key, False) when the same bytes were sent with it before.

    No transaction is open while the body streams. A key already used is checked first, and
    then the body is only hashed, never stored; two requests with one key racing both store
    their object, the unique (caller, idempotency_key) decides, the loser deletes its copy."""
    existing = None
    if idempotency_key is not None:
        async with sessions() as session:
            existing = await repository.get_by_idempotency_key(session, caller, idempotency_key)
    upload_id = new_upload_id()
    if existing is not None:
        ingested = await ingest(chunks, upload_id=upload_id, store=None)
        return await _replayed(sessions, existing, ingested), False
    ingested = await ingest(chunks, upload_id=upload_id, store=store)
    now = utcnow()
    values = {
        "id": upload_id,
        "caller": caller,
        "idempotency_key": idempotency_key,
        "key": ingested.key,
        "content_type": ingested.content_type,
        "bytes": ingested.bytes,
        "sha256": ingested.sha256,
        "width": ingested.width,
        "height": ingested.height,
        "file_name": file_name(),
        "created_at": now,
        "expires_at": now + ttl,
    }
    try:
        async with sessions.begin() as session:
            inserted = await repository.insert_if_new(session, values)
            row = await (
                session.get(Upload, upload_id)
                if inserted
                else repository.get_by_idempotency_key(session, caller, str(idempotency_key))
            )
    except Exception:
        await discard_object(store, ingested.key)
        raise
    if not inserted:
        await discard_object(store, ingested.key)
    if row is None:  # pragma: no cover - the conflicting row was committed before ours failed
        raise ApiProblem(409, "conflict", "a request with this Idempotency-Key is in progress")
    if not inserted:
        return await _replayed(sessions, row, ingested), False
    log.info(
        "upload stored",
        extra={"upload_id": upload_id, "caller": caller, "bytes": ingested.bytes},
    )
    return row, True


async def _replayed(sessions: Sessions, existing: Upload, ingested: Ingested) -> Upload:
    """The earlier upload of an Idempotency-Key, if this request sent the same bytes."""
    if existing.sha256 != ingested.sha256:
        raise ApiProblem(
            422,
            "idempotency_key_reused",
            "Idempotency-Key was already used to upload different bytes",
        )
    async with sessions() as session:
        visible = await repository.get_visible(session, existing.caller, existing.id, utcnow())
    if visible is None:
        raise ApiProblem(
            409,
            "upload_expired",
            "the upload this Idempotency-Key made has expired; upload again with a new key",
        )
    return visible


async def delete_upload(
    sessions: Sessions, store: ObjectStore, *, caller: str, upload_id: str, now: datetime
) -> None:
    """Delete the caller's upload: 404 when it is not visible (unknown, another caller's,
    expired and unused), 409 while a task that is not terminal uses it. The object goes too,
    unless a task's reference names it (a terminal task keeps its references readable).

    The row is deleted first and the use checked after, in one transaction: on PostgreSQL the
    DELETE waits for a create holding the row (`repository.lock_usable`), and the check, a
    later statement, then sees that create's references."""
    async with sessions() as session:
        row = await repository.delete_own(session, caller, upload_id)
        if row is None:
            raise _not_found()
        if await upload_in_use(session, upload_id):
            await session.rollback()
            raise ApiProblem(
                409,
                "upload_in_use",
                "a task that is not finished uses this upload; delete it once the task is",
            )
        if row.expires_at <= now:  # gone for the caller already; the sweep removes it
            await session.rollback()
            raise _not_found()
        await session.commit()
    async with sessions() as session:
        referenced = await key_referenced(session, row.key)
    if not referenced:
        await discard_object(store, row.key)
    log.info("upload deleted", extra={"upload_id": upload_id, "object_kept": referenced})
