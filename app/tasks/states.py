"""The pure state machine of a task: every piece of news goes through `decide`. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from app.provider.types import ProviderStatus, ProviderTask


class TaskStatus(StrEnum):
    """A task's status as callers see it."""

    QUEUED = "queued"
    PENDING = "pending"
    PROCESSING = "processing"
    ARCHIVING = "archiving"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})
# Order of the statuses the provider can move a task through before it is final.
_RANK = {TaskStatus.QUEUED: 0, TaskStatus.PENDING: 1, TaskStatus.PROCESSING: 2}


class Effect(StrEnum):
    """Work a transition implies, written to the job table in the same transaction."""

    CONFIRM = "confirm"  # ask the provider before trusting a final state from a callback
    ARCHIVE = "archive"  # copy the confirmed result images
    NOTIFY = "notify"  # tell the caller the task is terminal
    POLL = "poll"  # ask the provider again (a redriven poll)


@dataclass(frozen=True, slots=True)
class TaskState:
    """The part of a task row the state machine reads and writes."""

    status: TaskStatus
    progress: int = 0
    error_code: str | None = None
    error_message: str | None = None
    final_claimed: bool = False  # a callback said the task is final; not confirmed yet


@dataclass(frozen=True, slots=True)
class ProviderNews:
    """What the provider says about a task; `confirmed` when read from its query endpoint."""

    task: ProviderTask
    confirmed: bool


@dataclass(frozen=True, slots=True)
class ServiceFailure:
    """The service itself ends the task (`submission_rejected`, `provider_timeout`, ...)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ArchiveDone:
    """Every result image is in durable storage."""


class RedriveStep(StrEnum):
    """A step of a failed task that a redrive can run again."""

    ARCHIVE = "archive"  # copy the images again (`archive_failed`, links still valid)
    POLL = "poll"  # ask the provider again (`provider_timeout` of an accepted task)


# The error code each step leaves on a task it failed for a possibly transient reason.
REDRIVABLE = {RedriveStep.ARCHIVE: "archive_failed", RedriveStep.POLL: "provider_timeout"}


@dataclass(frozen=True, slots=True)
class Redrive:
    """An explicit request to run a failed step again: the one way out of a terminal state.
    The caller has checked what the state cannot show (result links, their validity, the
    provider's task id)."""

    step: RedriveStep


Event = ProviderNews | ServiceFailure | ArchiveDone | Redrive


@dataclass(frozen=True, slots=True)
class Decision:
    """The state after an event and the work it implies; `state` is None when nothing changes."""

    state: TaskState | None
    effects: tuple[Effect, ...] = ()

    @property
    def changed(self) -> bool:
        return self.state is not None


UNCHANGED = Decision(state=None)


def decide(current: TaskState, event: Event) -> Decision:
    """The next state of a task given one event; terminal states absorb everything but an
    applicable redrive."""
    if isinstance(event, Redrive):
        return _redrive(current, event.step)
    if current.status.is_terminal:
        return UNCHANGED
    if isinstance(event, ServiceFailure):
        return _terminal(current, TaskStatus.FAILED, event.code, event.message)
    if isinstance(event, ArchiveDone):
        if current.status is not TaskStatus.ARCHIVING:
            return UNCHANGED
        return Decision(TaskState(TaskStatus.SUCCEEDED, 100), (Effect.NOTIFY,))
    return _provider_news(current, event)


def _redrive(current: TaskState, step: RedriveStep) -> Decision:
    if current.status is not TaskStatus.FAILED or current.error_code != REDRIVABLE[step]:
        return UNCHANGED
    if step is RedriveStep.ARCHIVE:
        return Decision(TaskState(TaskStatus.ARCHIVING, 100), (Effect.ARCHIVE,))
    # The failed state does not keep whether the provider had started: progress tells.
    status = TaskStatus.PROCESSING if current.progress > 0 else TaskStatus.PENDING
    back = TaskState(status, current.progress, final_claimed=current.final_claimed)
    return Decision(back, (Effect.POLL,))


def redrive_step(current: TaskState) -> RedriveStep | None:
    """The step whose redrive could repair a failed task, if any."""
    if current.status is not TaskStatus.FAILED:
        return None
    return next((step for step, code in REDRIVABLE.items() if code == current.error_code), None)


def _provider_news(current: TaskState, news: ProviderNews) -> Decision:
    reported = news.task.status
    if reported is ProviderStatus.UNKNOWN or current.status is TaskStatus.ARCHIVING:
        return UNCHANGED
    if not news.confirmed:
        if reported.is_final:
            claimed = None if current.final_claimed else replace(current, final_claimed=True)
            return Decision(claimed, (Effect.CONFIRM,))
        if current.final_claimed:
            return UNCHANGED  # a stale callback after a final one
    if reported is ProviderStatus.COMPLETED:
        if not news.task.results:
            return _terminal(
                current,
                TaskStatus.FAILED,
                "archive_failed",
                "the provider reported completion without any result link",
            )
        return Decision(TaskState(TaskStatus.ARCHIVING, 100), (Effect.ARCHIVE,))
    if reported is ProviderStatus.FAILED:
        error = news.task.error
        code = error.code if error and error.code else "unknown_error"
        message = error.message if error and error.message else "the provider failed the task"
        return _terminal(current, TaskStatus.FAILED, code, message)
    if reported is ProviderStatus.CANCELLED:
        return _terminal(current, TaskStatus.CANCELLED, None, None, progress=current.progress)
    reported_status = TaskStatus(reported.value)
    status = max(current.status, reported_status, key=_RANK.__getitem__)
    progress = max(current.progress, min(max(news.task.progress, 0), 100))
    if status is current.status and progress == current.progress:
        return UNCHANGED
    return Decision(replace(current, status=status, progress=progress))


def _terminal(
    current: TaskState,
    status: TaskStatus,
    code: str | None,
    message: str | None,
    *,
    progress: int | None = None,
) -> Decision:
    kept = current.progress if progress is None else progress
    return Decision(TaskState(status, kept, code, message), (Effect.NOTIFY,))
