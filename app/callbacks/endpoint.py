"""The callback endpoint in plain ASGI, served before the FastAPI stack (see app.main): provider
deliveries are the hottest path of the service and skip the framework's routing and middleware.

POST {CALLBACK_PREFIX}/{task_id}/{nonce}/{token} (and {CALLBACK_PREFIX}/{task_id}/{token}, the
form given out by earlier versions): 200 accepted/duplicate, 400 malformed or about another task
(its repeats too), 401 wrong token, 404 unknown task, 408 body not in within 10 s, 413 over
1 MiB, 503 when it cannot be recorded. 401 and 404 are decided from the path before any of the
body is read (for a path with its nonce, without the database); a path the service signed whose
task is gone or has another nonce is refused the same way once its body is in."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import NamedTuple

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from app.callbacks.service import ACCEPTED, DUPLICATE, UNSTORED, Answer, CallbackService
from app.core import metrics
from app.core.body_cap import MAX_BODY_BYTES, capped_receive
from app.core.callback_tokens import CALLBACK_PREFIX
from app.core.errors import BodyTooLarge
from app.core.headers import NOSNIFF

log = logging.getLogger(__name__)

ANSWER_WITHIN_SECONDS = 8.0
# The whole body must arrive within this long: a client trickling bytes cannot hold a connection.
BODY_WITHIN_SECONDS = 10.0
TOO_LARGE = Answer(
    413,
    {"error": {"code": "payload_too_large", "message": f"at most {MAX_BODY_BYTES} bytes"}},
)
TOO_SLOW = Answer(
    408,
    {"error": {"code": "request_timeout", "message": "body not received within the deadline"}},
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


class BodyTooSlow(Exception):
    """The body did not arrive within its deadline."""


class CallbackTarget(NamedTuple):
    """What the path of a callback names; `nonce` is None in the older form without it."""

    task_id: str
    nonce: str | None
    token: str


def callback_target(scope: Scope) -> CallbackTarget | None:
    """The path's parts when the request is a provider callback POST."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    path: str = scope.get("path", "")
    if not path.startswith(_PREFIX):
        return None
    parts = path[len(_PREFIX) :].split("/")
    if len(parts) == 3:
        return CallbackTarget(parts[0], parts[1], parts[2])
    if len(parts) == 2:
        return CallbackTarget(parts[0], None, parts[1])
    return None


async def handle_callback(
    service: CallbackService, target: CallbackTarget, scope: Scope, receive: Receive, send: Send
) -> int:
    """Admit, read, record and answer one provider callback; returns the HTTP status sent."""
    close = False
    try:
        admitted = service.check(*target)
        if admitted is None:  # a path without its nonce: checked against the task
            # Answer well inside the provider's 10 s timeout, even when the database hangs.
            async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
                admitted = await service.admit_stored(target.task_id, target.token)
        if isinstance(admitted, Answer):
            # Decided from the path: the body stays unread (the server discards it unparsed).
            answer = admitted
        else:
            # One timeout for both deadlines: the body's, then the answer's from when it is in.
            reading = True
            try:
                async with asyncio.timeout(BODY_WITHIN_SECONDS) as deadline:
                    body = await _read_body(scope, receive)
                    reading = False
                    deadline.reschedule(asyncio.get_running_loop().time() + ANSWER_WITHIN_SECONDS)
                    answer = await service.record(admitted, body)
            except TimeoutError:
                if reading:
                    raise BodyTooSlow from None
                raise
    except BodyTooLarge:
        answer = TOO_LARGE
    except BodyTooSlow:  # stop listening to a client that trickles
        answer, close = TOO_SLOW, True
    except DATABASE_ERRORS:
        log.exception(
            "cannot record a callback; asking the provider to retry",
            extra={"task_id": target.task_id},
        )
        answer = UNAVAILABLE
    _count(answer)
    await respond(send, answer, close=close)
    return answer.status_code


def _count(answer: Answer) -> None:
    if answer is ACCEPTED or answer is UNSTORED:
        metrics.CALLBACK_ACCEPTED.inc()
    elif answer is DUPLICATE:
        metrics.CALLBACK_DUPLICATE.inc()
    elif answer is UNAVAILABLE:
        metrics.CALLBACK_UNAVAILABLE.inc()
    else:
        metrics.CALLBACK_REJECTED.inc()


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The body, refusing more than MAX_BODY_BYTES whatever Content-Length says (the caller
    bounds the time it may take)."""
    receive = capped_receive(scope, receive, MAX_BODY_BYTES)
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def respond(send: Send, answer: Answer, *, close: bool = False) -> None:
    """Send a small JSON answer (with the headers of every answer of the gateway); `close` ends
    the connection after it."""
    payload = _payload(answer)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        NOSNIFF,
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": answer.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# The answers are a few constants: each one's JSON is made once.
_PAYLOADS: dict[int, tuple[Answer, bytes]] = {}


def _payload(answer: Answer) -> bytes:
    cached = _PAYLOADS.get(id(answer))
    if cached is not None and cached[0] is answer:
        return cached[1]
    payload = json.dumps(answer.body, separators=(",", ":")).encode()
    _PAYLOADS[id(answer)] = (answer, payload)
    return payload
