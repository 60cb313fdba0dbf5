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
    """The framework's own 404 and 405 (no such route or method) in the provider's shape; a
    query path whose id is empty or has more segments is an invalid task id."""
    status = getattr(exc, "status_code", 500)
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
