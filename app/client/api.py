"""HTTP calls of the client: upload a reference image, submit a generation, read a task, stream
an image."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

USER_AGENT = "imagegen-gateway-client"
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class ImageView(BaseModel):
    """The fields of an archived image the client uses."""

    index: int
    url: str
    content_type: str = "application/octet-stream"
    bytes: int
    sha256: str


class ErrorView(BaseModel):
    """Why a task failed."""

    code: str
    message: str = ""


class TaskView(BaseModel):
    """The fields of a task object the client uses (others are ignored)."""

    id: str
    status: str
    progress: int = 0
    images: list[ImageView] = []
    error: ErrorView | None = None

    @property
    def terminal(self) -> bool:
        """Whether the task will never change again."""
        return self.status in TERMINAL_STATUSES


class UploadView(BaseModel):
    """The fields of an upload object the client uses."""

    id: str
    content_type: str
    bytes: int
    sha256: str


class GatewayError(Exception):
    """The service could not be reached, or answered with an error."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed when repeated (no answer, or 408/429/5xx)."""
        return self.status is None or self.status in TRANSIENT_STATUSES


def _problem(response: httpx.Response) -> GatewayError:
    """The service's `{"error": {"code", "message"}}`, or the start of whatever it sent."""
    code, message = None, ""
    with contextlib.suppress(ValueError, LookupError, TypeError):
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    if not message:
        message = response.text[:200].strip() or response.reason_phrase
    label = f"HTTP {response.status_code}" + (f" {code}" if code else "")
    return GatewayError(f"{label}: {message}", status=response.status_code, code=code)


def _task(response: httpx.Response) -> TaskView:
    try:
        return TaskView.model_validate(response.json())
    except (ValueError, ValidationError):
        raise _unexpected(response, "a task object") from None


def _upload(response: httpx.Response) -> UploadView:
    try:
        return UploadView.model_validate(response.json())
    except (ValueError, ValidationError):
        raise _unexpected(response, "an upload object") from None


def _unexpected(response: httpx.Response, what: str) -> GatewayError:
    return GatewayError(
        f"unexpected answer to {response.request.method} {response.request.url.path}: not {what}",
        status=response.status_code,
    )


class Gateway:
    """One HTTP connection pool to a gateway, authenticated as one caller."""

    def __init__(
        self, base_url: str, api_key: str, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
            timeout=TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None

    def upload(
        self, chunks: Iterable[bytes], *, size: int, content_type: str, idempotency_key: str
    ) -> tuple[UploadView, bool]:
        """POST an image as the raw body, streamed from `chunks` (exactly `size` bytes, sent with
        that Content-Length); the upload and whether it is new (201) or a replay of the key."""
        response = self._send(
            "POST",
            "/v1/uploads",
            content=chunks,
            headers={
                "Content-Type": content_type,
                "Content-Length": str(size),
                "Idempotency-Key": idempotency_key,
            },
        )
        if response.status_code not in (200, 201):
            raise _problem(response)
        return _upload(response), response.status_code == 201

    def create(self, body: dict[str, Any], idempotency_key: str) -> tuple[TaskView, bool]:
        """POST the request; the task and whether it is new (202) or a replay of the key (200)."""
        response = self._send(
            "POST",
            "/v1/images/generations",
            json=body,
            headers={"Idempotency-Key": idempotency_key},
        )
        if response.status_code not in (200, 202):
            raise _problem(response)
        return _task(response), response.status_code == 202

    def task(self, task_id: str) -> TaskView:
        """GET the task object."""
        response = self._send("GET", f"/v1/tasks/{task_id}")
        if response.status_code != 200:
            raise _problem(response)
        return _task(response)

    @contextlib.contextmanager
    def image(self, url: str) -> Iterator[httpx.Response]:
        """Stream an image, following a redirect to a signed URL of the store.

        httpx drops the Authorization header when a redirect leaves the service's origin.
        """
        try:
            with self._http.stream("GET", url, follow_redirects=True) as response:
                if response.status_code != 200:
                    response.read()
                    raise _problem(response)
                yield response
        except httpx.HTTPError as exc:
            raise GatewayError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
