"""The notification row: one per (task, event type), carrying its webhook id across retries.

Written in the transaction of the transition it announces (the outbox); sent by
notify/notifying.py."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class NotificationState(StrEnum):
    """Life of a notification."""

    PENDING = "pending"  # to be sent at next_attempt_at
    DELIVERED = "delivered"  # the receiver answered 2xx: never sent again
    FAILED = "failed"  # given up after the retry schedule (a redrive starts a new series)
    SUPERSEDED = "superseded"  # a redrive moved the task on before this one was delivered


_STATES = ", ".join(f"'{state}'" for state in NotificationState)


class Notification(Base):
    """A Standard Webhooks message to the caller's notify_url about one terminal state."""

    __tablename__ = "notifications"
    __table_args__ = (
        # The same terminal state of a task is notified at most once.
        UniqueConstraint("task_id", "type"),
        CheckConstraint(f"state IN ({_STATES})", name="state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the webhook-id header
    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("tasks.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))  # task.succeeded | task.failed | task.cancelled
    state: Mapped[str] = mapped_column(String(16))
    series: Mapped[int] = mapped_column(Integer)  # 1, then +1 for every redrive
    attempts: Mapped[int] = mapped_column(Integer)  # attempts in the current series
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


def event_type(status: str) -> str:
    """The notification type of a terminal status: `task.succeeded`, `task.failed`, ..."""
    return f"task.{status}"
