"""`GET`/`HEAD /inputs/<token>.<ext>`: reference images of delivery `signed-url`, served to the
provider from the store. Plain ASGI, dispatched before the FastAPI stack (see app.main) like
provider callbacks: no caller key (the signed name is the credential), no routing, no body read.

The name is checked from itself first (app/core/input_tokens.py: MAC, expiry), without I/O; an
authentic one costs one read of two primary keys (the task's status and the reference row) and
then the object's bytes. Everything that is not the one image a valid name stands for gets the
same `404` with the same body: a wrong name, MAC or method, an expired name, an unknown task, a
terminal one, a reference that is a URL or is gone, an extension that is not the image's. So
nothing under `/inputs/` says more than "no such input", and nothing is listed. Refusals are
counted by reason and summed up in one log line a minute. A database or store outage is a `503`
(only for an authentic name, so it tells nothing to a guesser)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Final

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import Receive, Scope, Send

from app.core import metrics
from app.core.clock import utcnow
from app.core.db import query_deadline
from app.core.headers import NOSNIFF
from app.core.input_tokens import (
    CONTENT_TYPES,
    INPUTS_PREFIX,
    InputToken,
    Refusal,
    read_name,
)
from app.core.refusals import RefusalLog
from app.storage.store import ObjectStore, StoredObject, StoreError
from app.tasks import reference_repository
from app.tasks.reference_repository import ServedReference
from app.tasks.references import ReferenceSource
from app.tasks.states import TaskStatus

log = logging.getLogger(__name__)

READ_WITHIN_SECONDS: Final = 5.0
SERVING_STATUSES: Final = frozenset(status.value for status in TaskStatus if not status.is_terminal)
NOT_FOUND_BODY: Final = json.dumps(
    {"error": {"code": "not_found", "message": "no such input"}}, separators=(",", ":")
).encode()
UNAVAILABLE_BODY: Final = json.dumps(
    {"error": {"code": "unavailable", "message": "the input cannot be read now; retry"}},
    separators=(",", ":"),
).encode()
_DATABASE_ERRORS: Final = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
_NO_STORE: Final = (b"cache-control", b"no-store")


def is_input_path(scope: Scope) -> bool:
    """Whether the request is for `/inputs` or anything under it (all answered here)."""
    path: str = scope.get("path", "")
    return path.startswith(INPUTS_PREFIX) or path == INPUTS_PREFIX.rstrip("/")


class InputServer:
    """Answers every request under `/inputs/`."""

    def __init__(
        self, key: bytes, sessions: async_sessionmaker[AsyncSession], store: ObjectStore
    ) -> None:
        self._key = key
        self._sessions = sessions
        self._store = store
        self._refusals = RefusalLog(
            log, "input refused", metrics.INPUT_REFUSALS, field="refused_inputs"
        )

    async def __call__(self, scope: Scope, _receive: Receive, send: Send) -> int:
        """Answer one request; returns the HTTP status sent."""
        method = scope.get("method", "")
        if method not in ("GET", "HEAD"):
            return await self._refuse(send, Refusal.BAD_METHOD, head=False)
        head = method == "HEAD"
        path: str = scope.get("path", "")
        name = path[len(INPUTS_PREFIX) :] if path.startswith(INPUTS_PREFIX) else ""
        token = read_name(self._key, name, now=utcnow())
        if isinstance(token, Refusal):
            return await self._refuse(send, token, head=head)
        try:
            found = await self._find(token)
            opened = await self._open(found, head=head) if found else None
        except (*_DATABASE_ERRORS, StoreError) as exc:
            log.warning(
                "input unavailable", extra={"task_id": token.task_id, "error": str(exc)[:300]}
            )
            await _answer(send, 503, UNAVAILABLE_BODY, head=head)
            return 503
        if found is None or opened is None:
            return await self._refuse(send, Refusal.NOT_SERVABLE, head=head)
        stored, chunks = opened
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPES[token.extension].encode()),
                    (b"content-length", str(stored.size).encode()),
                    NOSNIFF,
                    _NO_STORE,
                ],
            }
        )
        metrics.INPUTS_SERVED.labels(method).inc()
        if chunks is None:
            await send({"type": "http.response.body", "body": b""})
            return 200
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except StoreError:
            # Too late for another status: the server cuts the answer short of its length.
            log.warning("input read failed while sending", extra={"task_id": token.task_id})
            raise
        finally:
            await _close(chunks)
        await send({"type": "http.response.body", "body": b""})
        return 200

    async def _find(self, token: InputToken) -> ServedReference | None:
        """The reference the token names, when it may be served: its task is not terminal,
        it is an object of the store, and the name's extension is its type's."""
        async with self._sessions() as session, query_deadline(session, READ_WITHIN_SECONDS):
            found = await reference_repository.served(session, token.task_id, token.position)
        if (
            found is None
            or found.task_status not in SERVING_STATUSES
            or found.source == ReferenceSource.URL.value
            or not found.key
            or found.content_type != CONTENT_TYPES[token.extension]
        ):
            return None
        return found

    async def _open(
        self, found: ServedReference, *, head: bool
    ) -> tuple[StoredObject, AsyncIterator[bytes] | None] | None:
        """The object's metadata, and its bytes unless `head`; None when it is gone."""
        assert found.key is not None
        if head:
            stored = await self._store.head(found.key)
            return None if stored is None else (stored, None)
        opened = await self._store.open(found.key)
        if opened is None:
            return None
        stored, chunks = opened
        return stored, chunks

    async def _refuse(self, send: Send, reason: Refusal, *, head: bool) -> int:
        self._refusals.note(reason.value)
        await _answer(send, 404, NOT_FOUND_BODY, head=head)
        return 404


async def _close(chunks: AsyncIterator[bytes]) -> None:
    """Release the store's stream (a client that went away leaves it unfinished)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


async def _answer(send: Send, status: int, body: bytes, *, head: bool) -> None:
    """A small JSON answer; for HEAD its headers alone."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                NOSNIFF,
                _NO_STORE,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
