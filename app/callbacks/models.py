"""The callback inbox: every distinct delivery the provider made, kept raw."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class DeliveryOutcome(StrEnum):
    """What the service did with a delivery."""

    APPLIED = "applied"  # went through the state machine (possibly changing nothing)
    MALFORMED = "malformed"  # not JSON, or not a task
    MISMATCH = "mismatch"  # names another upstream task than the one this URL belongs to


class CallbackDelivery(Base):
    """One distinct callback body for one task; repeats only bump `deliveries`."""

    __tablename__ = "callback_deliveries"

    # The key is the dedup: one row per distinct body per task.
    task_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    outcome: Mapped[str] = mapped_column(String(16))
    reported_status: Mapped[str | None] = mapped_column(String(64))
    deliveries: Mapped[int] = mapped_column(Integer, default=1)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
