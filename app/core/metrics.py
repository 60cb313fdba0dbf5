"""Prometheus metrics of this process, and the exposition of them with scrape-time gauges.

Counters and histograms live in the client's default registry, defined once per process (so
any number of apps in one process share them and nothing is registered twice). Gauges that
describe the shared database (tasks by status, the job queue) are read at scrape time by the
endpoint in `app.operations.metrics`: they are the same on every replica."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from starlette.types import Message, Send

__all__ = ["CONTENT_TYPE_PLAIN_0_0_4", "exposition", "start_http_server"]

HTTP_REQUEST_SECONDS = Histogram(
    "imagegen_http_request_duration_seconds",
    "Time from the request to the last byte of the answer, by route template.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CALLBACKS = Counter(
    "imagegen_callbacks_total",
    "Provider callbacks by outcome: accepted, duplicate, rejected (4xx), unavailable (503).",
    ["outcome"],
)
UPSTREAM_REQUESTS = Counter(
    "imagegen_upstream_requests_total",
    "Calls to the provider by operation (create, query), outcome and HTTP status code.",
    ["operation", "outcome", "code"],
)
UPSTREAM_SECONDS = Histogram(
    "imagegen_upstream_request_duration_seconds",
    "Duration of calls to the provider, by operation.",
    ["operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
ARCHIVE_BYTES = Counter(
    "imagegen_archive_bytes_total", "Bytes of result images copied to the store."
)
ARCHIVE_SECONDS = Histogram(
    "imagegen_archive_copy_duration_seconds",
    "Duration of one image copy (download and upload), by outcome (stored, error).",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
JOBS_FINISHED = Counter(
    "imagegen_jobs_finished_total",
    "Job runs by kind and outcome (done, retry, released).",
    ["kind", "outcome"],
)
LEASE_TAKEOVERS = Counter(
    "imagegen_job_lease_takeovers_total",
    "Jobs claimed after another worker's lease expired (that worker died or hung).",
    ["kind"],
)
UPLOADS = Counter(
    "imagegen_uploads_total",
    "POST /v1/uploads by outcome: stored, replayed (same Idempotency-Key and bytes), refused.",
    ["outcome"],
)
UPLOAD_BYTES = Counter("imagegen_upload_bytes_total", "Bytes of uploads stored.")
UPLOADS_SWEPT = Counter(
    "imagegen_uploads_swept_total",
    "What the upload sweep deleted: rows (expired uploads), objects (theirs), orphans.",
    ["kind"],
)

# The callback path is the hottest of the service: its children are bound once.
CALLBACK_ACCEPTED = CALLBACKS.labels("accepted")
CALLBACK_DUPLICATE = CALLBACKS.labels("duplicate")
CALLBACK_REJECTED = CALLBACKS.labels("rejected")
CALLBACK_UNAVAILABLE = CALLBACKS.labels("unavailable")
CALLBACK_REFUSALS_BY_REASON = Counter(
    "imagegen_callback_refusals_total",
    "Provider callbacks refused from their URL alone, before the body was read.",
    ["reason"],
)
CALLBACK_REFUSALS = {
    reason: CALLBACK_REFUSALS_BY_REASON.labels(reason) for reason in ("unknown_task", "bad_token")
}
CREATES_REFUSED = Counter(
    "imagegen_creates_refused_total",
    "Creates refused by the caller's limits (docs/limits.md), by caller and reason: "
    "rate_limited, too_many_active_tasks, budget_exhausted. Only authenticated callers, so the "
    "callers of IMAGEGEN_API_KEYS bound the labels.",
    ["caller", "reason"],
)
INPUT_REFUSALS_BY_REASON = Counter(
    "imagegen_input_refusals_total",
    "Requests under /inputs/ answered 404: bad_name, bad_method, bad_token, expired, "
    "not_servable (no such task or reference, task terminal, wrong extension, object gone).",
    ["reason"],
)
INPUT_REFUSALS = {
    reason: INPUT_REFUSALS_BY_REASON.labels(reason)
    for reason in ("bad_name", "bad_method", "bad_token", "expired", "not_servable")
}
INPUTS_SERVED = Counter(
    "imagegen_inputs_served_total",
    "Reference images served under /inputs/ (GET and HEAD answered 200).",
    ["method"],
)
INPUT_ROUTE = "/inputs/{name}"
CALLBACK_ROUTE = "/callbacks/evolink/{task_id}/{nonce}/{token}"
# The form given out before the nonce was in the path (its tasks' callbacks still come there).
LEGACY_CALLBACK_ROUTE = "/callbacks/evolink/{task_id}/{token}"
_CALLBACK_SECONDS = HTTP_REQUEST_SECONDS.labels("POST", CALLBACK_ROUTE, "2xx")


def status_class(status_code: int) -> str:
    """`2xx`, `4xx`, ...: few label values whatever the codes."""
    return f"{status_code // 100}xx"


def observe_request(method: str, route: str, status_code: int, seconds: float) -> None:
    """Record one HTTP request."""
    HTTP_REQUEST_SECONDS.labels(method, route, status_class(status_code)).observe(seconds)


def observe_callback(status_code: int, seconds: float, *, legacy: bool = False) -> None:
    """Record one provider callback request (the common 200 without a label lookup)."""
    if status_code == 200 and not legacy:
        _CALLBACK_SECONDS.observe(seconds)
    else:
        route = LEGACY_CALLBACK_ROUTE if legacy else CALLBACK_ROUTE
        observe_request("POST", route, status_code, seconds)


class StatusRecorder:
    """Wraps an ASGI `send`, keeping the status of the answer."""

    __slots__ = ("_send", "started", "status_code")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status_code = 500  # what the server answers when the app sends nothing
        self.started = time.perf_counter()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status_code = message["status"]
        await self._send(message)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class _Families:
    """A collector of metric families gathered beforehand (async, from the database)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def exposition(scraped: Iterable[Metric] = ()) -> bytes:
    """This process's metrics in Prometheus text format, followed by `scraped` families."""
    return generate_latest(REGISTRY) + generate_latest(_Families(scraped))
