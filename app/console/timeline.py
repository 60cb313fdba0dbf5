"""A task's full story for operators: its events and its callback deliveries, merged by time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.callbacks.models import CallbackDelivery, DeliveryOutcome
from app.tasks.events import EventKind, TaskEvent
from app.tasks.models import Task

BODY_PREVIEW_CHARS = 2000
_FAILED_OUTCOMES = frozenset(
    {"error", "rejected", "retry", "uncertain", "given_up", DeliveryOutcome.MALFORMED}
    | {DeliveryOutcome.MISMATCH}
)


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the timeline."""

    at: datetime
    kind: str  # created, submit, callback, poll, transition, archive, notify, redrive
    summary: str
    outcome: str | None = None
    message: str | None = None
    operator_message: str | None = None  # what the caller's view of the line leaves out
    duplicate: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    order: int = 0  # ties: creation first, then events in id order, then deliveries

    @property
    def failed(self) -> bool:
        return self.outcome in _FAILED_OUTCOMES or (
            self.kind == "transition" and bool(self.message)
        )


def build(
    task: Task, events: Sequence[TaskEvent], deliveries: Sequence[CallbackDelivery]
) -> list[Line]:
    """Every line, oldest first."""
    lines = [Line(at=task.created_at, kind="created", summary=f"created by {task.caller}")]
    lines += [_event_line(event) for event in events]
    for delivery in deliveries:
        lines += _delivery_lines(delivery)
    return sorted(lines, key=lambda line: (line.at, line.order))


def _event_line(event: TaskEvent) -> Line:
    detail = dict(event.detail or {})
    if event.from_status is not None or event.to_status is not None:
        summary = f"{event.from_status} → {event.to_status}"
        if "progress" in detail:
            summary += f" ({detail.pop('progress')}%)"
    elif event.kind == EventKind.POLL and event.outcome not in (None, "error"):
        summary = f"the provider reports {event.outcome}"
    else:
        summary = event.outcome or event.kind
    return Line(
        at=event.at,
        kind=event.kind,
        summary=f"{summary} [{event.source}]" if event.source != event.kind else summary,
        outcome=event.outcome,
        message=event.message,
        operator_message=event.operator_message,
        detail={key: value for key, value in detail.items() if value is not None},
        order=1,
    )


def _delivery_lines(delivery: CallbackDelivery) -> list[Line]:
    reported = f"reports {delivery.reported_status}" if delivery.reported_status else "received"
    body = delivery.body.decode("utf-8", errors="replace")
    first = Line(
        at=delivery.received_at,
        kind="callback",
        summary=f"callback {reported} ({delivery.outcome})",
        outcome=delivery.outcome,
        message=_refusal(delivery.outcome),
        detail={"sha256": delivery.digest, "body": body[:BODY_PREVIEW_CHARS]},
        order=2,
    )
    if delivery.deliveries <= 1:
        return [first]
    repeats = delivery.deliveries - 1
    times = "once more" if repeats == 1 else f"{repeats} more times"
    duplicate = Line(
        at=delivery.last_received_at,
        kind="callback",
        summary=f"duplicate: the same body received {times} (last shown), acknowledged, ignored",
        outcome="duplicate",
        duplicate=True,
        detail={"sha256": delivery.digest},
        order=3,
    )
    return [first, duplicate]


def _refusal(outcome: str) -> str | None:
    if outcome == DeliveryOutcome.MALFORMED:
        return "refused: the body is not a task the service can read"
    if outcome == DeliveryOutcome.MISMATCH:
        return "refused: the body names another upstream task"
    return None
