"""One error shape for every answer: {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ApiErrorBody(BaseModel):
    """Error detail."""

    code: str
    message: str


class ApiError(BaseModel):
    """Every error answer of the API."""

    error: ApiErrorBody


ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ApiError, "description": "Missing or invalid API key."},
    422: {"model": ApiError, "description": "Invalid input; the message names the field."},
}
"""The error answers every caller route documents."""


_UNPARSABLE = "body: JSON the service cannot read (nested too deeply or a number too long)"


class ApiProblem(Exception):
    """Raised by handlers to answer with an error body."""

    def __init__(
        self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


class BodyTooLarge(ApiProblem):
    """A request body over the cap (app.core.body_cap)."""

    def __init__(self, limit: int) -> None:
        message = f"the body is over {limit} bytes; nothing was saved"
        super().__init__(413, "payload_too_large", message)


def error_response(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error answer."""
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def describe_validation(errors: Sequence[Any]) -> str:
    """`field: problem; field: problem` from pydantic's error list."""
    parts = []
    for error in errors:
        location = [item for item in error.get("loc", ()) if item not in ("body", "query")]
        field = field_path(location) or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":  # the location is a character position
            why = (error.get("ctx") or {}).get("error", "")
            message = f"{message} ({why})" if why else message
            position = ".".join(str(item) for item in location) or 0
            field, message = "body", f"{message} at character {position}"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def field_path(location: Sequence[object]) -> str:
    """`("reference_images", 2, "index")` -> `reference_images[2].index`."""
    path = ""
    for item in location:
        if isinstance(item, int):
            path += f"[{item}]"
        else:
            path += f".{item}" if path else str(item)
    return path


def install_error_handlers(app: FastAPI) -> None:
    """Make every error answer use the one shape."""

    @app.exception_handler(ApiProblem)
    async def _problem(_request: Request, exc: ApiProblem) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's answer to a JSON body that is not UTF-8: invalid input like any other.
            return error_response(422, "validation_error", "body: JSON decode error (not UTF-8)")
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, ApiProblem):
            # raised while FastAPI read the body (BodyTooLarge): the problem is the answer
            return error_response(cause.status_code, cause.code, cause.message, cause.headers)
        if exc.status_code == 400 and cause is not None:
            # FastAPI's answer to a body its JSON parser gave up on (nested too deeply, an
            # integer of more than 4300 digits): invalid input too.
            return error_response(422, "validation_error", _UNPARSABLE)
        code = _STATUS_CODES.get(exc.status_code, "error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal_error", "internal error; the request was logged")
