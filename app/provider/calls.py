"""What every call to the provider shares: metrics, the mapping of error answers, retry hints."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx

from app.core import metrics
from app.provider.parsing import parse_error_body
from app.provider.types import (
    ProviderCallError,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderUnavailable,
)

log = logging.getLogger(__name__)

# Errors raised before a single byte of the request could have left this process.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@contextlib.contextmanager
def measured(operation: str) -> Iterator[None]:
    """Count one call by outcome and HTTP code (`none` when no answer came) and time it."""
    started = time.perf_counter()
    outcome, code = "error", None
    try:
        yield
        outcome, code = "ok", 200
    except ProviderCallError as exc:
        outcome, code = _OUTCOMES.get(type(exc), "error"), exc.status_code
        raise
    finally:
        metrics.UPSTREAM_SECONDS.labels(operation).observe(time.perf_counter() - started)
        metrics.UPSTREAM_REQUESTS.labels(operation, outcome, str(code or "none")).inc()


_OUTCOMES: dict[type[ProviderCallError], str] = {
    ProviderRejected: "rejected",
    ProviderUnavailable: "unavailable",
    ProviderOutcomeUnknown: "unknown",
}


def is_permanent(status: int) -> bool:
    """Whether an HTTP status means the provider will never accept the request as it is:
    any 4xx but 408 and 429 (400/401/402/403/404/413/415...)."""
    return 400 <= status < 500 and status not in (408, 429)


def error_for(
    status: int, code: str, message: str, retry_after: float | None, *, quiet: bool = False
) -> ProviderRejected | ProviderUnavailable:
    """The error an answer of `status` stands for; operator problems are logged here unless
    `quiet` (a caller that logs its failures itself, once per streak)."""
    if is_permanent(status):
        error = ProviderRejected(message, status_code=status, code=code)
        if error.is_operator_problem and not quiet:
            log.error(
                "provider refused this service's credentials or account; operator action needed",
                extra={"http_status": status, "provider_code": code, "provider_message": message},
            )
        return error
    # 408, 429, 5xx and anything unexpected (a redirect, say): the provider did not act on it.
    return ProviderUnavailable(message, status_code=status, code=code, retry_after=retry_after)


def checked_body(response: httpx.Response, *, quiet: bool = False) -> Any:
    """The JSON of a 2xx answer (None when it is not JSON); raise the mapped error for anything
    else (`quiet`: see `error_for`)."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if 200 <= status < 300:
        return body
    code, message = parse_error_body(body, response.text or response.reason_phrase)
    raise error_for(status, code, message, retry_after(response), quiet=quiet)


def retry_after(response: httpx.Response) -> float | None:
    """The answer's `Retry-After` in seconds (0 to an hour), None when absent or unreadable."""
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), 3600.0)


def describe(exc: Exception) -> str:
    """One short line about a transport failure."""
    return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
