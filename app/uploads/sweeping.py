"""The upload sweep: a periodic loop in every worker process that deletes expired uploads no
unfinished task uses, and objects under `uploads/` that nothing names (orphans).

Rules (docs/reference-images.md, "Lifecycle"):
- An upload is swept once `expires_at` is more than GRACE in the past and no task that is not
  terminal references it. A create accepts an upload only while `expires_at > now`, so a create
  racing the expiry has GRACE to commit its references before the sweep may look at the row.
- The row goes first (a conditional DELETE: any number of sweepers at once delete each row
  once), then the object, unless a task's reference names its key. A crash in between leaves
  an orphan object, never a row without its object.
- Orphans: objects under `uploads/` older than ORPHAN_AGE that no upload row and no reference
  names (a crash between the store write and the row insert, or the case above), and the file
  store's staging files of uploads a crash interrupted, swept every ORPHANS_EVERY. An object
  is written just before its row, so an hour-old object without a row will never get one.
Deleting an object that is already gone is not an error."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import metrics
from app.core.clock import utcnow
from app.storage.store import ObjectStore, StoreError
from app.tasks.reference_usage import referenced_keys
from app.uploads import repository
from app.uploads.ingest import UPLOAD_PREFIX

log = logging.getLogger(__name__)

EVERY: Final = timedelta(minutes=1)
GRACE: Final = timedelta(minutes=10)
ORPHANS_EVERY: Final = timedelta(hours=1)
ORPHAN_AGE: Final = timedelta(hours=1)
BATCH: Final = 200


@dataclass
class SweepResult:
    """What one sweep deleted."""

    rows: int = 0  # expired upload rows
    objects: int = 0  # their objects (the others are kept for tasks' references)
    orphans: int = 0  # objects without a row or a reference

    def __bool__(self) -> bool:
        return bool(self.rows or self.objects or self.orphans)


async def _delete_objects(store: ObjectStore, keys: set[str]) -> int:
    deleted = 0
    for key in sorted(keys):
        try:
            await store.delete(key)
        except StoreError as exc:
            log.warning(
                "could not delete an upload's object; a later sweep will",
                extra={"key": key, "error": str(exc)},
            )
            continue
        deleted += 1
    return deleted


async def sweep_expired(
    sessions: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    now: datetime,
    *,
    grace: timedelta = GRACE,
    batch: int = BATCH,
) -> SweepResult:
    """Delete every upload expired before `now - grace` that no unfinished task uses, and its
    object unless a task's reference names it."""
    result = SweepResult()
    while True:
        async with sessions.begin() as session:
            deleted = await repository.delete_expired(session, now - grace, batch)
        if not deleted:
            return result
        keys = {key for _id, key in deleted}
        async with sessions() as session:
            kept = await referenced_keys(session, keys)
        result.rows += len(deleted)
        result.objects += await _delete_objects(store, keys - kept)
        if len(deleted) < batch:
            return result


async def sweep_orphans(
    sessions: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    now: datetime,
    *,
    min_age: timedelta = ORPHAN_AGE,
) -> SweepResult:
    """Delete objects under `uploads/` older than `min_age` that no row or reference names, and
    the file store's staging files of uploads a killed process never finished."""
    result = SweepResult()
    result.orphans += await store.remove_abandoned_parts(UPLOAD_PREFIX, now - min_age)
    async for listed in store.list_batches(UPLOAD_PREFIX):
        old = {item.key for item in listed if item.last_modified < now - min_age}
        if not old:
            continue
        async with sessions() as session:
            named = await repository.known_keys(session, old) | await referenced_keys(session, old)
        result.orphans += await _delete_objects(store, old - named)
    return result


class UploadSweeper:
    """Runs `sweep_expired` every EVERY and `sweep_orphans` every ORPHANS_EVERY (each with
    jitter, so replicas spread out) until stopped; a failed sweep is logged and tried again at
    the next tick."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], store: ObjectStore) -> None:
        self._sessions = sessions
        self._store = store

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep until `stop` is set."""
        loop = asyncio.get_running_loop()
        orphans_due = time.monotonic() + _jittered(ORPHANS_EVERY)
        while not stop.is_set():
            with_orphans = time.monotonic() >= orphans_due
            if with_orphans:
                orphans_due = time.monotonic() + _jittered(ORPHANS_EVERY)
            await self.sweep(with_orphans=with_orphans)
            waiter = loop.create_task(stop.wait())
            await asyncio.wait({waiter}, timeout=_jittered(EVERY))
            waiter.cancel()

    async def sweep(self, *, with_orphans: bool) -> SweepResult:
        """One sweep; logs a line and counts when it deleted something. Never raises."""
        now = utcnow()
        result = SweepResult()
        try:
            result = await sweep_expired(self._sessions, self._store, now)
            if with_orphans:
                result.orphans = (await sweep_orphans(self._sessions, self._store, now)).orphans
        except Exception:
            log.exception("the upload sweep failed; it runs again at the next tick")
        if result:
            metrics.UPLOADS_SWEPT.labels("rows").inc(result.rows)
            metrics.UPLOADS_SWEPT.labels("objects").inc(result.objects)
            metrics.UPLOADS_SWEPT.labels("orphans").inc(result.orphans)
            log.info(
                "upload sweep",
                extra={
                    "rows_deleted": result.rows,
                    "objects_deleted": result.objects,
                    "orphans_deleted": result.orphans,
                },
            )
        return result


def _jittered(period: timedelta) -> float:
    """`period` in seconds, plus or minus 10%."""
    return period.total_seconds() * random.uniform(0.9, 1.1)  # jitter, not a secret
