"""Provider-neutral shapes of upstream tasks and the errors of upstream calls."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MODEL = "gpt-image-1.5"
SIZES = ("1:1", "2:3", "3:2", "1024x1024", "1024x1536", "1536x1024")
QUALITIES = ("low", "medium", "high")
MAX_IMAGE_URLS = 16
TASK_ID_PREFIX = "task-unified-"
# Upstream task ids stay one URL path segment: refuse anything else before it reaches a URL.
TASK_ID_PATTERN = re.compile(r"task-unified-[A-Za-z0-9_\-]{1,100}")


def is_provider_task_id(value: str) -> bool:
    """Whether `value` looks like an upstream task id and is safe in a URL path."""
    return TASK_ID_PATTERN.fullmatch(value) is not None


# Pixel size of each accepted size value.
PIXELS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (1024, 1536),
    "3:2": (1536, 1024),
    "1024x1024": (1024, 1024),
    "1024x1536": (1024, 1536),
    "1536x1024": (1536, 1024),
}

# Task failure codes the provider documents.
CALLER_ERROR_CODES = (
    "content_policy_violation",
    "invalid_parameters",
    "image_processing_error",
    "image_dimension_mismatch",
    "request_cancelled",
)
TRANSIENT_ERROR_CODES = (
    "generation_failed_no_content",
    "service_error",
    "generation_timeout",
    "resource_exhausted",
    "quota_exceeded",
    "service_unavailable",
)
OTHER_ERROR_CODES = ("resource_not_found", "unknown_error")


class ProviderStatus(StrEnum):
    """A task status as the provider reports it, normalised."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        return self in (ProviderStatus.COMPLETED, ProviderStatus.FAILED, ProviderStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class ProviderTaskError:
    """The `error` object of a failed task."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ProviderTask:
    """One upstream task as read from a create, query or callback body."""

    id: str
    status: ProviderStatus
    raw_status: str
    progress: int
    results: tuple[str, ...] = ()
    error: ProviderTaskError | None = None
    credits: float | None = None  # the provider's billing figure, when it reports one
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class CreateTaskRequest:
    """What the gateway asks the provider to generate."""

    prompt: str
    size: str
    quality: str
    image_urls: tuple[str, ...] = ()
    model: str = MODEL
    n: int = 1
    callback_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The create body; `image_urls` only when not empty (the provider refuses [])."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": self.prompt,
            "size": self.size,
            "quality": self.quality,
            "n": self.n,
        }
        if self.image_urls:
            body["image_urls"] = list(self.image_urls)
        if self.callback_url is not None:
            body["callback_url"] = self.callback_url
        return body


class ProviderCallError(Exception):
    """An upstream call did not produce a usable task."""

    def __init__(self, message: str, *, status_code: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code


class ProviderRejected(ProviderCallError):
    """The provider refused the request for good (400/401/402/403/404/413)."""

    @property
    def is_operator_problem(self) -> bool:
        """401/402/403 mean the gateway's own account or key is wrong, not the caller's input."""
        return self.status_code in (401, 402, 403)


class ProviderUnavailable(ProviderCallError):
    """A transient failure the provider certainly did not act on: retry later."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code)
        self.retry_after = retry_after


class ProviderOutcomeUnknown(ProviderCallError):
    """The request may have reached the provider but its answer was lost."""
