"""A task's reference images: one row per image the provider is to download, in request order.

`image_urls` entries come first, then `reference_images` in the order given. Rows of `upload`
and `task` sources name the object in the store (`key`) so that the task keeps its reference
readable whatever later happens to the upload row; the `provider_file_*` columns record a Files
API upload (delivery `provider-files`) before the create that uses it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class ReferenceSource(StrEnum):
    """Where a reference image comes from."""

    URL = "url"  # a URL the caller gave; sent to the provider as it is
    UPLOAD = "upload"  # an upload of the caller (app/uploads)
    TASK = "task"  # an archived result of the caller's own succeeded task


class TaskReference(Base):
    """One reference image of a task."""

    __tablename__ = "task_references"
    __table_args__ = (
        Index("ix_task_references_upload", "upload_id"),
        Index("ix_task_references_key", "key"),
    )

    task_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0-based, request order
    source: Mapped[str] = mapped_column(String(8))
    url: Mapped[str | None] = mapped_column(Text)  # source url
    upload_id: Mapped[str | None] = mapped_column(String(40))  # source upload
    source_task_id: Mapped[str | None] = mapped_column(String(36))  # source task
    source_index: Mapped[int | None] = mapped_column(Integer)  # source task
    # The object in the store (sources upload and task), and what was checked of it.
    key: Mapped[str | None] = mapped_column(String(512))
    content_type: Mapped[str | None] = mapped_column(String(32))
    bytes: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # Delivery `provider-files`: the provider's copy, recorded before the create that sends it.
    provider_file_id: Mapped[str | None] = mapped_column(String(128))
    provider_file_url: Mapped[str | None] = mapped_column(Text)
    provider_file_uploaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


@dataclass(frozen=True, slots=True)
class ResolvedReference:
    """A reference image checked at create, before it is saved as a row of its task."""

    source: ReferenceSource
    url: str | None = None
    upload_id: str | None = None
    source_task_id: str | None = None
    source_index: int | None = None
    key: str | None = None
    content_type: str | None = None
    bytes: int | None = None
    sha256: str | None = None

    @classmethod
    def of_url(cls, url: str) -> ResolvedReference:
        """A URL, sent to the provider as it is."""
        return cls(ReferenceSource.URL, url=url)
