"""Simulated tasks: their clock-driven lifecycle and the JSON bodies that describe them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.provider.types import MODEL, PIXELS

if TYPE_CHECKING:
    from .references import ReferenceFetch
    from .validation import CreateParams

OBJECT = "image.generation.task"
REFERENCE_ERROR = "image_processing_error"  # the code of a task whose references are unusable
PENDING_SHARE = 0.2  # the first 20% of the duration is `pending`
STALE_PROGRESS = 50
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
ERROR_MESSAGES = {
    "content_policy_violation": "Content policy violation. The request was rejected by safety.",
    "invalid_parameters": "Invalid parameters for this model.",
    "image_processing_error": "A reference image could not be processed.",
    "image_dimension_mismatch": "Reference image dimensions do not match.",
    "request_cancelled": "The request was cancelled.",
    "generation_failed_no_content": "Generation finished without producing an image.",
    "service_error": "Upstream service error, please retry.",
    "generation_timeout": "Generation timed out, please retry.",
    "resource_exhausted": "Resources exhausted, please retry later.",
    "quota_exceeded": "Quota exceeded.",
    "service_unavailable": "Service temporarily unavailable, please retry.",
    "resource_not_found": "A referenced resource was not found.",
    "unknown_error": "Unknown error.",
}


@dataclass(eq=False)
class SimTask:
    """One accepted create request and everything observed about it since."""

    id: str
    created: int
    created_at: float
    duration: float
    request: dict[str, Any]
    params: CreateParams
    base_url: str
    file_token: str
    image_format: str
    image_noise: float
    credits: float = 0.0  # what its create reserved (billing.py)
    error_code: str | None = None
    # Wall-clock time (epoch seconds) at which the create was accepted, before it was answered.
    accepted_at: float = field(default_factory=time.time)
    image_sha256: str | None = None
    image_bytes: int | None = None
    finalized: bool = False
    callback_dropped: bool = False
    downloads: int = 0
    callback_log: list[dict[str, Any]] = field(default_factory=list)
    # Its `image_urls` downloads: while they run the task cannot end; an unusable reference
    # fails it as soon as they are all done.
    fetching_references: bool = False
    references_settled_at: float | None = None
    reference_error: str | None = None
    references: list[ReferenceFetch] = field(default_factory=list)

    @property
    def callback_url(self) -> str | None:
        """Where the final status is POSTed, if anywhere."""
        return self.params.callback_url

    @property
    def planned_at(self) -> float:
        """Monotonic time at which the task ends unless its references hold it up."""
        return self.created_at + self.duration

    @property
    def due_at(self) -> float:
        """Monotonic time at which the task reaches its final status: never while its
        references download, when they are done if one is unusable, else as planned (or when
        they are done, if later)."""
        if self.fetching_references:
            return math.inf
        settled = self.references_settled_at
        if settled is None:
            return self.planned_at
        if self.reference_error is not None:
            return settled
        return max(self.planned_at, settled)

    @property
    def failure_code(self) -> str | None:
        """The error code the task ends with, None when it completes."""
        return REFERENCE_ERROR if self.reference_error is not None else self.error_code

    @property
    def failure_message(self) -> str:
        """The error message of a failed task."""
        if self.reference_error is not None:
            return self.reference_error
        return ERROR_MESSAGES[self.failure_code or "unknown_error"]

    @property
    def final_status(self) -> str:
        """`failed` when a failure was drawn at create time or a reference is unusable."""
        return "failed" if self.failure_code else "completed"

    @property
    def pixels(self) -> tuple[int, int]:
        """Width and height of the result image."""
        return PIXELS[self.params.size]

    @property
    def file_name(self) -> str:
        """The last segment of the result link."""
        return f"{self.file_token}.{EXTENSIONS[self.image_format]}"

    def phase(self, now: float) -> tuple[str, int]:
        """Status and progress at monotonic time `now`; progress never decreases before the end."""
        # Compared with due_at itself: `due_at - created_at` can round below `duration`.
        if now >= self.due_at:
            return (self.final_status, 0 if self.failure_code else 100)
        elapsed = now - self.created_at
        start = self.duration * PENDING_SHARE
        if elapsed < start:
            return ("pending", 0)
        span = self.duration - start
        if elapsed >= self.duration or span <= 0:  # past its plan: held up by its references
            return ("processing", 99)
        return ("processing", 1 + int(99 * (elapsed - start) / span))


def result_url(task: SimTask, base_url: str) -> str:
    """The absolute result link of a task as seen from `base_url`."""
    return f"{base_url}/files/{task.id}/{task.file_name}"


def create_body(task: SimTask) -> dict[str, Any]:
    """The 200 answer to a create request."""
    return {
        "created": task.created,
        "id": task.id,
        "model": MODEL,
        "object": OBJECT,
        "progress": 0,
        "status": "pending",
        "task_info": {"can_cancel": True, "estimated_time": max(1, math.ceil(task.duration))},
        "type": "image",
        "usage": {
            "billing_rule": "per_call",
            "credits_reserved": task.credits,
            "user_group": "default",
        },
    }


def query_body(task: SimTask, now: float, base_url: str) -> dict[str, Any]:
    """The 200 answer to a task query at monotonic time `now`."""
    status, progress = task.phase(now)
    if status == "failed":
        code = task.failure_code or "unknown_error"
        return {
            "id": task.id,
            "object": OBJECT,
            "status": "failed",
            "model": MODEL,
            "progress": 0,
            "error": {"code": code, "message": task.failure_message, "type": "task_error"},
        }
    body: dict[str, Any] = {
        "created": task.created,
        "id": task.id,
        "model": MODEL,
        "object": OBJECT,
        "progress": progress,
        "status": status,
    }
    if status == "completed":
        body["results"] = [result_url(task, base_url)]
        body["task_info"] = {"can_cancel": False}
    else:
        expected = task.planned_at if task.fetching_references else task.due_at
        remaining = max(1, math.ceil(expected - now))
        body["task_info"] = {"can_cancel": True, "estimated_time": remaining}
    body["type"] = "image"
    return body


def final_body(task: SimTask) -> dict[str, Any]:
    """The callback body: the query answer at completion, with links for the create's host."""
    return query_body(task, task.due_at, task.base_url)


def stale_body(task: SimTask) -> dict[str, Any]:
    """An out-of-date `processing` body, as a late retry of an older state would carry."""
    progress = STALE_PROGRESS if task.final_status == "completed" else 0
    return {
        "created": task.created,
        "id": task.id,
        "model": MODEL,
        "object": OBJECT,
        "progress": progress,
        "status": "processing",
        "task_info": {"can_cancel": True, "estimated_time": 1},
        "type": "image",
    }
