"""The upload object callers see, and upload ids."""

from __future__ import annotations

import base64
import re
import secrets
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, Field

from app.uploads.models import UPLOAD_ID_PREFIX, Upload

UPLOAD_ID_PATTERN: Final = re.compile(rf"{UPLOAD_ID_PREFIX}[a-z2-7]{{26}}")


def new_upload_id() -> str:
    """`upl_` and 26 random base32 characters (128 bits)."""
    return UPLOAD_ID_PREFIX + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def is_upload_id(value: str) -> bool:
    """Whether `value` is an upload id this service could have made."""
    return UPLOAD_ID_PATTERN.fullmatch(value) is not None


class UploadOut(BaseModel):
    """An uploaded image, usable as a reference image until `expires_at`."""

    id: str = Field(examples=["upl_0hb7ktm4qzfj2rdnwy6c5xg3ea"])
    content_type: Literal["image/png", "image/jpeg", "image/webp"] = Field(
        description="Decided from the bytes, whatever the declared type."
    )
    bytes: int = Field(ge=1)
    sha256: str = Field(description="Hex sha256 of the bytes; also the content's ETag.")
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    created_at: datetime
    expires_at: datetime = Field(
        description="Deleted after this unless a task that is not terminal uses it."
    )
    file_name: str | None = Field(
        default=None, description="The multipart part's `filename`, if one was given."
    )

    @classmethod
    def of(cls, upload: Upload) -> UploadOut:
        """The caller's view of a row."""
        return cls.model_validate(upload, from_attributes=True)
