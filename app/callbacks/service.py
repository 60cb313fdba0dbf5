"""Receiving a provider callback: authenticate the URL, record the delivery, apply the news,
commit, and only then acknowledge. Duplicates, races and forgeries change nothing."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from app.callbacks.tokens import token_matches
from app.core.clock import utcnow
from app.provider.parsing import ProviderBodyError, parse_task
from app.provider.types import ProviderTask
from app.tasks.schemas import is_task_id

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """What to tell the provider."""

    status_code: int
    body: dict[str, Any]


ACCEPTED = Answer(200, {"status": "accepted"})
DUPLICATE = Answer(200, {"status": "duplicate"})
NOT_FOUND = Answer(404, {"error": {"code": "not_found", "message": "no such callback"}})
UNAUTHORIZED = Answer(401, {"error": {"code": "unauthorized", "message": "invalid callback token"}})
MALFORMED = Answer(400, {"error": {"code": "bad_request", "message": "the body is not a task"}})
MISMATCH = Answer(400, {"error": {"code": "bad_request", "message": "the body names another task"}})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One POST from the provider, as received."""

    task_id: str
    token: str
    body: bytes
    digest: str
    news: ProviderTask | None
    received_at: datetime


Authenticate = Callable[[str, str, str], bool]


class CallbackStore(Protocol):
    """Records a delivery and applies it in one transaction; answers None to defer."""

    async def receive(self, delivery: Delivery, authentic: Authenticate) -> Answer | None: ...


class CallbackService:
    """Tries the stores in order: a fast path for the common case, then the general one."""

    def __init__(
        self,
        secret: bytes,
        stores: list[CallbackStore],
        wake_workers: Callable[[], None] | None = None,
    ) -> None:
        self._secret = secret
        self._stores = stores
        self._wake = wake_workers

    def authentic(self, task_id: str, nonce: str, token: str) -> bool:
        """Whether `token` is the one this service derived for the task."""
        return token_matches(self._secret, task_id, nonce, token)

    async def receive(self, task_id: str, token: str, body: bytes) -> Answer:
        """Handle one delivery; raises only when the database cannot record it."""
        if not is_task_id(task_id):
            return NOT_FOUND
        delivery = Delivery(
            task_id=task_id,
            token=token,
            body=body,
            digest=hashlib.sha256(body).hexdigest(),
            news=parse_body(body),
            received_at=utcnow(),
        )
        for store in self._stores:
            answer = await store.receive(delivery, self.authentic)
            if answer is not None:
                break
        else:  # pragma: no cover - the general store always answers
            raise RuntimeError("no callback store answered")
        if log.isEnabledFor(logging.INFO):
            self._log(delivery, answer)
        if answer is ACCEPTED and self._wake is not None:
            self._wake()
        return answer

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
        elif answer is DUPLICATE:
            log.info("duplicate callback", extra=extra)
        else:
            log.warning("callback refused", extra=extra | {"reason": answer.body["error"]})


def parse_body(body: bytes) -> ProviderTask | None:
    """The task a callback body describes, or None when it is not one."""
    try:
        document: Any = json.loads(body)
        return parse_task(document)
    except (ValueError, RecursionError, ProviderBodyError):
        return None
