"""The job table: durable work claimed with leases by any worker replica."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class JobKind(StrEnum):
    """What a job does."""

    SUBMIT = "submit"  # create the task upstream
    POLL = "poll"  # ask the provider for the task's state (lost callbacks, confirmations)
    ARCHIVE = "archive"  # copy result images to durable storage
    NOTIFY = "notify"  # tell the caller


class JobState(StrEnum):
    """Life of a job row."""

    QUEUED = "queued"  # waiting for run_at, or leased by a worker
    DONE = "done"
    DEAD = "dead"  # given up


class Job(Base):
    """One unit of background work for one task."""

    __tablename__ = "jobs"
    __table_args__ = (
        # At most one open job of a kind per task: enqueueing twice is harmless.
        Index(
            "uq_jobs_open_kind_task",
            "kind",
            "task_id",
            unique=True,
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        # Only open jobs are indexed for claiming; finished ones drop out of the index.
        Index(
            "ix_jobs_due",
            "run_at",
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        # Claims and lease renewals rewrite rows in place (HOT) when pages have room.
        {"postgresql_with": {"fillfactor": "80"}},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("tasks.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    # Enqueued again while a worker held it: run once more after this run, whatever it returns.
    rerun: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
