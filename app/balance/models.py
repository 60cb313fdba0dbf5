"""The latest reading of the provider's balance (one row), shared by every replica."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime

PROVIDER = "evolink"  # the row's name: one provider account today


class ProviderBalance(Base):
    """The last good reading of `GET /v1/credits` and how the last attempt went."""

    __tablename__ = "provider_balance"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_remaining: Mapped[float | None] = mapped_column(Float())
    token_used: Mapped[float | None] = mapped_column(Float())
    token_unlimited: Mapped[bool] = mapped_column(Boolean(), server_default=false())
    user_remaining: Mapped[float | None] = mapped_column(Float())
    user_used: Mapped[float | None] = mapped_column(Float())
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # of the last good reading
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text())  # of the last attempt; None when it worked
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
