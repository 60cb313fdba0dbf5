"""The poll job: ask the provider about a task whose callback is late, lost or unconfirmed."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.core.retry import RetryStrategy
from app.provider.types import ProviderRejected, ProviderStatus, ProviderTask, ProviderUnavailable
from app.tasks import direct_writes, event_repository, repository, service
from app.tasks.context import TaskContext
from app.tasks.credits import changed_credits
from app.tasks.direct_writes import Direct, Writes
from app.tasks.events import EventKind
from app.tasks.models import Task
from app.tasks.rows import TaskRows
from app.tasks.states import ProviderNews, ServiceFailure, TaskStatus
from app.workers.models import Job
from app.workers.outcomes import Done, Outcome, RetryAt

log = logging.getLogger(__name__)

_ACTIVE = (TaskStatus.QUEUED.value, TaskStatus.PENDING.value, TaskStatus.PROCESSING.value)


class Poller:
    """Handler of `poll` jobs."""

    def __init__(self, context: TaskContext) -> None:
        self._ctx = context
        self._rows = TaskRows(context.sessions, context.direct)
        self._writes = Writes(context.sessions, context.direct)
        self._errors = RetryStrategy(base=timedelta(seconds=2), cap=timedelta(minutes=2))
        self._confirm = RetryStrategy(base=timedelta(seconds=1), cap=timedelta(minutes=1))

    async def __call__(self, job: Job) -> Outcome:
        task = await self._rows.get(job.task_id)
        if task is None or task.status not in _ACTIVE or task.provider_task_id is None:
            return Done()
        now = utcnow()
        # Past the wait, the provider still gets one last question: a task that finished while
        # this job was due (or queued behind others) is taken, not failed.
        timed_out = self._timed_out(task, now)
        quiet_until = (task.last_news_at or now) + self._ctx.settings.poll_after_seconds
        if (
            not timed_out
            and task.final_claimed_at is None
            and now < quiet_until
            and job.attempts > 1
        ):
            # Fresh news came in meanwhile: poll only after IMAGEGEN_POLL_AFTER_SECONDS of quiet.
            return RetryAt(quiet_until, "")
        extra = {
            "task_id": task.id,
            "caller": task.caller,
            "provider_task_id": task.provider_task_id,
        }
        try:
            news = await self._ctx.provider.get_task(task.provider_task_id)
        except (ProviderUnavailable, ProviderRejected) as exc:
            log.info("polling the provider failed", extra=extra | {"http_status": exc.status_code})
            await self._note(task, "error", exc.message, {"http_status": exc.status_code})
            if timed_out:
                return await self._give_up(task)
            return RetryAt(utcnow() + self._errors.delay(job.attempts), exc.message)
        if news.id != task.provider_task_id:
            message = "the provider answered about another task"
            await self._note(task, "error", message, {"provider_task_id": news.id})
            if timed_out:
                return await self._give_up(task)
            return RetryAt(utcnow() + self._errors.delay(job.attempts), message)
        claimed = task.final_claimed_at is not None  # as read before the question
        status = await self._apply(task, news)
        if status not in _ACTIVE:
            return Done()
        if timed_out:
            return await self._give_up(task)
        if claimed:
            # A callback said final but the query does not agree yet: confirm again soon.
            return RetryAt(utcnow() + self._confirm.delay(job.attempts), "confirmation pending")
        # CONTRACT.md: a task with no news for IMAGEGEN_POLL_AFTER_SECONDS is polled, so the next
        # poll comes that long after this answer (which is news), not on a growing backoff.
        return RetryAt(utcnow() + self._ctx.settings.poll_after_seconds, "")

    async def _apply(self, task: Task, news: ProviderTask) -> str:
        """Write the answer: its timeline line and the transition it implies. `task` is the row
        as read before the question: the transition is a conditional update, which reads the
        row again when news came in meanwhile, and progress only moves forward, so an answer
        that changes nothing from the older row changes nothing from the newer one either."""
        now = utcnow()
        extra: dict[str, Any] = {"last_news_at": now}
        if news.status is ProviderStatus.COMPLETED:
            extra |= {"result_urls": list(news.results), "provider_completed_at": now}
        line = event_repository.line(
            task.id,
            kind=EventKind.POLL,
            source="poll",
            at=now,
            outcome=news.raw_status,
            detail={"progress": news.progress},
        )
        billing = changed_credits(task, news)
        event = ProviderNews(news, confirmed=True)

        async def direct(target: Direct) -> str:
            await direct_writes.apply_event(
                target, task, event, now=now, source="poll", extra=extra | billing, line=line
            )
            return task.status

        async def in_session(session: AsyncSession) -> str:
            decision = await service.apply_event(
                session, task, event, now=now, source="poll", extra=extra | billing, line=line
            )
            if not decision.changed:
                await repository.update_fields(session, task.id, {"last_news_at": now, **billing})
            return task.status

        # An answer that changes nothing (its `last_news_at` only) takes the session path.
        return await self._writes.run(direct, in_session, transaction=False)

    async def _note(
        self, task: Task, outcome: str, message: str, detail: dict[str, Any] | None
    ) -> None:
        await event_repository.note(
            self._ctx.sessions,
            task.id,
            kind=EventKind.POLL,
            outcome=outcome,
            message=message,
            detail=detail,
        )

    def _timed_out(self, task: Task, now: datetime) -> bool:
        since = task.submitted_at or task.created_at
        if task.redriven_at is not None:  # a retry grants the provider another full wait
            since = max(since, task.redriven_at)
        return now - since > self._ctx.settings.poll_max_wait_seconds

    async def _give_up(self, task: Task) -> Outcome:
        wait = self._ctx.settings.poll_max_wait_seconds
        message = f"the provider did not finish the task within {wait}"
        failure = ServiceFailure("provider_timeout", message)
        await service.apply_alone(self._ctx.sessions, task.id, failure, source="poll")
        return Done()
