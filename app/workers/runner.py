"""The worker loop: claim due jobs with leases, run them concurrently, record outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import metrics
from app.core.clock import utcnow
from app.core.retry import RetryStrategy
from app.workers import repository, signals
from app.workers.models import Job, JobKind
from app.workers.outcomes import Done, Outcome, RetryAt
from app.workers.queues import JobQueue, SessionJobQueue

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
        queue: JobQueue | None = None,
        claim_on_finish: bool = False,
    ) -> None:
        self.name = worker_name()
        # Where the loop's own statements run (claims, outcomes, leases): the sessions unless
        # given a queue of its own (PostgreSQL: app/workers/pg_queue.py).
        self._queue = queue or SessionJobQueue(sessions)
        self._handlers = dict(handlers)
        self._concurrency = concurrency
        self._lease = lease
        self._idle_wait = idle_wait
        self._grace = grace
        self._retry = retry or RetryStrategy()
        self._wakeup = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._kinds: dict[int, str] = {}
        # Jobs whose handler returned, in order, waiting for the next cycle to record them.
        self._outcomes: list[_Finished] = []
        self._asked = 0  # how many jobs the last cycle's claim asked for
        # Whether the next cycle claims: on a wake-up, the idle tick, after a job whose handler
        # enqueued due work (app/workers/signals.py), or while due jobs may wait for a slot.
        # A cycle that only records finished jobs does not ask the table for more.
        self._claim_wanted = True
        self._more_due = False
        # Without an API in the process to wake it, each finished job is also a look for due
        # jobs (other processes' creates and callbacks), as every cycle was before signals.
        self._claim_on_finish = claim_on_finish
        self._last_claim = time.monotonic()
        self._at_cap = False
        # The most slots jobs of a kind may hold at once in this worker (notifications: a share
        # of the pool, so that slow receivers never hold every slot).
        self._caps = {kind: max(1, cap) for kind, cap in (caps or {}).items()}

    def wake(self) -> None:
        """Look for due jobs now instead of at the next idle tick."""
        self._claim_wanted = True
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop` is set, then drain within the grace period."""
        heartbeat = asyncio.create_task(self._heartbeat())
        failures = 0
        try:
            while not stop.is_set():
                # Cleared before the cycle, not before the sleep: a wake-up that arrives while
                # the cycle's transaction runs (a job finished, one was enqueued) is not lost.
                self._wakeup.clear()
                await asyncio.sleep(0)  # jobs that finish in this turn of the loop join the cycle
                try:
                    claimed = await self._cycle()
                    failures = 0
                except Exception:
                    failures += 1
                    log.exception("claiming jobs failed", extra={"worker": self.name})
                    self._count_failed_records()
                    self._claim_wanted = True
                    await self._sleep(stop, CLAIM_RETRY.delay(failures).total_seconds())
                    continue
                # Claim again at once only when the claim filled what it asked for (more may be
                # due): one that got fewer found every due job, and asking again would find none.
                if self._wakeup.is_set() or (
                    claimed and claimed == self._asked and len(self._running) < self._concurrency
                ):
                    continue
                # Until the idle tick (counted from the last claim, however often jobs finish
                # meanwhile): other processes' jobs, retries that fell due.
                await self._sleep(
                    stop, max(0.0, self._last_claim + self._idle_wait - time.monotonic())
                )
        finally:
            try:
                await self._drain()  # leases stay renewed while the running jobs finish
            finally:
                heartbeat.cancel()

    async def _cycle(self) -> int:
        """Record the outcomes of the jobs that finished since the last cycle, then lease due
        jobs for the free slots; the number of jobs started. Finishing first lets a job
        enqueued again while it ran (`rerun`) be claimed in the same cycle."""
        outcomes = list(self._outcomes)  # jobs may finish while this runs: they wait a cycle
        groups = self._claim_groups()
        self._asked = min(
            self._concurrency - len(self._running), sum(group.limit for group in groups)
        )
        ticked = time.monotonic() - self._last_claim >= self._idle_wait
        claim = self._claim_wanted or self._more_due or ticked
        if not outcomes and not (claim and groups):
            if claim and not groups:  # no slot free: claim when one frees, not before
                self._more_due = True
                self._last_claim = time.monotonic()
            return 0
        self._claim_wanted = False  # a wake-up while the cycle runs sets it again
        jobs = await self._queue.cycle(
            [(finished.job.id, finished.outcome) for finished in outcomes],
            recorded=functools.partial(self._recorded, outcomes),
            worker=self.name,
            groups=groups,
            total=self._concurrency - len(self._running),
            now=utcnow(),
            lease=self._lease,
            claim=claim,
        )
        if claim or jobs:  # (without `claim`: a job was due again at once, and claimed)
            self._last_claim = time.monotonic()
            self._more_due = self._at_cap or _may_leave_due(groups, jobs, self._asked)
        return self._start(jobs)

    def _claim_groups(self) -> list[repository.KindGroup]:
        """Capped kinds first, each up to the room under its cap; the rest of the pool then."""
        free = self._concurrency - len(self._running)
        self._at_cap = False  # some capped kind holds its whole cap (not asked for)
        if free <= 0:
            return []
        groups = []
        for kind, cap in self._caps.items():
            if kind in self._handlers:
                held = sum(1 for running in self._kinds.values() if running == kind)
                groups.append(repository.KindGroup((kind,), min(free, cap - held)))
                self._at_cap = self._at_cap or held >= cap
        uncapped = tuple(kind for kind in self._handlers if kind not in self._caps)
        if uncapped:
            groups.append(repository.KindGroup(uncapped, free))
        return [group for group in groups if group.limit > 0]

    def _recorded(self, outcomes: list[_Finished], kept: set[int]) -> None:
        """Forget recorded outcomes (the first ones of the list: others were only appended)."""
        del self._outcomes[: len(outcomes)]
        for finished in outcomes:
            job = finished.job
            if job.id not in kept:
                log.warning(
                    "job lease was lost before it finished",
                    extra={"job_id": job.id, "job_kind": job.kind, "task_id": job.task_id},
                )
            metrics.JOBS_FINISHED.labels(job.kind, _outcome_name(finished.outcome)).inc()

    def _count_failed_records(self) -> None:
        """After RECORD_ATTEMPTS failed cycles an outcome is given up: its lease expires and the
        job runs again elsewhere (as when a worker dies)."""
        for finished in list(self._outcomes):
            finished.failures += 1
            if finished.failures >= RECORD_ATTEMPTS:
                self._outcomes.remove(finished)
                job = finished.job
                log.error(
                    "gave up recording a job outcome; its lease will expire",
                    extra={"job_id": job.id, "job_kind": job.kind, "task_id": job.task_id},
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
        """Run the handler; its outcome is recorded by the next cycle of the loop."""
        handler = self._handlers[JobKind(job.kind)]
        enqueued = signals.watch()  # this task's own context: what its handler enqueues
        try:
            outcome = await handler(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            extra = {"job_id": job.id, "job_kind": job.kind, "task_id": job.task_id}
            log.exception("job failed unexpectedly", extra=extra)
            outcome = RetryAt(utcnow() + self._retry.delay(job.attempts), f"{type(exc).__name__}")
        if enqueued.due or self._claim_on_finish:
            self._claim_wanted = True  # claimed by the cycle that records this job
        self._outcomes.append(_Finished(job, outcome))

    async def _heartbeat(self) -> None:
        period = max(self._lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(period)
            # Finished jobs whose outcome is not recorded yet are still this worker's.
            held = [*self._running, *(finished.job.id for finished in self._outcomes)]
            with contextlib.suppress(Exception):
                await self._queue.extend(held, worker=self.name, until=utcnow() + self._lease)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period; cancel the rest; record the
        outcomes of the finished ones and release the rest."""
        unfinished: list[int] = []
        kinds = dict(self._kinds)
        if self._running:
            running = dict(self._running)
            log.info(
                "finishing running jobs before stopping",
                extra={"worker": self.name, "jobs": len(running), "grace_seconds": self._grace},
            )
            _done, pending = await asyncio.wait(running.values(), timeout=self._grace)
            unfinished = [job_id for job_id, task in running.items() if task in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if not self._outcomes and not unfinished:
            return
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            outcomes = list(self._outcomes)
            try:
                kept = await self._queue.finish_and_release(
                    [(finished.job.id, finished.outcome) for finished in outcomes],
                    unfinished,
                    worker=self.name,
                    now=utcnow(),
                )
            except Exception:
                log.exception("recording outcomes at shutdown failed", extra={"worker": self.name})
                await asyncio.sleep(RECORD_RETRY.delay(attempt).total_seconds())
                continue
            self._recorded(outcomes, kept)
            break
        else:
            log.error(
                "could not record or release the jobs of this worker; their leases will expire",
                extra={"worker": self.name, "job_ids": unfinished},
            )
            return
        for job_id in unfinished:
            metrics.JOBS_FINISHED.labels(kinds[job_id], "released").inc()
        if unfinished:
            log.info("released unfinished jobs", extra={"worker": self.name, "job_ids": unfinished})


@dataclass(eq=False, slots=True)
class _Finished:
    """A job whose handler returned, and its outcome, until a cycle records it."""

    job: Job
    outcome: Outcome
    failures: int = 0  # cycles that failed to record it


def _may_leave_due(groups: list[repository.KindGroup], jobs: list[Job], asked: int) -> bool:
    """Whether due jobs may still wait after a claim that took `jobs`: it had no free slot to
    ask with, it took all it asked for, or some group took its whole limit (a capped kind at
    its cap: the next slot under the cap that frees may take another)."""
    if not groups or len(jobs) >= asked:
        return True
    return any(sum(job.kind in group.kinds for job in jobs) >= group.limit for group in groups)


def _outcome_name(outcome: Outcome) -> str:
    return "done" if isinstance(outcome, Done) else "retry"
