"""Caller authentication: Bearer API keys compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute

from app.core.body_cap import CappedBodyRoute
from app.core.errors import ApiProblem


class KeyRing:
    """Named keys; lookup takes the same time whichever key (if any) matches."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._digests = [
            (hashlib.sha256(key.encode()).digest(), name) for key, name in keys.items()
        ]

    def identify(self, presented: str) -> str | None:
        """The name owning `presented`, comparing against every key without early exit."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for candidate, name in self._digests:
            if hmac.compare_digest(candidate, digest):
                found = name
        return found


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer` header, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def get_caller_keys(request: Request) -> KeyRing:
    """The callers' keys of the running app."""
    keys: KeyRing = request.app.state.caller_keys
    return keys


def authenticate(request: Request) -> str:
    """The calling service's name, or 401; remembered on the request for `require_caller`."""
    token = bearer_token(request)
    caller = get_caller_keys(request).identify(token) if token else None
    if caller is None:
        raise ApiProblem(
            401,
            "unauthorized",
            "missing or invalid API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.caller = caller
    return caller


async def require_caller(request: Request) -> str:
    """The calling service's name, or 401. The caller routes authenticate before the body is
    read (`_authenticated`): their answer is reused, not computed again."""
    caller: str | None = getattr(request.state, "caller", None)
    return caller if caller is not None else authenticate(request)


CallerDep = Annotated[str, Depends(require_caller)]


def without_empty_values(query: bytes) -> bytes:
    """The query string less its parameters given an empty value (`status=`): not given."""
    kept = []
    for part in query.split(b"&"):
        _name, equals, value = part.partition(b"=")
        if part and not (equals and not value):
            kept.append(part)
    return b"&".join(kept)


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _authenticated(handler: Handler) -> Handler:
    async def authenticated(request: Request) -> Response:
        authenticate(request)
        request.scope["query_string"] = without_empty_values(request.scope["query_string"])
        return await handler(request)

    return authenticated


class CallerRoute(CappedBodyRoute):
    """A route of the caller API: the key is checked before the body is read, so a request
    without a valid key gets `401` whatever its body (FastAPI parses a JSON body, and the cap
    measures it, before any dependency runs). A query parameter given an empty value
    (`?status=&limit=`, as forms and some clients send them) is taken as not given. Body capped
    as `CappedBodyRoute`."""

    def get_route_handler(self) -> Handler:
        return _authenticated(super().get_route_handler())


class StreamingCallerRoute(APIRoute):
    """A caller route whose handler reads the body itself, as a stream with its own limit
    (uploads, app/uploads/body.py): the key is checked first as on `CallerRoute`, without the
    1 MiB cap of JSON bodies. Its endpoint must not declare a body parameter."""

    def get_route_handler(self) -> Handler:
        return _authenticated(super().get_route_handler())
