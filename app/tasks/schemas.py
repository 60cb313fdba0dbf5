"""Request and response bodies of the caller API (separate from the ORM models)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.core.headers import MAX_IDEMPOTENCY_KEY_CHARS as MAX_IDEMPOTENCY_KEY_CHARS
from app.provider.types import MAX_IMAGE_URLS

MAX_PROMPT_CHARS = 32_000
MAX_METADATA_BYTES = 4096
MAX_URL_CHARS = 2048
TASK_ID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
UPLOAD_ID_PATTERN = re.compile(r"upl_[A-Za-z0-9_-]{1,36}")  # at most 40 characters, as stored
MAX_REFERENCES = MAX_IMAGE_URLS  # image_urls and reference_images together
MAX_SOURCE_INDEX = 2**31 - 1  # what the database's integer holds

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


def _and(names: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


HttpUrlText = Annotated[str, AfterValidator(_check_http_url)]
"""An absolute http(s) URL (image_urls entries, url references, notify_url)."""


class ReferenceIn(BaseModel):
    """One reference image of a create: exactly one of an upload, a task's image or a URL."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["upload_id"]},
                {"required": ["task_id", "index"]},
                {"required": ["url"]},
            ]
        },
    )

    upload_id: str | None = Field(
        default=None, description="An upload of the caller (`POST /v1/uploads`), not expired."
    )
    task_id: str | None = Field(
        default=None, description="A succeeded task of the caller; with `index`."
    )
    index: Annotated[int, Field(strict=True, ge=0, le=MAX_SOURCE_INDEX)] | None = Field(
        default=None, description="Which archived image of `task_id` (0 for the first)."
    )
    url: HttpUrlText | None = Field(
        default=None,
        description="http or https, the same rules as an `image_urls` entry.",
    )

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: object) -> object:
        if not isinstance(value, dict | ReferenceIn):
            raise ValueError(
                'must be an object: {"upload_id": ...}, {"task_id": ..., "index": ...} '
                'or {"url": ...}'
            )
        return value

    @field_validator("upload_id")
    @classmethod
    def _upload_id(cls, value: str | None) -> str | None:
        if value is not None and UPLOAD_ID_PATTERN.fullmatch(value) is None:
            raise ValueError("must be an upload id (upl_ and up to 36 letters, digits, _ or -)")
        return value

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, value: str | None) -> str | None:
        if value is not None and not is_task_id(value):
            raise ValueError("must be a task id (a UUID in lower case)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ReferenceIn:
        given = [
            name for name in ("upload_id", "task_id", "url") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "must hold exactly one of upload_id, task_id (with index) or url, "
                f"got {_and(given) if given else 'none'}"
            )
        if self.task_id is not None and self.index is None:
            raise ValueError("task_id needs index (0 for the first image)")
        if self.task_id is None and self.index is not None:
            raise ValueError("index goes with task_id only")
        return self


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
    image_urls: list[HttpUrlText] = Field(
        default_factory=list,
        max_length=MAX_IMAGE_URLS,
        description=(
            f"0 to {MAX_IMAGE_URLS} reference images (http or https, at most {MAX_URL_CHARS} "
            "characters each; .jpeg .jpg .png .webp up to 50 MB, directly downloadable by the "
            "provider). Empty for text-to-image. With `reference_images` at most "
            f"{MAX_REFERENCES} in all; the provider gets these first."
        ),
    )
    reference_images: list[ReferenceIn] = Field(
        default_factory=list,
        max_length=MAX_REFERENCES,
        description=(
            f"0 to {MAX_REFERENCES} reference images, each an upload of the caller, an archived "
            "image of the caller's own succeeded task, or a URL; checked at create. With "
            f"`image_urls` at most {MAX_REFERENCES} in all."
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

    @field_validator("reference_images")
    @classmethod
    def _at_most_16_in_all(
        cls, values: list[ReferenceIn], info: ValidationInfo
    ) -> list[ReferenceIn]:
        urls = len(info.data.get("image_urls", ()))
        if urls + len(values) > MAX_REFERENCES:
            raise ValueError(
                f"image_urls and reference_images hold at most {MAX_REFERENCES} images in all, "
                f"got {urls} + {len(values)}"
            )
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
        normalised = self.model_dump(mode="json", exclude={"reference_images"})
        if self.reference_images:  # left out when empty: the hash of older requests stands
            normalised["reference_images"] = [
                reference.model_dump(mode="json", exclude_none=True)
                for reference in self.reference_images
            ]
        canonical = json.dumps(normalised, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ImageOut(BaseModel):
    """One archived image."""

    index: int = Field(ge=0)
    url: str = Field(description="Path of the image bytes on this service.")
    content_type: str
    bytes: int = Field(ge=0)
    sha256: str


class UrlReferenceOut(BaseModel):
    """A reference image given as a URL (an `image_urls` entry or a `url` reference)."""

    source: Literal["url"]
    url: str


class UploadReferenceOut(BaseModel):
    """A reference image the caller uploaded, as it was when the task was created."""

    source: Literal["upload"]
    upload_id: str
    content_type: str
    bytes: int = Field(ge=0)
    sha256: str


class TaskReferenceOut(BaseModel):
    """A reference image that is an archived image of the caller's own task."""

    source: Literal["task"]
    task_id: str
    index: int = Field(ge=0)
    content_type: str
    bytes: int = Field(ge=0)
    sha256: str


ReferenceOut = Annotated[
    UrlReferenceOut | UploadReferenceOut | TaskReferenceOut, Field(discriminator="source")
]
"""One reference image of a task; the fields that do not apply to its source are absent."""


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


class UsageOut(BaseModel):
    """What a task costs, in provider credits (docs/limits.md)."""

    credits: float = Field(ge=0)
    source: Literal["estimate", "provider"] = Field(
        description=(
            "`estimate`: the service's estimate at create; `provider`: the provider's own "
            "figure (0 for a create the provider refused)."
        )
    )


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
    reference_images: list[ReferenceOut] = Field(
        default_factory=list,
        description=(
            "Every reference image in the order the provider gets them: `image_urls` entries "
            "(source `url`), then `reference_images` as given."
        ),
    )
    error: ErrorOut | None = None
    usage: UsageOut
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


class UsageDayOut(BaseModel):
    """The caller's tasks created on one UTC day."""

    date: str = Field(description="The UTC day, YYYY-MM-DD.")
    tasks: dict[str, int] = Field(description="How many tasks of that day are in each status.")
    credits: float = Field(description="Their credits (estimates or the provider's figures).")


class UsageRemainingOut(BaseModel):
    """What is left of the caller's budgets now; null: no such budget."""

    daily_credits: float | None
    monthly_credits: float | None


class UsageReportOut(BaseModel):
    """The caller's usage per UTC day over a range, its limits and its remaining budgets."""

    model_config = ConfigDict(populate_by_name=True)

    caller: str
    from_: str = Field(alias="from", description="First day of the range, YYYY-MM-DD.")
    to: str = Field(description="Last day of the range (inclusive), YYYY-MM-DD.")
    days: list[UsageDayOut] = Field(description="Every day of the range, oldest first.")
    limits: dict[str, int | float] = Field(
        description="The caller's configured limits (default merged with its own keys)."
    )
    remaining: UsageRemainingOut
