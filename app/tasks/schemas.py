"""Request and response bodies of the caller API (separate from the ORM models)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.headers import MAX_IDEMPOTENCY_KEY_CHARS as MAX_IDEMPOTENCY_KEY_CHARS
from app.provider.types import MAX_IMAGE_URLS

MAX_PROMPT_CHARS = 32_000
MAX_METADATA_BYTES = 4096
MAX_URL_CHARS = 2048
TASK_ID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Size = Literal["1:1", "2:3", "3:2", "1024x1024", "1024x1536", "1536x1024"]
Quality = Literal["low", "medium", "high"]
Status = Literal["queued", "pending", "processing", "archiving", "succeeded", "failed", "cancelled"]


def _check_http_url(value: str) -> str:
    if len(value) > MAX_URL_CHARS:
        raise ValueError(f"must be at most {MAX_URL_CHARS} characters")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError("must not contain control characters")
    if not is_valid_unicode(value):
        raise ValueError("must be valid Unicode (it holds a lone surrogate)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL")
    try:
        parts.port  # noqa: B018 - raises for a port out of 0..65535
    except ValueError:
        raise ValueError("must have a port between 0 and 65535") from None
    return value


def is_valid_unicode(value: str) -> bool:
    """Whether `value` encodes as UTF-8 (JSON escapes can carry lone surrogates, which do not)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


class CreateTaskRequest(BaseModel):
    """A request for one image: text-to-image, or image-to-image/editing with `image_urls`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description=(
            "What to draw or how to edit the reference images. The provider accepts at most "
            f"2000 tokens; this service accepts up to {MAX_PROMPT_CHARS} characters and turns "
            "the provider's refusal of a longer prompt into a `failed` task "
            "(`submission_rejected`)."
        ),
    )
    model: Literal["gpt-image-1.5"] = Field(
        default="gpt-image-1.5", description="Only `gpt-image-1.5`."
    )
    size: Size = Field(default="1024x1024", description="Aspect ratio or pixel size.")
    quality: Quality = Field(default="high", description="`low` is fastest, `high` is best.")
    image_urls: list[str] = Field(
        default_factory=list,
        max_length=MAX_IMAGE_URLS,
        description=(
            f"0 to {MAX_IMAGE_URLS} reference images (http or https, at most {MAX_URL_CHARS} "
            "characters each; .jpeg .jpg .png .webp up to 50 MB, directly downloadable by the "
            "provider). Empty for text-to-image."
        ),
    )
    n: Literal[1] = Field(default=1, description="Number of images; only 1 is supported.")
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=f"Free JSON object kept with the task, at most {MAX_METADATA_BYTES} bytes.",
    )
    notify_url: str | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        description=(
            "https URL that receives a signed POST when the task is terminal. Private and "
            "loopback addresses are refused unless the service allows private networks."
        ),
    )

    @field_validator("n", mode="before")
    @classmethod
    def _n_is_an_integer(cls, value: object) -> object:
        if isinstance(value, bool | float):  # true and 1.0 equal 1 but are not integers
            raise ValueError("Input should be 1")
        return value

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("image_urls")
    @classmethod
    def _urls(cls, values: list[str]) -> list[str]:
        for index, value in enumerate(values):
            try:
                _check_http_url(value)
            except ValueError as exc:
                raise ValueError(f"item {index} {exc}") from None
        return values

    @field_validator("notify_url")
    @classmethod
    def _notify_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:  # NaN, Infinity, -Infinity and numbers like 1e400 that parse to inf
            raise ValueError("must be JSON: NaN and Infinity are not numbers") from None
        if not is_valid_unicode(text):
            raise ValueError("must be valid Unicode (it holds a lone surrogate)")
        size = len(text.encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON, got {size}")
        return value

    def fingerprint(self) -> str:
        """sha256 of the normalised request: equal for bodies that ask for the same thing."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ImageOut(BaseModel):
    """One archived image."""

    index: int = Field(ge=0)
    url: str = Field(description="Path of the image bytes on this service.")
    content_type: str
    bytes: int = Field(ge=0)
    sha256: str


class ErrorOut(BaseModel):
    """Why a task failed."""

    code: str = Field(
        description=(
            "The provider's code, or the service's own: `submission_rejected`, "
            "`archive_failed`, `links_expired`, `provider_timeout`."
        )
    )
    message: str


class NotificationOut(BaseModel):
    """The task's notification to its `notify_url` (of the current status, else the latest)."""

    webhook_id: str = Field(description="The `webhook-id` header, the same on every retry.")
    type: Literal["task.succeeded", "task.failed", "task.cancelled"]
    status: Literal["pending", "delivered", "failed", "superseded"] = Field(
        description=(
            "`pending`: being sent or retried; `delivered`: answered 2xx, never sent again; "
            "`failed`: given up after the retry schedule (`POST /v1/tasks/{id}/retry` starts "
            "over); `superseded`: a retry moved the task on before it was delivered."
        )
    )
    attempts: int = Field(ge=0, description="Attempts in the current series.")
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


class TaskOut(BaseModel):
    """A task as callers see it."""

    id: str
    status: Status
    progress: Annotated[int, Field(ge=0, le=100)]
    model: str
    prompt: str
    size: str
    quality: str
    image_urls: list[str]
    metadata: dict[str, Any]
    notify_url: str | None = None
    provider_task_id: str | None = None
    images: list[ImageOut] = Field(default_factory=list)
    error: ErrorOut | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    notification: NotificationOut | None = Field(
        default=None, description="Null without a `notify_url` or before the task is terminal."
    )


class TaskPage(BaseModel):
    """A page of tasks, newest first."""

    data: list[TaskOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


def is_task_id(value: str) -> bool:
    """Whether `value` is a task id this service could have made (a canonical UUID)."""
    return TASK_ID_PATTERN.fullmatch(value) is not None


class TaskEventOut(BaseModel):
    """One line of a task's timeline: a transition, or an attempt at some work and its outcome."""

    at: datetime
    kind: Literal["transition", "submit", "poll", "archive", "notify", "redrive"]
    source: str = Field(description="What wrote the line: callback, poll, archive, notify, ...")
    outcome: str | None = Field(
        default=None, description="e.g. `error`, `delivered`, `given_up`, `stored`."
    )
    from_status: str | None = None
    to_status: str | None = None
    message: str | None = Field(default=None, description="Why an attempt failed, when it did.")
    detail: dict[str, Any] | None = None


class TaskEventPage(BaseModel):
    """A task's timeline, oldest first."""

    data: list[TaskEventOut]
