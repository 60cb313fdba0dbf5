"""The callback endpoint in plain ASGI, served before the FastAPI stack (see app.main): provider
deliveries are the hottest path of the service and skip the framework's routing and middleware.

POST {CALLBACK_PREFIX}/{task_id}/{token}: 200 accepted/duplicate, 400 malformed or about another
task (its repeats too), 401 wrong token, 404 unknown task, 413 over 1 MiB, 503 when it cannot be
recorded."""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from app.callbacks.service import ACCEPTED, DUPLICATE, Answer, CallbackService
from app.callbacks.tokens import CALLBACK_PREFIX
from app.core import metrics

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
ANSWER_WITHIN_SECONDS = 8.0
TOO_LARGE = Answer(
    413,
    {"error": {"code": "payload_too_large", "message": f"at most {MAX_BODY_BYTES} bytes"}},
)
UNAVAILABLE = Answer(
    503, {"error": {"code": "unavailable", "message": "the delivery could not be recorded"}}
)
# Failures of the database (or the way to it): the provider should retry.
DATABASE_ERRORS = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
_PREFIX = CALLBACK_PREFIX + "/"


class BodyTooLarge(Exception):
    """The body passed the cap."""


def callback_target(scope: Scope) -> tuple[str, str] | None:
    """(task id, token) when the request is a provider callback POST."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    path: str = scope.get("path", "")
    if not path.startswith(_PREFIX):
        return None
    parts = path[len(_PREFIX) :].split("/")
    if len(parts) != 2:
        return None
    return parts[0], parts[1]


async def handle_callback(
    service: CallbackService, task_id: str, token: str, scope: Scope, receive: Receive, send: Send
) -> int:
    """Read, record and answer one provider callback; returns the HTTP status sent."""
    try:
        body = await read_capped(scope, receive, MAX_BODY_BYTES)
        # Answer well inside the provider's 10 s timeout, even when the database hangs.
        async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
            answer = await service.receive(task_id, token, body)
    except BodyTooLarge:
        answer = TOO_LARGE
    except DATABASE_ERRORS:
        log.exception(
            "cannot record a callback; asking the provider to retry", extra={"task_id": task_id}
        )
        answer = UNAVAILABLE
    _count(answer)
    await respond(send, answer)
    return answer.status_code


def _count(answer: Answer) -> None:
    if answer is ACCEPTED:
        metrics.CALLBACK_ACCEPTED.inc()
    elif answer is DUPLICATE:
        metrics.CALLBACK_DUPLICATE.inc()
    elif answer is UNAVAILABLE:
        metrics.CALLBACK_UNAVAILABLE.inc()
    else:
        metrics.CALLBACK_REJECTED.inc()


async def read_capped(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes whatever Content-Length says."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def respond(send: Send, answer: Answer) -> None:
    """Send a small JSON answer."""
    payload = json.dumps(answer.body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": answer.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
