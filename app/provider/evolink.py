"""The one thin client of EvoLink's task API: create and query, with error mapping."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx

from app.core import metrics
from app.provider.parsing import ProviderBodyError, parse_error_body, parse_task
from app.provider.types import (
    CreateTaskRequest,
    ProviderCallError,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderTask,
    ProviderUnavailable,
    is_provider_task_id,
)

log = logging.getLogger(__name__)

CREATE_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=5.0)
QUERY_TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=5.0)
# Errors raised before a single byte of the request could have left this process.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class EvolinkClient:
    """Calls the upstream through the process's shared `httpx.AsyncClient`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        *,
        create_read_timeout: float = 30.0,
    ) -> None:
        self._http = http
        self._create_timeout = CREATE_TIMEOUT.__class__(
            connect=CREATE_TIMEOUT.connect,
            read=create_read_timeout,
            write=CREATE_TIMEOUT.write,
            pool=CREATE_TIMEOUT.pool,
        )
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    async def create_task(self, request: CreateTaskRequest) -> ProviderTask:
        """Submit a task. Raises ProviderRejected, ProviderUnavailable or ProviderOutcomeUnknown."""
        with _measured("create"):
            return await self._create_task(request)

    async def get_task(self, task_id: str) -> ProviderTask:
        """Query a task. Raises ProviderRejected or ProviderUnavailable."""
        with _measured("query"):
            return await self._get_task(task_id)

    async def _create_task(self, request: CreateTaskRequest) -> ProviderTask:
        url = f"{self._base_url}/v1/images/generations"
        try:
            response = await self._http.post(
                url, json=request.to_json(), headers=self._headers, timeout=self._create_timeout
            )
        except _NOT_SENT as exc:
            raise ProviderUnavailable(f"cannot reach the provider: {_describe(exc)}") from exc
        except httpx.HTTPError as exc:
            raise ProviderOutcomeUnknown(
                f"the create request may have reached the provider, but no answer came back: "
                f"{_describe(exc)}"
            ) from exc
        if response.status_code == 504:
            raise ProviderOutcomeUnknown(
                "the provider's gateway timed out; the task may exist", status_code=504
            )
        body = _checked_body(response)
        try:
            created = parse_task(body)
        except ProviderBodyError as exc:
            raise ProviderOutcomeUnknown(
                f"the provider accepted the create but its answer is unreadable: {exc}",
                status_code=response.status_code,
            ) from exc
        if not is_provider_task_id(created.id):
            # Never recorded (it could never be queried); the callback may bring the real id.
            raise ProviderOutcomeUnknown(
                f"the provider accepted the create but named no usable task id: "
                f"{created.id[:80]!r}",
                status_code=response.status_code,
            )
        return created

    async def _get_task(self, task_id: str) -> ProviderTask:
        if not is_provider_task_id(task_id):
            raise ProviderRejected(
                f"not a provider task id: {task_id[:80]!r}", code="invalid_task_id"
            )
        url = f"{self._base_url}/v1/tasks/{task_id}"
        try:
            response = await self._http.get(url, headers=self._headers, timeout=QUERY_TIMEOUT)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"querying the provider failed: {_describe(exc)}") from exc
        body = _checked_body(response)
        try:
            return parse_task(body)
        except ProviderBodyError as exc:
            raise ProviderUnavailable(f"unreadable task from the provider: {exc}") from exc


@contextlib.contextmanager
def _measured(operation: str) -> Iterator[None]:
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


def _checked_body(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer; raise the mapped error for anything else."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if 200 <= status < 300:
        return body
    code, message = parse_error_body(body, response.text or response.reason_phrase)
    if 400 <= status < 500 and status not in (408, 429):
        # The provider will never accept this request as it is (400/401/402/403/404/413...).
        error = ProviderRejected(message, status_code=status, code=code)
        if error.is_operator_problem:
            log.error(
                "provider refused this service's credentials or account; operator action needed",
                extra={"http_status": status, "provider_code": code, "provider_message": message},
            )
        raise error
    # 408, 429, 5xx and anything unexpected (a redirect, say): the provider did not act on it.
    raise ProviderUnavailable(
        message, status_code=status, code=code, retry_after=_retry_after(response)
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), 3600.0)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
