"""Redrive: run again the step of a failed task, or a given-up notification, on request.

The one deliberate way out of a terminal state. A task step goes through the state machine as
a `Redrive` event with the conditional update, so of two concurrent retries exactly one wins;
a notification is reopened with a conditional update of its own."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import after_commit
from app.tasks import event_repository, notification_repository, service
from app.tasks.events import EventKind
from app.tasks.links import LINK_LIFETIME, upstream_completed_at
from app.tasks.models import Task
from app.tasks.notifications import Notification, NotificationState, event_type
from app.tasks.states import Redrive, RedriveStep, TaskStatus, redrive_step
from app.workers import repository as jobs
from app.workers.models import JobKind

log = logging.getLogger(__name__)

NOTIFICATION = "notification"


class NotRetryable(Exception):
    """Nothing of the task can be run again; the message says why."""


@dataclass(frozen=True, slots=True)
class RedrivePlan:
    """What a retry of a task would run now: a task step, or a given-up notification; when
    neither, the reasons why not."""

    step: RedriveStep | None = None
    notification: Notification | None = None
    reasons: tuple[str, ...] = ()

    @property
    def what(self) -> str | None:
        """The name of what would run: `archive`, `poll`, `notification`, or None."""
        if self.step is not None:
            return self.step.value
        return NOTIFICATION if self.notification is not None else None


async def plan(session: AsyncSession, task: Task, *, now: datetime) -> RedrivePlan:
    """Decide, without changing anything, what `redrive` would run for this task."""
    reasons: list[str] = []
    step = redrive_step(service.state_of(task))
    if step is not None:
        refusal = _task_refusal(task, step, now)
        if refusal is None:
            return RedrivePlan(step=step)
        reasons.append(refusal)
    elif task.status == TaskStatus.FAILED.value:
        reasons.append(
            f"the task failed with {task.error_code}, which a retry cannot repair "
            "(submit a new task)"
        )
    elif not TaskStatus(task.status).is_terminal:
        reasons.append(f"the task is still {task.status}: nothing has failed")

    note = await _current_notification(session, task)
    if note is not None and note.state == NotificationState.FAILED:
        return RedrivePlan(notification=note, reasons=tuple(reasons))
    if note is not None:
        subject = "its notification" if reasons else f"the task {task.status} and its notification"
        reasons.append(f"{subject} is {note.state}")
    elif TaskStatus(task.status).is_terminal:
        reasons.append(f"the task {task.status} without a notification to send")
    return RedrivePlan(reasons=tuple(reasons))


async def redrive(session: AsyncSession, task: Task, *, now: datetime) -> str:
    """Run again what failed for a transient reason; the step's name (`archive`, `poll` or
    `notification`). Raises NotRetryable with the reason when there is nothing to run."""
    chosen = await plan(session, task, now=now)
    if chosen.step is not None:
        decision = await service.apply_event(
            session,
            task,
            Redrive(chosen.step),
            now=now,
            source="redrive",
            extra={"redriven_at": now},
        )
        if not decision.changed:  # another retry won the race
            raise NotRetryable(f"the task is {task.status} now: it was retried already")
        superseded = await notification_repository.supersede_pending(session, task.id, now)
        await _record(session, task, chosen.step.value, now, superseded=superseded)
        return chosen.step.value
    note = chosen.notification
    if note is not None:
        if await notification_repository.redrive(session, note.id, now):
            await jobs.enqueue(session, JobKind.NOTIFY, task.id, now)
            await _record(session, task, NOTIFICATION, now, webhook_id=note.id)
            return NOTIFICATION
        raise NotRetryable("; ".join([*chosen.reasons, "the notification was retried already"]))
    raise NotRetryable("; ".join(chosen.reasons))


def _task_refusal(task: Task, step: RedriveStep, now: datetime) -> str | None:
    if step is RedriveStep.ARCHIVE:
        if not task.result_urls:
            return "the provider gave no result link to copy"
        expired = upstream_completed_at(task) + LINK_LIFETIME
        if now >= expired:
            return f"the provider's result links expired at {expired.isoformat()}"
        return None
    if task.provider_task_id is None:
        return "the provider never confirmed taking the task; submit a new one"
    return None


async def _current_notification(session: AsyncSession, task: Task) -> Notification | None:
    notes = (await notification_repository.for_tasks(session, [task.id]))[task.id]
    current = event_type(task.status)
    return next((note for note in notes if note.type == current), None)


async def _record(
    session: AsyncSession,
    task: Task,
    step: str,
    now: datetime,
    *,
    superseded: list[str] | None = None,
    webhook_id: str | None = None,
) -> None:
    detail: dict[str, object] = {"step": step}
    if superseded:
        detail["superseded_notifications"] = superseded
    if webhook_id is not None:
        detail["webhook_id"] = webhook_id
    await event_repository.record(
        session,
        task.id,
        kind=EventKind.REDRIVE,
        source="redrive",
        at=now,
        outcome=step,
        detail=detail,
    )
    extra = {"task_id": task.id, "caller": task.caller, "step": step}
    after_commit(session, functools.partial(log.info, "task step retried", extra=extra))
