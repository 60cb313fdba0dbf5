"""Receiving a provider callback: authenticate the URL before the body is read, record the
delivery, apply the news, commit, and only then acknowledge. Duplicates, races and forgeries
change nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from app.callbacks.tokens import token_matches
from app.core import metrics
from app.core.clock import utcnow
from app.provider.parsing import ProviderBodyError, parse_task
from app.provider.types import ProviderTask
from app.tasks.schemas import is_task_id
from app.tasks.states import TaskState

log = logging.getLogger(__name__)

# Refusals decided from the URL are counted, and logged at most once in this many seconds.
REFUSAL_LOG_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What to tell the provider."""

    status_code: int
    body: dict[str, Any]


ACCEPTED = Answer(200, {"status": "accepted"})
# An authentic new body applied to the task but not kept: the task's inbox is full.
UNSTORED = Answer(200, {"status": "accepted", "stored": False})
DUPLICATE = Answer(200, {"status": "duplicate"})
NOT_FOUND = Answer(404, {"error": {"code": "not_found", "message": "no such callback"}})
UNAUTHORIZED = Answer(401, {"error": {"code": "unauthorized", "message": "invalid callback token"}})
MALFORMED = Answer(400, {"error": {"code": "bad_request", "message": "the body is not a task"}})
MISMATCH = Answer(400, {"error": {"code": "bad_request", "message": "the body names another task"}})


@dataclass(slots=True)
class Hold:
    """A database connection a store keeps from the URL check to the delivery, while the body
    comes in promptly (one pool checkout instead of two); dropped if the body is slow."""

    connection: Any = None
    give_back: Callable[[Any], Awaitable[object]] | None = None

    def take(self) -> Any:
        """The connection, now the taker's to give back; None when there is none."""
        connection, self.connection = self.connection, None
        return connection

    async def drop(self) -> None:
        """Give the connection back, if it is still held."""
        connection = self.take()
        if connection is not None and self.give_back is not None:
            await self.give_back(connection)


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """What the intake reads about a task before the body: the nonce its URL is checked with,
    and the state the fast path decides on (which may be stale by the time the body is in)."""

    nonce: str
    state: TaskState
    provider_task_id: str | None
    notify_url: str | None
    caller: str
    hold: Hold = field(default_factory=Hold, compare=False)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A callback URL that is authentic: its body may be read."""

    task_id: str
    snapshot: TaskSnapshot


@dataclass(frozen=True, slots=True)
class Delivery:
    """One authentic POST from the provider: the raw bytes and what they say."""

    task_id: str
    body: bytes
    digest: str
    news: ProviderTask | None
    received_at: datetime
    snapshot: TaskSnapshot


class CallbackStore(Protocol):
    """Reads tasks for admission; records a delivery and applies it in one transaction, or
    answers None to defer to the next store."""

    async def snapshot(self, task_id: str) -> TaskSnapshot | None: ...

    async def receive(self, delivery: Delivery) -> Answer | None: ...


class RefusalLog:
    """Counts refusals by reason and logs them at most once every `period` seconds."""

    def __init__(self, period: float = REFUSAL_LOG_SECONDS) -> None:
        self._period = period
        self._counts: Counter[str] = Counter()
        self._next = 0.0

    def note(self, reason: str) -> None:
        metrics.CALLBACK_REFUSALS[reason].inc()
        self._counts[reason] += 1
        now = time.monotonic()
        if now >= self._next:
            # The message of every refusal; this line sums up those of the last period.
            log.warning(
                "callback refused",
                extra={"refused_by_url": dict(self._counts), "within_seconds": self._period},
            )
            self._counts.clear()
            self._next = now + self._period


class CallbackService:
    """Admits a URL, then tries the stores in order: a fast path for the common case, then the
    general one."""

    def __init__(
        self,
        secret: bytes,
        stores: list[CallbackStore],
        wake_workers: Callable[[], None] | None = None,
    ) -> None:
        self._secret = secret
        self._stores = stores
        self._wake = wake_workers
        self._refusals = RefusalLog()

    async def admit(self, task_id: str, token: str) -> Admitted | Answer:
        """The task and its state when `token` is its callback token; else the refusal (404
        unknown task, 401 wrong token), decided from the path alone. Raises only when the
        database cannot be read."""
        if not is_task_id(task_id):
            return self._refuse(NOT_FOUND, "unknown_task")
        snapshot = await self._stores[0].snapshot(task_id)
        if snapshot is None:
            return self._refuse(NOT_FOUND, "unknown_task")
        if not token_matches(self._secret, task_id, snapshot.nonce, token):
            await snapshot.hold.drop()
            return self._refuse(UNAUTHORIZED, "bad_token")
        return Admitted(task_id, snapshot)

    def _refuse(self, answer: Answer, reason: str) -> Answer:
        self._refusals.note(reason)
        return answer

    async def record(self, admitted: Admitted, body: bytes) -> Answer:
        """Record and apply the body of an admitted callback; raises only when the database
        cannot record it."""
        delivery = Delivery(
            task_id=admitted.task_id,
            body=body,
            digest=hashlib.sha256(body).hexdigest(),
            news=parse_body(body),
            received_at=utcnow(),
            snapshot=admitted.snapshot,
        )
        for store in self._stores:
            answer = await store.receive(delivery)
            if answer is not None:
                break
        else:  # pragma: no cover - the general store always answers
            raise RuntimeError("no callback store answered")
        if log.isEnabledFor(logging.INFO):
            self._log(delivery, answer)
        if (answer is ACCEPTED or answer is UNSTORED) and self._wake is not None:
            self._wake()
        return answer

    async def receive(self, task_id: str, token: str, body: bytes) -> Answer:
        """Admit and record a delivery whose body is already read."""
        admitted = await self.admit(task_id, token)
        if isinstance(admitted, Answer):
            return admitted
        try:
            return await self.record(admitted, body)
        finally:
            await admitted.snapshot.hold.drop()

    @staticmethod
    def _log(delivery: Delivery, answer: Answer) -> None:
        extra: dict[str, Any] = {"task_id": delivery.task_id, "http_status": answer.status_code}
        if delivery.news is not None:
            extra |= {
                "provider_task_id": delivery.news.id,
                "provider_status": delivery.news.raw_status,
            }
        if answer is ACCEPTED:
            log.info("callback accepted", extra=extra)
        elif answer is UNSTORED:
            log.info("callback applied but not stored: the task's inbox is full", extra=extra)
        elif answer is DUPLICATE:
            log.info("duplicate callback", extra=extra)
        else:
            log.warning("callback refused", extra=extra | {"reason": answer.body["error"]})


def parse_body(body: bytes) -> ProviderTask | None:
    """The task a callback body describes, or None when it is not one. The parsed document is
    dropped here: the raw bytes are what is kept."""
    try:
        document: Any = json.loads(body)
        task = parse_task(document)
    except (ValueError, RecursionError, ProviderBodyError):
        return None
    return replace(task, raw={})
