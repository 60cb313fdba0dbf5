"""The archive job: copy each confirmed result image to the object store, exactly once.

The copy streams from the provider's link to the store (nothing is held in memory or inside a
database transaction); the image row is written once per (task, index) and the task becomes
`succeeded` when every image has one. No thumbnail is made here: the console makes one on its
first request for it (app/console/thumbnails.py; issue 17: most images are never viewed there,
and decoding was a large share of a task's CPU), so the row's thumbnail columns start NULL. Keys
are deterministic, so a copy repeated after a crash replaces its own object instead of adding
one."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.archive import repository as images
from app.archive.fetch import ImageInfo, LinkGone, TransientFetchError, open_image
from app.core import metrics
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.pg_compiled import LazyPool
from app.core.retry import RetryStrategy
from app.core.safe_http import FetchError, FetchPolicy
from app.core.urls import is_under
from app.storage.store import ObjectStore, StoreError
from app.tasks import direct_writes, event_repository, service
from app.tasks.direct_writes import Direct, Writes
from app.tasks.events import EventKind
from app.tasks.links import upstream_completed_at
from app.tasks.models import Task
from app.tasks.rows import TaskRows
from app.tasks.states import ArchiveDone, ServiceFailure, TaskStatus
from app.workers.models import Job
from app.workers.outcomes import Done, Outcome, RetryAt

log = logging.getLogger(__name__)

COPY_TIMEOUT = timedelta(minutes=10)


def image_key(task_id: str, index: int) -> str:
    """Where image `index` of a task lives in the store (the same for every attempt)."""
    return f"tasks/{task_id}/images/{index}"


@dataclass(frozen=True, slots=True)
class OwnImages:
    """Result links into this very service (the built-in simulator's files): the one place a
    download may reach the service's own, usually loopback, origin, through a client of its own
    that follows no redirect. Every other link goes through the generic fetcher and policy."""

    prefix: str  # e.g. http://127.0.0.1:8000/_simulator/files/
    fetcher: httpx.AsyncClient
    policy: FetchPolicy


@dataclass(frozen=True, slots=True)
class ArchiveContext:
    """What the archive job needs."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    store: ObjectStore
    fetcher: httpx.AsyncClient
    policy: FetchPolicy
    retry: RetryStrategy = field(
        default_factory=lambda: RetryStrategy(base=timedelta(seconds=2), cap=timedelta(minutes=10))
    )
    own_images: OwnImages | None = None
    # PostgreSQL: the job's first read straight on asyncpg (app/tasks/rows.py).
    direct: LazyPool | None = None

    def source(self, url: str) -> tuple[httpx.AsyncClient, FetchPolicy]:
        """The client and policy that download `url`."""
        own = self.own_images
        if own is not None and is_under(url, own.prefix):
            return own.fetcher, own.policy
        return self.fetcher, self.policy


class Archiver:
    """Handler of `archive` jobs."""

    def __init__(self, context: ArchiveContext) -> None:
        self._ctx = context
        self._rows = TaskRows(context.sessions, context.direct)
        self._writes = Writes(context.sessions, context.direct)

    async def __call__(self, job: Job) -> Outcome:
        found = await self._rows.read(job.task_id, images.HAS_IMAGES)
        if found is None or found[0].status != TaskStatus.ARCHIVING.value:
            return Done()
        task, (stored_before,) = found
        done: set[int] = set()
        if stored_before:  # an earlier attempt stored some: they are not copied again
            async with self._ctx.sessions() as session:
                done = await images.indexes_of(session, task.id)
        urls = list(task.result_urls or [])
        if not urls:
            return await self._fail(task, "archive_failed", "the provider gave no result link")
        deadline = self._deadline(task)
        last = len(urls) - 1
        for index, url in enumerate(urls):
            if index in done:
                continue
            try:
                info = await self._copy(task, index, url)
            except LinkGone as exc:
                return await self._fail(
                    task, "links_expired", f"image {index}: the provider's link is gone ({exc})"
                )
            except (FetchError, StoreError) as exc:
                permanent = isinstance(exc, FetchError) and exc.permanent
                await self._note(task, index, "error", str(exc))
                if permanent:
                    return await self._fail(task, "archive_failed", f"image {index}: {exc}")
                if utcnow() >= deadline:
                    return await self._fail(
                        task,
                        "archive_failed",
                        f"image {index} could not be copied before {deadline.isoformat()} "
                        f"(inside the provider's 24-hour link validity); last error: {exc}",
                    )
                retry_at = min(utcnow() + self._ctx.retry.delay(job.attempts), deadline)
                return RetryAt(retry_at, f"image {index}: {exc}")
            await self._record(task, index, url, info, finish=index == last)
            if index == last:
                return Done()
        return await self._finish(task)  # every image was stored by an earlier attempt

    def _deadline(self, task: Task) -> datetime:
        return upstream_completed_at(task) + self._ctx.settings.archive_deadline_seconds

    async def _copy(self, task: Task, index: int, url: str) -> ImageInfo:
        """Stream the image at `url` to its key."""
        key = image_key(task.id, index)
        fetcher, policy = self._ctx.source(url)
        started = time.perf_counter()
        try:
            # One attempt may not hold a worker forever, however slowly the link drips.
            async with asyncio.timeout(COPY_TIMEOUT.total_seconds()):
                async with open_image(fetcher, url, policy) as download:
                    await self._ctx.store.put_stream(
                        key, download.chunks(), content_type=download.content_type
                    )
        except TimeoutError:
            metrics.ARCHIVE_SECONDS.labels("error").observe(time.perf_counter() - started)
            raise TransientFetchError(f"copy did not finish within {COPY_TIMEOUT}") from None
        except Exception:
            metrics.ARCHIVE_SECONDS.labels("error").observe(time.perf_counter() - started)
            raise
        metrics.ARCHIVE_SECONDS.labels("stored").observe(time.perf_counter() - started)
        metrics.ARCHIVE_BYTES.inc(download.info.bytes)
        return download.info

    async def _record(
        self,
        task: Task,
        index: int,
        url: str,
        info: ImageInfo,
        *,
        finish: bool,
    ) -> None:
        """Write the image's row once; with `finish` (the last image: every earlier one has its
        row), the task's `succeeded` too, in the same transaction: should it not commit, the
        job's next attempt copies the image again to the same key, as it would have anyway."""
        now = utcnow()
        row = {
            "task_id": task.id,
            "index": index,
            "key": image_key(task.id, index),
            "content_type": info.content_type,
            "bytes": info.bytes,
            "sha256": info.sha256,
            "width": info.width,
            "height": info.height,
            "source_url": url[:2048],
            "thumbnail_key": None,  # made on the console's first request for it
            "thumbnail_error": None,
            "created_at": now,
        }

        def stored_line(written: bool) -> dict[str, Any] | None:
            if not written:
                return None
            return event_repository.line(
                task.id,
                kind=EventKind.ARCHIVE,
                source="archive",
                at=now,
                outcome="stored",
                detail={"index": index, "bytes": info.bytes, "sha256": info.sha256},
            )

        async def direct(target: Direct) -> bool:
            statement, parameters = images.record_once_statement(postgresql.insert, row)
            written = bool(await target.fetch(statement, parameters))
            await direct_writes.apply_event(
                target, task, ArchiveDone(), now=now, source="archive", line=stored_line(written)
            )
            return written

        async def in_session(session: AsyncSession) -> bool:
            written = await images.record_once(session, row)
            line = stored_line(written)
            if finish:  # the "stored" line goes in with the transition's, in one statement
                await service.apply_event(
                    session, task, ArchiveDone(), now=now, source="archive", line=line
                )
            elif line is not None:
                await event_repository.record_lines(session, [line])
            return written

        # The last image's row and `succeeded` in one transaction (direct on PostgreSQL, but
        # for a task whose `succeeded` opens a notification: the session path writes its row).
        one_statement = finish and task.notify_url is None
        written = await self._writes.run(
            direct if one_statement else None, in_session, transaction=True
        )
        log.info(
            "image archived",
            extra=_ids(task) | {"index": index, "bytes": info.bytes, "written": written},
        )

    async def _finish(self, task: Task) -> Outcome:
        await service.apply_alone(self._ctx.sessions, task.id, ArchiveDone(), source="archive")
        return Done()

    async def _fail(self, task: Task, code: str, message: str) -> Outcome:
        failure = ServiceFailure(code, message)
        await service.apply_alone(self._ctx.sessions, task.id, failure, source="archive")
        log.warning("archive failed", extra=_ids(task) | {"error_code": code})
        return Done()

    async def _note(self, task: Task, index: int, outcome: str, message: str) -> None:
        await event_repository.note(
            self._ctx.sessions,
            task.id,
            kind=EventKind.ARCHIVE,
            outcome=outcome,
            message=message,
            detail={"index": index},
        )


def _ids(task: Task) -> dict[str, object]:
    """What names a task in a log line."""
    return {
        "task_id": task.id,
        "caller": task.caller,
        "provider_task_id": task.provider_task_id,
    }
