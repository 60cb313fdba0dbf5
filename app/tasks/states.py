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


Event = ProviderNews | ServiceFailure | ArchiveDone


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
    """The next state of a task given one event; terminal states absorb everything."""
    if current.status.is_terminal:
        return UNCHANGED
    if isinstance(event, ServiceFailure):
        return _terminal(current, TaskStatus.FAILED, event.code, event.message)
    if isinstance(event, ArchiveDone):
        if current.status is not TaskStatus.ARCHIVING:
            return UNCHANGED
        return Decision(TaskState(TaskStatus.SUCCEEDED, 100), (Effect.NOTIFY,))
    return _provider_news(current, event)


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
