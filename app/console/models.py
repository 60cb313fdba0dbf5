"""Console sessions that were signed out before they expired: their cookies open nothing."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class ConsoleSignout(Base):
    """One signed-out session id; the row may go once the cookie would have expired anyway."""

    __tablename__ = "console_signouts"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator: Mapped[str] = mapped_column(String(64))
    signed_out_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
