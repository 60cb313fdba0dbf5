"""The provider's callbacks: authenticate the URL, record, transition, commit, then answer."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from app.callbacks import repository as inbox
from app.callbacks.models import DeliveryOutcome
from app.callbacks.tokens import CALLBACK_PREFIX, token_matches
from app.core.clock import utcnow
from app.core.config import Settings
from app.core.errors import error_response
from app.provider.parsing import ProviderBodyError, parse_task
from app.provider.types import ProviderTask, is_provider_task_id
from app.tasks import repository as tasks
from app.tasks import service
from app.tasks.models import SubmitState, Task
from app.tasks.schemas import is_task_id
from app.tasks.states import ProviderNews
from app.workers import repository as jobs
from app.workers.models import JobKind

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024

router = APIRouter(tags=["provider"], include_in_schema=False)


class BodyTooLarge(Exception):
    """The body passed the cap."""


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes whatever Content-Length says."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(CALLBACK_PREFIX + "/{task_id}/{token}")
async def receive_callback(task_id: str, token: str, request: Request) -> JSONResponse:
    """Acknowledge only after the delivery and what it implies are committed."""
    try:
        body = await read_capped(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        return error_response(
            413, "payload_too_large", f"callback bodies are limited to {MAX_BODY_BYTES} bytes"
        )
    settings: Settings = request.app.state.settings
    try:
        return await _handle(request, settings, task_id, token, body)
    except (SQLAlchemyError, OSError, TimeoutError):
        log.exception(
            "cannot record a callback; asking the provider to retry", extra={"task_id": task_id}
        )
        return error_response(503, "unavailable", "the delivery could not be recorded; retry")


async def _handle(
    request: Request, settings: Settings, task_id: str, token: str, body: bytes
) -> JSONResponse:
    now = utcnow()
    async with request.app.state.sessions() as session:
        task = await tasks.get(session, task_id) if is_task_id(task_id) else None
        if task is None:
            return error_response(404, "not_found", "no such callback")
        if not token_matches(settings.callback_secret_bytes(), task.id, task.callback_nonce, token):
            log.warning("callback with a wrong token refused", extra={"task_id": task_id})
            return error_response(401, "unauthorized", "invalid callback token")
        digest = hashlib.sha256(body).hexdigest()
        delivery_id = await inbox.record_if_new(
            session, task_id=task.id, digest=digest, body=body, now=now
        )
        if delivery_id is None:
            await inbox.count_repeat(session, task_id=task.id, digest=digest, now=now)
            await session.commit()
            log.info("duplicate callback", extra={"task_id": task.id})
            return JSONResponse({"status": "duplicate"})
        news = _parse(body)
        if news is None:
            await inbox.set_outcome(session, delivery_id, DeliveryOutcome.MALFORMED, None)
            await session.commit()
            log.warning("malformed callback body recorded", extra={"task_id": task.id})
            return error_response(400, "bad_request", "the body is not a task object")
        if not await _belongs(session, task, news, now):
            await inbox.set_outcome(session, delivery_id, DeliveryOutcome.MISMATCH, news.raw_status)
            await session.commit()
            log.warning(
                "callback names another upstream task",
                extra={"task_id": task.id, "provider_task_id": news.id},
            )
            return error_response(400, "bad_request", "the body names another task")
        await service.apply_event(
            session,
            task,
            ProviderNews(news, confirmed=False),
            now=now,
            source="callback",
            extra={"last_news_at": now},
        )
        await inbox.set_outcome(session, delivery_id, DeliveryOutcome.APPLIED, news.raw_status)
        await session.commit()
    wake = request.app.state.wake_workers
    if wake is not None:
        wake()
    log.info(
        "callback accepted",
        extra={"task_id": task.id, "provider_task_id": news.id, "provider_status": news.raw_status},
    )
    return JSONResponse({"status": "accepted"})


def _parse(body: bytes) -> ProviderTask | None:
    try:
        document: Any = json.loads(body)
        return parse_task(document)
    except (ValueError, ProviderBodyError):
        return None


async def _belongs(session: Any, task: Task, news: ProviderTask, now: Any) -> bool:
    """Whether the body is about this task; adopts the upstream id of an uncertain submission.

    The adopted id is only a hint: the poll job queued here confirms it upstream before
    anything is archived."""
    if task.provider_task_id is not None:
        return task.provider_task_id == news.id
    if task.submit_state not in (SubmitState.UNCERTAIN, SubmitState.IN_FLIGHT):
        return False
    if not is_provider_task_id(news.id):
        return False
    adopted = await tasks.update_fields(
        session,
        task.id,
        {
            "provider_task_id": news.id,
            "submit_state": SubmitState.ACCEPTED,
            "submitted_at": now,
            "updated_at": now,
        },
        provider_task_id=None,
    )
    if adopted:
        log.warning(
            "adopted the upstream task of a submission whose answer was lost",
            extra={"task_id": task.id, "provider_task_id": news.id},
        )
        await jobs.enqueue(session, JobKind.POLL, task.id, now)
        await tasks.get(session, task.id)
    return adopted
