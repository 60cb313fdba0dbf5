"""Receiving a provider callback: authenticate the URL before the body is read, record the
delivery, apply the news, commit, and only then acknowledge. Duplicates, races and forgeries
change nothing; forgeries cost no database work."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from app.core import metrics
from app.core.callback_tokens import is_nonce, token_matches
from app.core.clock import utcnow
from app.core.refusals import RefusalLog
from app.provider.parsing import ProviderBodyError, parse_task
from app.provider.types import ProviderTask
from app.tasks.schemas import is_task_id
from app.tasks.states import TaskState

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """What a recorder reads about a task before deciding on a delivery: the nonce of its callback
    URL, and the state the fast path decides on."""

    nonce: str
    state: TaskState
    provider_task_id: str | None
    notify_url: str | None
    caller: str


@dataclass(frozen=True, slots=True)
class Admitted:
    """A callback URL that is authentic: its body may be read. `snapshot`: the task as read to
    check a URL without its nonce (the older form), None when the URL was checked alone."""

    task_id: str
    nonce: str
    snapshot: TaskSnapshot | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One authentic POST from the provider: the raw bytes and what they say. `nonce` is the
    one its token was made with: the recorders check that it is still the task's."""

    task_id: str
    nonce: str
    body: bytes
    digest: str
    news: ProviderTask | None
    received_at: datetime
    snapshot: TaskSnapshot | None


class CallbackRecorder(Protocol):
    """Reads tasks (to admit a URL without its nonce); records a delivery and applies it in one
    transaction, or answers None to defer to the next recorder."""

    async def snapshot(self, task_id: str) -> TaskSnapshot | None: ...

    async def receive(self, delivery: Delivery) -> Answer | None: ...


class CallbackService:
    """Admits a URL, then tries the recorders in order: a fast path for the common case, then the
    general one."""

    def __init__(
        self,
        secret: bytes,
        recorders: list[CallbackRecorder],
        wake_workers: Callable[[], None] | None = None,
    ) -> None:
        self._secret = secret
        self._recorders = recorders
        self._wake = wake_workers
        # Refusals decided from the URL are counted, and logged in one line a minute.
        self._refusals = RefusalLog(
            log, "callback refused", metrics.CALLBACK_REFUSALS, field="refused_by_url"
        )

    def check(self, task_id: str, nonce: str | None, token: str) -> Admitted | Answer | None:
        """Whether the path may post this task's callbacks, from the path alone and without any
        I/O (a forged path costs no database work): admitted, or the refusal (404 not a task
        id, 401 wrong token); None for a path without its nonce (the form earlier versions
        gave out), which `admit_stored` checks against the task."""
        if not is_task_id(task_id):
            return self._refuse(NOT_FOUND, "unknown_task")
        if nonce is None:
            return None
        if not is_nonce(nonce) or not token_matches(self._secret, task_id, nonce, token):
            return self._refuse(UNAUTHORIZED, "bad_token")
        return Admitted(task_id, nonce)

    async def admit_stored(self, task_id: str, token: str) -> Admitted | Answer:
        """A path without its nonce, checked with the task's stored nonce: admitted, or the
        refusal (404 unknown task, 401 wrong token). Raises only when the database cannot be
        read."""
        snapshot = await self._recorders[0].snapshot(task_id)
        if snapshot is None:
            return self._refuse(NOT_FOUND, "unknown_task")
        if not token_matches(self._secret, task_id, snapshot.nonce, token):
            return self._refuse(UNAUTHORIZED, "bad_token")
        return Admitted(task_id, snapshot.nonce, snapshot)

    def _refuse(self, answer: Answer, reason: str) -> Answer:
        self._refusals.note(reason)
        return answer

    async def record(self, admitted: Admitted, body: bytes) -> Answer:
        """Record and apply the body of an admitted callback; raises only when the database
        cannot record it."""
        delivery = Delivery(
            task_id=admitted.task_id,
            nonce=admitted.nonce,
            body=body,
            digest=hashlib.sha256(body).hexdigest(),
            news=parse_body(body),
            received_at=utcnow(),
            snapshot=admitted.snapshot,
        )
        for recorder in self._recorders:
            answer = await recorder.receive(delivery)
            if answer is not None:
                break
        else:  # pragma: no cover - the general recorder always answers
            raise RuntimeError("no callback recorder answered")
        if log.isEnabledFor(logging.INFO):
            self._log(delivery, answer)
        if (answer is ACCEPTED or answer is UNSTORED) and self._wake is not None:
            self._wake()
        return answer

    async def receive(self, task_id: str, nonce: str | None, token: str, body: bytes) -> Answer:
        """Admit and record a delivery whose body is already read (`nonce`: None for a path
        without it)."""
        admitted = self.check(task_id, nonce, token)
        if admitted is None:
            admitted = await self.admit_stored(task_id, token)
        if isinstance(admitted, Answer):
            return admitted
        return await self.record(admitted, body)

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
