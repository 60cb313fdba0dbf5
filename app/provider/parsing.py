"""Tolerant reading of EvoLink bodies: unknown fields ignored, codes as strings or integers."""

from __future__ import annotations

import logging
import math
from typing import Any

from app.provider.types import ProviderStatus, ProviderTask, ProviderTaskError

log = logging.getLogger(__name__)

_STATUS_ALIASES = {
    "pending": ProviderStatus.PENDING,
    "processing": ProviderStatus.PROCESSING,
    "completed": ProviderStatus.COMPLETED,
    "failed": ProviderStatus.FAILED,
    "cancelled": ProviderStatus.CANCELLED,
    "canceled": ProviderStatus.CANCELLED,
}


class ProviderBodyError(ValueError):
    """A body that does not describe a task at all."""


def clean_text(value: str) -> str:
    """`value` with NUL and lone surrogates (JSON can carry both) replaced by U+FFFD.

    Neither can be stored: PostgreSQL text refuses NUL, UTF-8 refuses lone surrogates."""
    if value.isascii() and "\x00" not in value:
        return value
    return "".join(
        "\ufffd" if char == "\x00" or "\ud800" <= char <= "\udfff" else char for char in value
    )


def parse_status(raw: object) -> ProviderStatus:
    """Normalise a status; anything unknown is `UNKNOWN` (non-terminal) and logged."""
    status = _STATUS_ALIASES.get(str(raw).strip().lower()) if raw is not None else None
    if status is None:
        shown = clean_text(str(raw)[:64])
        log.warning("unknown provider status", extra={"provider_status": shown})
        return ProviderStatus.UNKNOWN
    return status


def parse_error(raw: object) -> ProviderTaskError | None:
    """The `error` object; `code` may be a string or an integer."""
    if not isinstance(raw, dict):
        return None
    code = raw.get("code")
    message = raw.get("message")
    return ProviderTaskError(
        code="" if code is None or isinstance(code, bool) else clean_text(str(code)[:64]),
        message="" if message is None else clean_text(str(message)[:2000]),
    )


def parse_progress(raw: object) -> int:
    """0..100 whatever arrives (numbers as strings, floats, garbage)."""
    try:
        value = int(float(str(raw)))
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(value, 0), 100)


def parse_results(raw: object) -> tuple[str, ...]:
    """Result URLs: plain strings in a list (objects with a `url` are accepted too)."""
    if not isinstance(raw, list):
        return ()
    urls: list[str] = []
    for item in raw:
        url = item.get("url") if isinstance(item, dict) else item
        if isinstance(url, str) and url.strip():
            urls.append(clean_text(url.strip()))
    return tuple(urls)


# Where a body may carry the provider's billing figure, in order of preference: the create
# answer's `usage.credits_reserved` (documented), then names a query answer or a callback might
# use (undocumented; read if present).
CREDIT_FIELDS = ("credits_reserved", "credits", "total_credits")
# No single image costs anywhere near this; a larger figure is a misreading, not a price.
MAX_TASK_CREDITS = 1_000_000.0


def parse_credits(usage: object) -> float | None:
    """The credits a task costs according to its `usage` object: a number or a numeric string
    under one of CREDIT_FIELDS; None (keep the estimate) when absent, and when unusable
    (negative, NaN, infinite, absurd, not a number), which is logged."""
    if not isinstance(usage, dict):
        return None
    for name in CREDIT_FIELDS:
        raw = usage.get(name)
        if raw is None:
            continue
        value = _number(raw)
        if value is None or not 0 <= value <= MAX_TASK_CREDITS:
            log.warning(
                "unusable credits figure from the provider ignored",
                extra={"field": f"usage.{name}", "value": clean_text(str(raw)[:64])},
            )
            continue
        return value
    return None


def _number(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def parse_task(body: Any) -> ProviderTask:
    """A task from a create, query or callback body."""
    if not isinstance(body, dict):
        raise ProviderBodyError("the body is not a JSON object")
    task_id = body.get("id")
    if (
        not isinstance(task_id, str)
        or not task_id.strip()
        or len(task_id) > 128
        or clean_text(task_id) != task_id
    ):
        raise ProviderBodyError("the body has no usable task id")
    raw_status = body.get("status")
    return ProviderTask(
        id=task_id.strip(),
        status=parse_status(raw_status),
        raw_status=clean_text(str(raw_status)[:64]),
        progress=parse_progress(body.get("progress")),
        results=parse_results(body.get("results")),
        error=parse_error(body.get("error")),
        credits=parse_credits(body.get("usage")),
        raw=body,
    )


def parse_error_body(body: Any, fallback: str) -> tuple[str, str]:
    """(code, message) of an error answer, tolerating any shape."""
    error = body.get("error") if isinstance(body, dict) else None
    parsed = parse_error(error)
    if parsed is None:
        return "", fallback[:500]
    return parsed.code, parsed.message or fallback[:500]
