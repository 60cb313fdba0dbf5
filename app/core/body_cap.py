"""A cap on request bodies, answered with a 413 before the body is read whole, and JSON bodies
read strictly (a name given twice in one object is refused, not "last wins").

`capped_receive` is the one reader of capped bodies: the API's routes, the console's and the
callback endpoint (app/callbacks/endpoint.py) use it."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive, Scope

from app.core.errors import ApiProblem, BodyTooLarge, error_response

MAX_BODY_BYTES = 1024 * 1024


def capped_receive(scope: Scope, receive: Receive, limit: int) -> Receive:
    """`receive` for a body of at most `limit` bytes, whatever Content-Length says: BodyTooLarge
    at once when Content-Length declares more, else once the chunks received pass the cap."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge(limit)
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
            try:
                receive = capped_receive(request.scope, request.receive, MAX_BODY_BYTES)
            except BodyTooLarge as problem:
                return error_response(problem.status_code, problem.code, problem.message)
            return await handler(StrictJsonRequest(request.scope, receive))

        return capped
