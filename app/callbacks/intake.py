"""The callback endpoint in plain ASGI, served before the FastAPI stack (see app.main): provider
deliveries are the hottest path of the service and skip the framework's routing and middleware.

POST {CALLBACK_PREFIX}/{task_id}/{token}: 200 accepted/duplicate, 400 malformed or about another
task (its repeats too), 401 wrong token, 404 unknown task, 408 body not in within 10 s, 413 over
1 MiB, 503 when it cannot be recorded. 401 and 404 are decided from the path before any of the
body is read."""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from app.callbacks.service import ACCEPTED, DUPLICATE, UNSTORED, Answer, CallbackService, Hold
from app.callbacks.tokens import CALLBACK_PREFIX
from app.core import metrics

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
ANSWER_WITHIN_SECONDS = 8.0
# The whole body must arrive within this long: a client trickling bytes cannot hold a connection.
BODY_WITHIN_SECONDS = 10.0
# The database connection of the URL check is kept for the delivery if the body is in this soon
# (it normally came with the head); otherwise it goes back to the pool while the body comes.
HOLD_SECONDS = 0.05
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


class BodyTooLarge(Exception):
    """The body passed the cap."""


class BodyTooSlow(Exception):
    """The body did not arrive within its deadline."""


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
    service: CallbackService,
    task_id: str,
    token: str,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> int:
    """Admit, read, record and answer one provider callback; returns the HTTP status sent."""
    close = False
    try:
        # Answer well inside the provider's 10 s timeout, even when the database hangs.
        async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
            admitted = await service.admit(task_id, token)
        if isinstance(admitted, Answer):
            # Decided from the path: the body stays unread (the server discards it unparsed).
            answer = admitted
        else:
            try:
                body = await _read_body(scope, receive, admitted.snapshot.hold)
                async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
                    answer = await service.record(admitted, body)
            finally:
                await admitted.snapshot.hold.drop()
    except BodyTooLarge:
        answer = TOO_LARGE
    except BodyTooSlow:  # stop listening to a client that trickles
        answer, close = TOO_SLOW, True
    except DATABASE_ERRORS:
        log.exception(
            "cannot record a callback; asking the provider to retry", extra={"task_id": task_id}
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


async def _read_body(scope: Scope, receive: Receive, hold: Hold) -> bytes:
    """The body within BODY_WITHIN_SECONDS; the held connection is dropped if it is slow."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_WITHIN_SECONDS
    body = BodyReader(scope, receive, MAX_BODY_BYTES)
    if await body.read_until(min(loop.time() + HOLD_SECONDS, deadline)):
        return body.content()
    await hold.drop()
    if await body.read_until(deadline):
        return body.content()
    raise BodyTooSlow


class BodyReader:
    """Reads a request body in steps, refusing more than `limit` bytes whatever Content-Length
    says; what a step read is kept when its time runs out."""

    def __init__(self, scope: Scope, receive: Receive, limit: int) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise BodyTooLarge
        self._receive = receive
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._complete = False

    async def read_until(self, when: float) -> bool:
        """Read until the body is complete (True) or the loop time `when` (False)."""
        try:
            async with asyncio.timeout_at(when):
                while not self._complete:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        self._complete = True
                        break
                    chunk = message.get("body", b"")
                    self._size += len(chunk)
                    if self._size > self._limit:
                        raise BodyTooLarge
                    self._chunks.append(chunk)
                    self._complete = not message.get("more_body")
        except TimeoutError:
            return False
        return True

    def content(self) -> bytes:
        return b"".join(self._chunks)


async def respond(send: Send, answer: Answer, *, close: bool = False) -> None:
    """Send a small JSON answer; `close` ends the connection after it."""
    payload = json.dumps(answer.body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": answer.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
