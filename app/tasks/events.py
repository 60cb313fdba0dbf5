"""The task timeline's rows: every transition and every attempt at upstream work (queries:
tasks/event_repository.py)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class EventKind(StrEnum):
    """What happened."""

    TRANSITION = "transition"  # the status or progress changed
    SUBMIT = "submit"  # a create call upstream and its outcome
    POLL = "poll"  # a query upstream and its outcome
    ARCHIVE = "archive"  # a copy of a result image and its outcome
    NOTIFY = "notify"  # a notification to the caller and its outcome
    REDRIVE = "redrive"  # a caller asked to run a failed step again


class TaskEvent(Base):
    """One line of a task's timeline."""

    __tablename__ = "task_events"
    __table_args__ = (
        Index("ix_task_events_task_at", "task_id", "at"),
        # The console overview: failed upstream calls (kind submit/poll) and poll-found final
        # transitions (kind transition) since a moment.
        Index("ix_task_events_kind_at", "kind", "at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("tasks.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)  # shown to the caller (`/events`)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # For operators only (console, never the caller API): what `message` leaves out because it
    # describes the service's network, e.g. the addresses a notify_url resolved to.
    operator_message: Mapped[str | None] = mapped_column(Text)
