"""Error bodies in the provider's shape: `{"error": {"code", "message", "type", "param"?}}`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse

from app.provider.types import TASK_ID_PREFIX

if TYPE_CHECKING:
    from starlette.requests import Request


class ApiError(Exception):
    """An answer other than 2xx, raised from a handler and rendered by `api_error_handler`."""

    def __init__(
        self, status: int, code: str, message: str, type_: str, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_
        self.param = param

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        error: dict[str, Any] = {"code": self.code, "message": self.message, "type": self.type}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def invalid_request(message: str, param: str | None = None) -> ApiError:
    """400 invalid_request, naming the offending field."""
    return ApiError(400, "invalid_request", message, "invalid_request_error", param)


def unauthorized() -> ApiError:
    """401 for a missing or unknown API key."""
    return ApiError(401, "unauthorized", "Invalid or missing API key", "authentication_error")


def rate_limited() -> ApiError:
    """429 as the provider answers it when throttling."""
    return ApiError(
        429,
        "rate_limit_exceeded",
        "Rate limit exceeded for model gpt-image-1.5, please retry after 60 seconds",
        "rate_limit_error",
    )


def insufficient_quota(needed: float, remaining: float) -> ApiError:
    """402 when the account's balance cannot cover the task."""
    return ApiError(
        402,
        "insufficient_quota",
        f"Insufficient credits: this task needs {needed} credits and the account has "
        f"{remaining}; top up the account",
        "insufficient_quota",
    )


def internal_error() -> ApiError:
    """500 for a provider fault."""
    return ApiError(500, "internal_error", "Internal server error, please retry", "api_error")


def invalid_task_id() -> ApiError:
    """400 for a query whose id is not one of the provider's."""
    return ApiError(
        400,
        "invalid_task_id",
        f"Task id must start with '{TASK_ID_PREFIX}'",
        "invalid_request_error",
        "task_id",
    )


def service_unavailable() -> ApiError:
    """503 during an outage: the provider's table gives 500, 502 and 503 one code."""
    return ApiError(
        503, "internal_error", "Service temporarily unavailable, please retry", "api_error"
    )


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The framework's own 404 and 405 (no such route or method) in the provider's shape (the
    Files API's below its paths); a query path whose id is empty or has more segments is an
    invalid task id."""
    status = getattr(exc, "status_code", 500)
    if "/api/v1/files/" in request.url.path:  # the Files API answers in its own shape
        files_error = FilesApiError(status, str(getattr(exc, "detail", exc)))
        return JSONResponse(files_error.body(), status_code=status)
    if status == 404 and "/v1/tasks/" in request.url.path:  # also under a mount prefix
        error = invalid_task_id()
    elif status == 404:
        error = not_found(f"No route {request.url.path}", code="not_found")
    elif status == 405:
        error = ApiError(405, "method_not_allowed", "Method not allowed", "invalid_request_error")
    else:
        error = ApiError(status, "invalid_request", str(exc), "invalid_request_error")
    return JSONResponse(error.body(), status_code=error.status)


def not_found(message: str, code: str = "task_not_found") -> ApiError:
    """404 for an unknown task or a dead result link."""
    return ApiError(404, code, message, "invalid_request_error")


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """Render an `ApiError` as its JSON body."""
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


class FilesApiError(Exception):
    """A Files API answer other than 2xx: `{"success": false, "code": <status>, "msg": ...}`."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg

    def body(self) -> dict[str, Any]:
        """The JSON error body; `code` repeats the HTTP status."""
        return {"success": False, "code": self.status, "msg": self.msg}


def files_unauthorized() -> FilesApiError:
    """401 for a missing or unknown API key."""
    return FilesApiError(401, "Invalid or missing API key")


def files_bad_request(msg: str) -> FilesApiError:
    """400 for an upload the API cannot take as it is."""
    return FilesApiError(400, msg)


def files_quota_exhausted(quota: int) -> FilesApiError:
    """402 once the account's file quota is used up."""
    return FilesApiError(
        402, f"File quota exhausted: at most {quota} stored files; uploads fail until some expire"
    )


def files_too_large(limit: int) -> FilesApiError:
    """413 for a file (or a request body) over the size limit."""
    return FilesApiError(413, f"File too large: at most {limit} bytes")


def files_unsupported_type() -> FilesApiError:
    """415 for bytes that are not a JPEG, PNG, GIF or WebP image (sniffed, not declared)."""
    return FilesApiError(415, "Unsupported file type: only JPEG, PNG, GIF and WebP images")


def files_rate_limited() -> FilesApiError:
    """429 as a throttled upload is answered."""
    return FilesApiError(429, "Too many requests, please retry later")


def files_unavailable() -> FilesApiError:
    """503 for a Files API fault."""
    return FilesApiError(503, "Service temporarily unavailable, please retry")


def files_not_found(msg: str = "File not found") -> FilesApiError:
    """404 for an unknown or expired file."""
    return FilesApiError(404, msg)


async def files_api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """Render a `FilesApiError` as its JSON body."""
    assert isinstance(exc, FilesApiError)
    return JSONResponse(exc.body(), status_code=exc.status)
