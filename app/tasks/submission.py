"""The submit job: create the task upstream exactly once, or fail it clearly.

A create whose answer was lost may have produced a paid task upstream. Such a task is never
resubmitted automatically: the service waits for the provider's callback (which carries the
upstream id), and fails the task with `provider_timeout` if none arrives in time.

Reference images are prepared before the create is marked in flight (checked in the store, or
uploaded to the provider's Files API and recorded: app/tasks/reference_delivery.py), so that a
worker killed while preparing them leaves a task that is simply submitted again."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.callback_tokens import callback_url
from app.core.clock import utcnow
from app.core.db import write_durably
from app.core.input_tokens import input_key
from app.provider.types import (
    CreateTaskRequest,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderTask,
    ProviderUnavailable,
)
from app.tasks import (
    direct_writes,
    event_repository,
    pg_transition,
    provider_hold,
    reference_repository,
    repository,
    service,
)
from app.tasks.context import TaskContext
from app.tasks.credits import NOTHING_BILLED, provider_credits
from app.tasks.direct_writes import Direct, Writes
from app.tasks.events import EventKind
from app.tasks.models import SubmitState, Task
from app.tasks.reference_delivery import (
    ReferenceDelivery,
    ReferenceRejected,
    ReferenceUnavailable,
    TaskMovedOn,
)
from app.tasks.references import TaskReference
from app.tasks.rows import HAS_REFERENCES, TaskRows
from app.tasks.states import ProviderNews, ServiceFailure, TaskStatus
from app.workers import repository as jobs
from app.workers.models import Job, JobKind
from app.workers.outcomes import Done, Outcome, RetryAt

log = logging.getLogger(__name__)

T = TypeVar("T")


class Submitter:
    """Handler of `submit` jobs."""

    def __init__(self, context: TaskContext) -> None:
        self._ctx = context
        self._delivery = ReferenceDelivery(
            mode=context.settings.reference_delivery,
            public_base_url=context.callback_base_url,
            input_key=input_key(context.settings.callback_secret_bytes()),
            store=context.store,
            files=context.files,
            sessions=context.sessions,
        )
        # The shared 429 hold on creates, read at most once a second while there is none.
        self._hold = provider_hold.HoldWatch(provider_hold.CREATE)
        self._rows = TaskRows(context.sessions, context.direct)
        self._writes = Writes(context.sessions, context.direct)

    async def __call__(self, job: Job) -> Outcome:
        now = utcnow()
        max_wait = self._ctx.settings.submit_max_wait_seconds
        references: Sequence[TaskReference] = ()
        prepared = False
        found = await self._rows.read(job.task_id, HAS_REFERENCES)
        if found is None:
            return Done()
        task, (has_references,) = found
        if task.status != TaskStatus.QUEUED.value or task.provider_task_id is not None:
            return Done()
        unsure = task.submit_state in (SubmitState.IN_FLIGHT, SubmitState.UNCERTAIN)
        expired = now - task.created_at > max_wait
        ready = not unsure and not expired
        held = await self._held_until(now) if ready else None
        if held is not None:
            # Every replica waits for the provider's 429 to lift; fair claiming then drains
            # the backlog between callers.
            reason = f"waiting: the provider asked to slow down (HTTP 429) until {held}"
            return RetryAt(held, reason)
        if ready:
            if has_references:
                async with self._ctx.sessions() as session:
                    references = await reference_repository.in_order(session, task.id)
            prepared = not self._delivery.needs_preparation(references)
            if prepared and not await self._mark_in_flight(task, now):
                return Done()
        if unsure:
            return await self._outcome_unknown(task, now, reason=None)
        if expired:
            return await self._fail(
                task,
                "provider_timeout",
                f"the provider could not be reached to submit the task within {max_wait}",
            )
        if not prepared:
            # Every reference is checked or uploaded (and recorded) before the create is marked
            # in flight: a worker killed before the mark runs this again from here, reusing the
            # recorded uploads, and only a create in flight is ever uncertain.
            outcome = await self._prepare(task, job, references, now)
            if outcome is not None:
                return outcome
            async with self._ctx.sessions() as session:
                references = await reference_repository.in_order(session, task.id)
            if not await self._mark_in_flight(task, now):
                return Done()
        try:
            image_urls = self._delivery.upstream_urls(task, references, now=utcnow())
        except ReferenceRejected as exc:
            return await self._reference_rejected(task, exc)
        except ReferenceUnavailable as exc:
            # Only a copy that aged past its reuse while this job ran: never sent; try again.
            await self._set_submit_state(task, SubmitState.RETRY, attempt=("retry", exc.message))
            return RetryAt(utcnow() + self._ctx.retry.delay(job.attempts), exc.message)
        return await self._submit(task, job, image_urls)

    async def _mark_in_flight(self, task: Task, now: datetime) -> bool:
        """Record that a create is about to be sent (committed); False when the task moved on."""
        return await self._rows.update_fields(
            task.id,
            {
                "submit_state": SubmitState.IN_FLIGHT,
                "submit_attempts": task.submit_attempts + 1,
                "submit_started_at": now,
                "updated_at": now,
            },
            status=TaskStatus.QUEUED.value,
            submit_state=task.submit_state,
        )

    async def _held_until(self, now: datetime) -> datetime | None:
        """When the provider's hold on creates lifts, if it holds (read at most once a second
        while there is none: no session is opened in between)."""
        if not self._hold.due():
            return None
        async with self._ctx.sessions() as session:
            return await self._hold.active_until(session, now)

    async def _prepare(
        self, task: Task, job: Job, references: Sequence[TaskReference], now: datetime
    ) -> Outcome | None:
        """Check or upload the references; the job's outcome when the create is not to be sent
        now (the task failed, or a retry later), None when it is."""
        try:
            await self._delivery.prepare(task, references, now=now)
        except TaskMovedOn:
            return Done()
        except ReferenceRejected as exc:
            return await self._reference_rejected(task, exc)
        except ReferenceUnavailable as exc:
            delay = self._ctx.retry.delay(max(task.submit_attempts + 1, job.attempts))
            if exc.retry_after is not None:
                delay = max(delay, timedelta(seconds=exc.retry_after))
            if exc.status_code == 429:
                # The Files API's "slow down" is the account's, as a create's: every replica's
                # submissions (uploads and creates) wait for it.
                delay = max(delay, await self._hold_creates(exc))
            log.info(
                "reference images could not be delivered; submission will be retried",
                extra={
                    "task_id": task.id,
                    "caller": task.caller,
                    "http_status": exc.status_code,
                    "retry_in": delay.total_seconds(),
                },
            )
            await self._set_submit_state(task, SubmitState.RETRY, attempt=("retry", exc.message))
            return RetryAt(utcnow() + delay, exc.message)
        return None

    async def _reference_rejected(self, task: Task, exc: ReferenceRejected) -> Outcome:
        log.warning(
            "reference image refused; the task fails",
            extra={"task_id": task.id, "caller": task.caller, "http_status": exc.status_code},
        )
        note = ("rejected", exc.message)
        await self._set_submit_state(task, SubmitState.REJECTED, attempt=note)
        return await self._fail(task, "submission_rejected", exc.message)

    async def _submit(self, task: Task, job: Job, image_urls: tuple[str, ...]) -> Outcome:
        settings = self._ctx.settings
        request = CreateTaskRequest(
            prompt=task.prompt,
            size=task.size,
            quality=task.quality,
            image_urls=image_urls,
            model=task.model,
            n=task.n,
            callback_url=callback_url(
                self._ctx.callback_base_url,
                settings.callback_secret_bytes(),
                task.id,
                task.callback_nonce,
            ),
        )
        extra = {"task_id": task.id, "caller": task.caller, "attempt": task.submit_attempts + 1}
        try:
            accepted = await self._ctx.provider.create_task(request)
        except ProviderRejected as exc:
            log.warning(
                "provider rejected the submission",
                extra=extra | {"http_status": exc.status_code, "provider_code": exc.code},
            )
            status = f"HTTP {exc.status_code}" if exc.status_code else "refused"
            code = f" {exc.code}" if exc.code else ""
            message = f"the provider refused the task ({status}{code}): {exc.message}"
            note = ("rejected", message)
            await self._durably(
                task, lambda: self._set_submit_state(task, SubmitState.REJECTED, attempt=note)
            )
            return await self._fail(task, "submission_rejected", message)
        except ProviderUnavailable as exc:
            delay = self._ctx.retry.delay(max(task.submit_attempts + 1, job.attempts))
            if exc.retry_after is not None:
                delay = max(delay, delay.__class__(seconds=exc.retry_after))
            if exc.status_code == 429:
                delay = max(delay, await self._hold_creates(exc))
            log.info(
                "provider unavailable; submission will be retried",
                extra=extra | {"http_status": exc.status_code, "retry_in": delay.total_seconds()},
            )
            status = f"HTTP {exc.status_code}: " if exc.status_code else ""
            note = ("retry", f"{status}{exc.message}")
            await self._durably(
                task, lambda: self._set_submit_state(task, SubmitState.RETRY, attempt=note)
            )
            return RetryAt(utcnow() + delay, exc.message)
        except ProviderOutcomeUnknown as exc:
            log.warning("submission outcome unknown; not resubmitting", extra=extra)
            await self._set_submit_state(
                task, SubmitState.UNCERTAIN, attempt=("uncertain", exc.message)
            )
            task.submit_state = SubmitState.UNCERTAIN
            return await self._outcome_unknown(task, utcnow(), reason=exc.message)
        recorded = await self._durably(task, lambda: self._record_answer(task, accepted))
        if recorded is not None:
            # The id is safe from here on: should this worker die now, the poll job written
            # with it moves the task on. The timeline's "accepted" line can only be there
            # already if this answer was recorded before, or on a retry of a lost commit.
            tries = 0

            async def accept() -> None:
                nonlocal tries
                tries += 1
                await self._accept(task, accepted, look=recorded == "found" or tries > 1)

            await self._durably(task, accept)
        return Done()

    async def _hold_creates(self, exc: ProviderUnavailable | ReferenceUnavailable) -> timedelta:
        """Hold every replica's submissions (their Files API uploads and creates) for the
        provider's Retry-After (else the configured wait), after a 429 to either."""
        wait = self._ctx.settings.provider_rate_limit_wait_seconds
        if exc.retry_after is not None:
            wait = timedelta(seconds=exc.retry_after)
        now = utcnow()
        until = now + wait
        reason = f"HTTP 429: {exc.message}"
        try:
            async with self._ctx.sessions() as session:
                await provider_hold.hold(session, provider_hold.CREATE, until, reason, now)
                await session.commit()
            self._hold.forget()  # this process's next submissions read the hold
        except Exception:
            # The task's own retry (recorded next) matters more than the shared hold.
            log.exception("could not record the provider's hold on creates")
            return wait
        log.warning(
            "the provider is rate limiting; every replica holds its submissions",
            extra={"until": until.isoformat(), "retry_after": exc.retry_after},
        )
        return wait

    async def _durably(self, task: Task, write: Callable[[], Awaitable[T]]) -> T:
        """Record the provider's answer, riding out database errors (it exists only here)."""
        return await write_durably(
            write, what="the provider's answer to the submission", extra={"task_id": task.id}
        )

    async def _record_answer(
        self, task: Task, accepted: ProviderTask
    ) -> Literal["recorded", "found"] | None:
        """Write the upstream id and the poll job that follows it up, and nothing more: until
        this commits, the id is only in this process's memory, and a SIGKILL loses it (the
        provider offers no other way to learn it than the task's callback). Not None when
        the task is this upstream task's, and the acceptance is to be recorded: "found" when
        the id was there already."""
        now = utcnow()
        values = {
            "provider_task_id": accepted.id,
            "submit_state": SubmitState.ACCEPTED,
            "submitted_at": now,
            "last_news_at": now,
            "updated_at": now,
            **provider_credits(accepted),
        }
        poll_at = now + self._ctx.settings.poll_after_seconds

        async def direct(target: Direct) -> bool:
            # One statement, in a transaction all the same: should this worker die while it
            # waits on a lock, the statement is rolled back with its connection, never
            # committed later (tests/e2e/test_submission_crash.py).
            statement, parameters = pg_transition.fields_with_job(
                task.id, values, JobKind.POLL, poll_at, provider_task_id=None
            )
            return bool(await target.fetch(statement, parameters))

        async def in_session(session: AsyncSession) -> bool:
            if not await repository.update_fields(session, task.id, values, provider_task_id=None):
                return False
            await jobs.enqueue(session, JobKind.POLL, task.id, poll_at)
            return True

        if await self._writes.run(direct, in_session, transaction=True):
            return "recorded"
        current = await self._rows.get(task.id)
        if current is not None and current.provider_task_id == accepted.id:
            # Recorded already: by its callback, or by a commit whose answer was lost.
            return "found"
        log.error(
            "task already had a provider task id; second upstream task ignored",
            extra={"task_id": task.id, "caller": task.caller, "provider_task_id": accepted.id},
        )
        return None

    async def _accept(self, task: Task, accepted: ProviderTask, *, look: bool) -> None:
        """The timeline line and the transition the create's answer implies (idempotent; with
        `look`, the line is first looked for).

        `task` is the row as read before the create: the transition is a conditional update,
        so news that came in meanwhile (a callback) makes it read the row again, not lose. With
        `look` (a second try) the row is read first: a try whose commit failed left `task`
        holding what it wrote, which the database does not have."""
        now = utcnow()
        news = ProviderNews(accepted, confirmed=True)
        accepted_line = event_repository.line(
            task.id,
            kind=EventKind.SUBMIT,
            source="submit",
            at=now,
            outcome="accepted",
            detail={"provider_task_id": accepted.id},
        )

        async def direct(target: Direct) -> bool:
            await direct_writes.apply_event(
                target, task, news, now=now, source="submit", line=accepted_line
            )
            return True

        async def in_session(session: AsyncSession) -> bool:
            if look and not await repository.reload(session, task):
                return False
            line: dict[str, Any] | None = accepted_line
            if look and await event_repository.exists(
                session, task.id, kind=EventKind.SUBMIT, outcome="accepted"
            ):
                line = None
            await service.apply_event(session, task, news, now=now, source="submit", line=line)
            return True

        # A second try looks for what the first wrote: through a session.
        if not await self._writes.run(None if look else direct, in_session, transaction=False):
            return
        log.info(
            "submitted upstream",
            extra={"task_id": task.id, "caller": task.caller, "provider_task_id": accepted.id},
        )

    async def _outcome_unknown(self, task: Task, now: datetime, *, reason: str | None) -> Outcome:
        started = task.submit_started_at or task.updated_at
        give_up_at = started + self._ctx.settings.submit_uncertain_wait_seconds
        if now >= give_up_at:
            wait = self._ctx.settings.submit_uncertain_wait_seconds
            return await self._fail(
                task,
                "provider_timeout",
                "the provider's answer to the submission was lost and no callback arrived "
                f"within {wait}; the provider may have created the task, so it was not "
                "submitted again",
            )
        if task.submit_state != SubmitState.UNCERTAIN:
            await self._set_submit_state(task, SubmitState.UNCERTAIN)
        return RetryAt(give_up_at, reason or "submission outcome unknown; waiting for a callback")

    async def _set_submit_state(
        self, task: Task, state: SubmitState, *, attempt: tuple[str, str] | None = None
    ) -> None:
        async with self._ctx.sessions() as session:
            now = utcnow()
            values: dict[str, object] = {"submit_state": state, "updated_at": now}
            if state is SubmitState.REJECTED:
                values |= NOTHING_BILLED  # the provider made nothing: the task costs nothing
            await repository.update_fields(session, task.id, values, status=TaskStatus.QUEUED.value)
            await self._record_attempt(session, task, now, attempt)
            await session.commit()

    async def _record_attempt(
        self, session: AsyncSession, task: Task, now: datetime, attempt: tuple[str, str] | None
    ) -> None:
        if attempt is not None:
            outcome, message = attempt
            await event_repository.record(
                session,
                task.id,
                kind=EventKind.SUBMIT,
                source="submit",
                at=now,
                outcome=outcome,
                message=message,
            )

    async def _fail(
        self, task: Task, code: str, message: str, *, attempt: tuple[str, str] | None = None
    ) -> Outcome:
        if attempt is not None:
            outcome, detail = attempt
            await event_repository.note(
                self._ctx.sessions, task.id, kind=EventKind.SUBMIT, outcome=outcome, message=detail
            )
        failure = ServiceFailure(code, message)
        await service.apply_alone(self._ctx.sessions, task.id, failure, source="submit")
        return Done()
