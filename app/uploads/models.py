"""The upload row: one image a caller sent, its object in the store and what was checked of it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime

UPLOAD_ID_PREFIX = "upl_"


class Upload(Base):
    """An image a caller uploaded, usable as a reference image until it expires."""

    __tablename__ = "uploads"
    __table_args__ = (
        UniqueConstraint("caller", "idempotency_key"),
        Index("ix_uploads_caller_created", "caller", "created_at"),
        Index("ix_uploads_expires", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "upl_" + random
    caller: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(512))  # the object's key in the store
    content_type: Mapped[str] = mapped_column(String(32))  # sniffed: image/png|jpeg|webp
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    file_name: Mapped[str | None] = mapped_column(String(255))  # as the caller named it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
