"""A cap on request bodies, answered with the API's own 413 before the body is read whole."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

from app.core.errors import BodyTooLarge, error_response

MAX_BODY_BYTES = 1024 * 1024


def _capped(receive: Receive, limit: int) -> Receive:
    received = 0

    async def receive_capped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)  # FastAPI wraps it in a 400; the handler unwraps it
        return message

    return receive_capped


class CappedBodyRoute(APIRoute):
    """A route whose request body may not pass MAX_BODY_BYTES, whatever Content-Length says."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def capped(request: Request) -> Response:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                problem = BodyTooLarge(MAX_BODY_BYTES)
                return error_response(problem.status_code, problem.code, problem.message)
            return await handler(Request(request.scope, _capped(request.receive, MAX_BODY_BYTES)))

        return capped
