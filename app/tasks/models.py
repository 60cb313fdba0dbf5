"""The task row: one per caller request, from submission to the archived images."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime
from app.tasks.states import TaskStatus

STATUS_VALUES = ", ".join(f"'{status.value}'" for status in TaskStatus)


class SubmitState(StrEnum):
    """Where the upstream submission of a queued task stands."""

    NONE = "none"  # never tried
    IN_FLIGHT = "in_flight"  # a create call is being made right now (or its worker died)
    RETRY = "retry"  # the provider certainly did not take it; try again later
    UNCERTAIN = "uncertain"  # the provider may have taken it; its answer was lost
    ACCEPTED = "accepted"  # the provider answered with a task id
    REJECTED = "rejected"  # the provider refused it for good (the task failed)


class CreditsSource(StrEnum):
    """Where a task's `credits` come from."""

    ESTIMATE = "estimate"  # the service's estimate at create (app/provider/pricing.py)
    PROVIDER = "provider"  # the provider's figure (or its refusal: nothing made, 0)


class Task(Base):
    """One image task."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("caller", "idempotency_key"),
        UniqueConstraint("provider_task_id"),
        CheckConstraint(f"status IN ({STATUS_VALUES})", name="status"),
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress"),
        # A caller's tasks by creation: its list, its creates of the last minute and its credits
        # of the day and month (the limits at create: credits ride in the index on PostgreSQL,
        # so that summing a month is an index-only scan).
        Index(
            "ix_tasks_caller_created",
            "caller",
            "created_at",
            "id",
            postgresql_include=["credits"],
        ),
        # A caller's unfinished tasks (max_active_tasks). completed_at is written only when a
        # task ends (or is retried), so only that update loses HOT, not the news before it.
        Index(
            "ix_tasks_caller_active",
            "caller",
            postgresql_where=text("completed_at IS NULL"),
            sqlite_where=text("completed_at IS NULL"),
        ),
        # The console's list of every caller's tasks (newest first, keyset on (created_at, id))
        # and the overview's counts by creation time.
        Index("ix_tasks_created", "created_at", "id"),
        # No index on columns that news updates (status, progress, timestamps): PostgreSQL can
        # then update the row in place (HOT), which the callback path does constantly.
        {"postgresql_with": {"fillfactor": "80"}},
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    caller: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))

    model: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str] = mapped_column(Text)
    size: Mapped[str] = mapped_column(String(16))
    quality: Mapped[str] = mapped_column(String(16))
    image_urls: Mapped[list[str]] = mapped_column(JSON)
    n: Mapped[int] = mapped_column(Integer, default=1)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    notify_url: Mapped[str | None] = mapped_column(Text)

    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.QUEUED.value)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    provider_task_id: Mapped[str | None] = mapped_column(String(128))
    callback_nonce: Mapped[str] = mapped_column(String(32))
    submit_state: Mapped[str] = mapped_column(String(16), default=SubmitState.NONE)
    submit_attempts: Mapped[int] = mapped_column(Integer, default=0)
    submit_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_news_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    provider_completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    final_claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    result_urls: Mapped[list[str] | None] = mapped_column(JSON)
    redriven_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # the latest retry
    # What the task costs (docs/limits.md): an estimate at create, replaced by the provider's
    # figure when it reports one.
    credits: Mapped[float] = mapped_column(Float, server_default="0")
    credits_source: Mapped[str] = mapped_column(
        String(8), server_default=CreditsSource.ESTIMATE.value, default=CreditsSource.ESTIMATE
    )

    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
