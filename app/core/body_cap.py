"""A cap on request bodies, answered with the API's own 413 before the body is read whole, and
JSON bodies read strictly (a name given twice in one object is refused, not "last wins")."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

from app.core.errors import ApiProblem, BodyTooLarge, error_response

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


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise ApiProblem(
                422,
                "validation_error",
                f"body: {name!r} is given twice in one JSON object; give each field once",
            )
        found[name] = value
    return found


class StrictJsonRequest(Request):
    """A request whose JSON body may not repeat a name within one object (RFC 8259 leaves the
    meaning of repeated names to each parser; the caller may have meant either value)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=_unique_names)
        return self._json


class CappedBodyRoute(APIRoute):
    """A route whose request body may not pass MAX_BODY_BYTES, whatever Content-Length says."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def capped(request: Request) -> Response:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                problem = BodyTooLarge(MAX_BODY_BYTES)
                return error_response(problem.status_code, problem.code, problem.message)
            capped_receive = _capped(request.receive, MAX_BODY_BYTES)
            return await handler(StrictJsonRequest(request.scope, capped_receive))

        return capped
