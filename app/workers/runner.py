"""The worker loop: claim due jobs with leases, run them concurrently, record outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import metrics
from app.core.clock import utcnow
from app.core.retry import RetryStrategy
from app.workers import repository
from app.workers.models import Job, JobKind
from app.workers.outcomes import Done, Outcome, RetryAt

log = logging.getLogger(__name__)
# Waits after failed claims (2 s doubling to 30 s) and failed records of an outcome (0.5 s
# doubling, five attempts).
CLAIM_RETRY = RetryStrategy(base=timedelta(seconds=2), cap=timedelta(seconds=30), jitter=0.0)
RECORD_RETRY = RetryStrategy(base=timedelta(seconds=0.5), jitter=0.0)
RECORD_ATTEMPTS = 5

Handler = Callable[[Job], Awaitable[Outcome]]


def worker_name() -> str:
    """A name unique to this process, readable in the job table."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Runs the handlers of some job kinds, at most `concurrency` jobs at a time."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        handlers: Mapping[JobKind, Handler],
        *,
        concurrency: int = 8,
        lease: timedelta = timedelta(seconds=30),
        idle_wait: float = 1.0,
        grace: float = 10.0,
        retry: RetryStrategy | None = None,
        caps: Mapping[JobKind, int] | None = None,
    ) -> None:
        self.name = worker_name()
        self._sessions = sessions
        self._handlers = dict(handlers)
        self._concurrency = concurrency
        self._lease = lease
        self._idle_wait = idle_wait
        self._grace = grace
        self._retry = retry or RetryStrategy()
        self._wakeup = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._kinds: dict[int, str] = {}
        # The most slots jobs of a kind may hold at once in this worker (notifications: a share
        # of the pool, so that slow receivers never hold every slot).
        self._caps = {kind: max(1, cap) for kind, cap in (caps or {}).items()}

    def wake(self) -> None:
        """Look for due jobs now instead of at the next idle tick."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop` is set, then drain within the grace period."""
        heartbeat = asyncio.create_task(self._heartbeat())
        failures = 0
        try:
            while not stop.is_set():
                try:
                    claimed = await self._claim()
                    failures = 0
                except Exception:
                    failures += 1
                    log.exception("claiming jobs failed", extra={"worker": self.name})
                    claimed = 0
                    await self._sleep(stop, CLAIM_RETRY.delay(failures).total_seconds())
                    continue
                if claimed and len(self._running) < self._concurrency:
                    continue
                await self._sleep(stop, self._idle_wait)
        finally:
            try:
                await self._drain()  # leases stay renewed while the running jobs finish
            finally:
                heartbeat.cancel()

    async def _claim(self) -> int:
        free = self._concurrency - len(self._running)
        if free <= 0:
            return 0
        uncapped = [kind for kind in self._handlers if kind not in self._caps]
        jobs: list[Job] = []
        async with self._sessions.begin() as session:
            # Capped kinds first, each up to the room under its cap; the rest of the pool then.
            for kind, cap in self._caps.items():
                if kind not in self._handlers:
                    continue
                held = sum(1 for running in self._kinds.values() if running == kind)
                room = min(free - len(jobs), cap - held)
                if room > 0:
                    jobs += await self._claim_kinds(session, [kind], room)
            if free - len(jobs) > 0 and uncapped:
                jobs += await self._claim_kinds(session, uncapped, free - len(jobs))
        return self._start(jobs)

    async def _claim_kinds(
        self, session: AsyncSession, kinds: list[JobKind], limit: int
    ) -> list[Job]:
        return await repository.claim(
            session, worker=self.name, kinds=kinds, now=utcnow(), lease=self._lease, limit=limit
        )

    def _start(self, jobs: list[Job]) -> int:
        for job in jobs:
            if job.attempts > 1 and job.last_error is None:
                metrics.LEASE_TAKEOVERS.labels(job.kind).inc()
                log.info("job taken over", extra={"job_id": job.id, "task_id": job.task_id})
            task = asyncio.create_task(self._run_one(job), name=f"job-{job.id}")
            self._running[job.id] = task
            self._kinds[job.id] = job.kind
            task.add_done_callback(functools.partial(self._finished, job.id))
        return len(jobs)

    def _finished(self, job_id: int, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._kinds.pop(job_id, None)
        self._wakeup.set()

    async def _run_one(self, job: Job) -> None:
        handler = self._handlers[JobKind(job.kind)]
        extra = {"job_id": job.id, "job_kind": job.kind, "task_id": job.task_id}
        try:
            outcome = await handler(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job failed unexpectedly", extra=extra)
            outcome = RetryAt(utcnow() + self._retry.delay(job.attempts), f"{type(exc).__name__}")
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                async with self._sessions.begin() as session:
                    kept = await repository.finish(
                        session, job.id, worker=self.name, outcome=outcome, now=utcnow()
                    )
                if not kept:
                    log.warning("job lease was lost before it finished", extra=extra)
                metrics.JOBS_FINISHED.labels(job.kind, _outcome_name(outcome)).inc()
                return
            except Exception:
                log.exception("recording a job outcome failed", extra=extra)
                await asyncio.sleep(RECORD_RETRY.delay(attempt).total_seconds())

    async def _heartbeat(self) -> None:
        period = max(self._lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(Exception):
                async with self._sessions.begin() as session:
                    await repository.extend_leases(
                        session,
                        list(self._running),
                        worker=self.name,
                        until=utcnow() + self._lease,
                    )

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        self._wakeup.clear()
        waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period; cancel the rest and release them."""
        if not self._running:
            return
        running, kinds = dict(self._running), dict(self._kinds)
        log.info(
            "finishing running jobs before stopping",
            extra={"worker": self.name, "jobs": len(running), "grace_seconds": self._grace},
        )
        _done, pending = await asyncio.wait(running.values(), timeout=self._grace)
        unfinished = [job_id for job_id, task in running.items() if task in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if not unfinished:
            return
        try:
            async with self._sessions.begin() as session:
                await repository.release(session, unfinished, worker=self.name)
        except Exception:
            log.exception(
                "could not release unfinished jobs; their leases will expire",
                extra={"worker": self.name, "job_ids": unfinished},
            )
            return
        for job_id in unfinished:
            metrics.JOBS_FINISHED.labels(kinds[job_id], "released").inc()
        log.info("released unfinished jobs", extra={"worker": self.name, "job_ids": unfinished})


def _outcome_name(outcome: Outcome) -> str:
    return "done" if isinstance(outcome, Done) else "retry"
