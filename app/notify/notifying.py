"""The notify job: POST each due notification of a task to its notify_url, signed per the
Standard Webhooks specification, through the SSRF-safe client; record every attempt."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from app.core.clock import utcnow
from app.core.config import Settings
from app.core.db import write_durably
from app.core.safe_http import FetchPolicy, ForbiddenAddress, RefusedUrl, create_safe_client
from app.core.urls import UrlPolicyError, check_outbound_url
from app.notify import breaker
from app.tasks import event_repository, notification_repository, repository
from app.tasks.events import EventKind
from app.tasks.models import Task
from app.tasks.notifications import Notification, NotificationState, event_type
from app.tasks.schemas import TaskOut
from app.workers.models import Job
from app.workers.outcomes import Done, Outcome, RetryAt

log = logging.getLogger(__name__)

Presenter = Callable[[AsyncSession, Sequence[Task]], Awaitable[list[TaskOut]]]
"""Tasks as callers see them, with their images: the body of a notification."""

HEADERS = {"Content-Type": "application/json", "User-Agent": "imagegen-gateway/0.1"}


@dataclass(frozen=True, slots=True)
class NotifyContext:
    """What the notify job needs."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    client: httpx.AsyncClient  # made by create_notify_client()
    present: Presenter  # archive/presenting.py's present_tasks, given by app/runtime.py


def create_notify_client(settings: Settings) -> httpx.AsyncClient:
    """The SSRF-safe client (every resolved address checked at connect time), no redirects."""
    timeout = settings.notify_timeout_seconds
    policy = FetchPolicy(
        allow_private=settings.allow_private_networks,
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    return create_safe_client(policy, headers=HEADERS)


# Why an attempt failed, as callers read it (task object, /events): nothing about this service's
# network, neither resolved addresses nor resolver or socket errors. The detail is the operators'.
NON_PUBLIC = "notify_url resolves to a non-public address"
REFUSED = "notify_url was refused"
INVALID_URL = "notify_url is not a valid URL"
TIMED_OUT = "the notify_url did not answer within the timeout"
NO_CONNECTION = "could not connect to the notify_url"
BROKE_OFF = "the connection to the notify_url failed before an answer"


DELAYED = "delayed: "


def delayed_message(host: str, until: datetime) -> str:
    """What callers and operators read of a notification held by its host's breaker."""
    at = until.isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"{DELAYED}notify host {host} is not answering; next try at {at}"


def breaker_key(url: str) -> str | None:
    """The breaker a notify_url falls under: its host, and port when one is given."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    host = parsed.host.lower()
    if not host:
        return None
    return host if parsed.port is None else f"{host}:{parsed.port}"


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one POST went."""

    status_code: int | None = None
    error: str | None = None  # the reason callers see
    permanent: bool = False  # retrying cannot help (a refused URL or address)
    unreachable: bool = False  # a timeout or connection failure: counts toward the host's breaker
    detail: str | None = None  # the reason operators see (console, logs), when it says more

    @property
    def operator_error(self) -> str | None:
        return self.detail or self.error

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Notifier:
    """Handler of `notify` jobs: sends every due notification of the job's task."""

    def __init__(self, context: NotifyContext) -> None:
        self._ctx = context
        secret = context.settings.notify_secret
        self._webhook = Webhook(secret.get_secret_value()) if secret is not None else None
        self._schedule = context.settings.notify_retry_schedule

    async def __call__(self, job: Job) -> Outcome:
        now = utcnow()
        for row in await self._rows(job.task_id):
            due = row.next_attempt_at is not None and row.next_attempt_at <= now
            if row.state == NotificationState.PENDING and due:
                await self._attempt(row)
        pending = [
            row
            for row in await self._rows(job.task_id)
            if row.state == NotificationState.PENDING and row.next_attempt_at is not None
        ]
        if not pending:
            return Done()
        first = min(pending, key=lambda row: row.next_attempt_at or now)
        assert first.next_attempt_at is not None
        return RetryAt(first.next_attempt_at, first.last_error or "")

    async def _rows(self, task_id: str) -> list[Notification]:
        async with self._ctx.sessions() as session:
            return (await notification_repository.for_tasks(session, [task_id]))[task_id]

    async def _attempt(self, row: Notification) -> None:
        async with self._ctx.sessions() as session:
            task = await repository.get(session, row.task_id)
            if task is None or task.notify_url is None:
                return
            if event_type(task.status) != row.type:
                await self._supersede(session, row, task.status)
                return
            [presented] = await self._ctx.present(session, [task])
            data = presented.model_dump(mode="json")
        timestamp = data["completed_at"] or data["updated_at"]  # when the task became terminal
        message = {"type": row.type, "timestamp": timestamp, "data": data}
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        host = breaker_key(task.notify_url)
        if host is not None:
            delayed = await self._admit(host)
            if delayed is not None:
                await self._delay(row, host, delayed.until)
                return
        attempt = await self._send(task.notify_url, row.id, body)
        if host is not None:
            await self._note_host(host, attempt)
        await self._record_durably(row, attempt)

    async def _admit(self, host: str) -> breaker.Delayed | None:
        """Whether the host's breaker lets an attempt through now (a probe, when half-open)."""
        # The probe may take the whole attempt: the per-phase timeouts and the overall bound.
        probe_time = timedelta(seconds=self._ctx.settings.notify_timeout_seconds * 3 + 5)
        async with self._ctx.sessions() as session:
            delayed = await breaker.admit(session, host, utcnow(), probe_time)
            await session.commit()
        return delayed

    async def _note_host(self, host: str, attempt: Attempt) -> None:
        """Tell the host's breaker how the attempt went (an answer of any status closes it)."""
        if attempt.permanent:
            return
        settings = self._ctx.settings
        try:
            async with self._ctx.sessions() as session:
                if attempt.unreachable:
                    await breaker.failed(
                        session,
                        host,
                        utcnow(),
                        threshold=settings.notify_breaker_failures,
                        open_for=settings.notify_breaker_open_seconds,
                        error=attempt.operator_error or "",
                    )
                elif attempt.status_code is not None:
                    await breaker.answered(session, host, utcnow())
                await session.commit()
        except Exception:  # the attempt itself is recorded next, whatever happens here
            log.exception("could not update the breaker of a notify host", extra={"host": host})

    async def _delay(self, row: Notification, host: str, until: datetime) -> None:
        """Push the notification to when the host's breaker half-opens: not an attempt."""
        now = utcnow()
        message = delayed_message(host, until)
        first = not (row.last_error or "").startswith(DELAYED)
        values = {"next_attempt_at": until, "last_error": message, "updated_at": now}
        async with self._ctx.sessions() as session:
            kept = await notification_repository.record_attempt(session, row, values)
            if kept and first:  # one timeline line per stretch of delays, not one per try
                await event_repository.record(
                    session,
                    row.task_id,
                    kind=EventKind.NOTIFY,
                    source="notify",
                    at=now,
                    outcome="delayed",
                    message=message,
                    detail=_detail(row, row.attempts, None, until),
                )
            await session.commit()
        log.info(
            "notification delayed: its host's breaker is open",
            extra={"task_id": row.task_id, "webhook_id": row.id, "host": host},
        )

    async def _record_durably(self, row: Notification, attempt: Attempt) -> None:
        """Record an attempt, riding out database errors: a delivery that is not recorded
        would be sent again after the receiver's 2xx."""
        await write_durably(
            lambda: self._record(row, attempt),
            what="a notification attempt",
            extra={"task_id": row.task_id, "webhook_id": row.id},
        )

    async def _send(self, url: str, webhook_id: str, body: str) -> Attempt:
        if self._webhook is None:
            return Attempt(error="IMAGEGEN_NOTIFY_SECRET is not set on this worker")
        settings = self._ctx.settings
        try:
            allowed = settings.allow_private_networks
            check_outbound_url(url, allow_private=allowed, what="notify_url")
            target = httpx.URL(url)
        except UrlPolicyError as exc:  # about the URL as the caller wrote it
            return Attempt(error=str(exc), permanent=True)
        except httpx.InvalidURL as exc:
            return Attempt(error=INVALID_URL, permanent=True, detail=f"{INVALID_URL}: {exc}")
        now = utcnow()
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(webhook_id, now, body),
        }
        request = self._ctx.client.build_request("POST", target, content=body, headers=headers)
        try:
            # The per-phase timeouts bound each read; this bounds a receiver that drips.
            async with asyncio.timeout(settings.notify_timeout_seconds * 3):
                response = await self._ctx.client.send(request, follow_redirects=False, stream=True)
                await response.aclose()  # the answer's body is of no interest
        except RefusedUrl as exc:
            reason = NON_PUBLIC if isinstance(exc, ForbiddenAddress) else REFUSED
            return Attempt(error=reason, permanent=True, detail=f"refused: {exc}")
        except (TimeoutError, httpx.TimeoutException) as exc:
            detail = f"{target.host} did not answer within the timeout ({type(exc).__name__})"
            return Attempt(error=TIMED_OUT, detail=detail, unreachable=True)
        except httpx.TransportError as exc:
            reason = NO_CONNECTION if isinstance(exc, httpx.ConnectError) else BROKE_OFF
            detail = f"cannot reach {target.host}: {exc or type(exc).__name__}"
            return Attempt(error=reason, detail=detail, unreachable=True)
        if 200 <= response.status_code < 300:
            return Attempt(status_code=response.status_code)
        note = " (redirects are not followed)" if 300 <= response.status_code < 400 else ""
        return Attempt(response.status_code, f"answered {response.status_code}{note}")

    async def _record(self, row: Notification, attempt: Attempt) -> None:
        now = utcnow()
        attempts = row.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": attempt.status_code,
            "last_error": None if attempt.error is None else attempt.error[:2000],
            "updated_at": now,
        }
        if attempt.delivered:
            values |= {
                "state": NotificationState.DELIVERED,
                "delivered_at": now,
                "next_attempt_at": None,
            }
            outcome = "delivered"
        elif attempt.permanent or attempts > len(self._schedule):
            values |= {"state": NotificationState.FAILED, "next_attempt_at": None}
            outcome = "given_up"
        else:
            values["next_attempt_at"] = now + self._schedule[attempts - 1]
            outcome = "error"
        async with self._ctx.sessions() as session:
            kept = await notification_repository.record_attempt(session, row, values)
            await event_repository.record(
                session,
                row.task_id,
                kind=EventKind.NOTIFY,
                source="notify",
                at=now,
                outcome=outcome,
                message=attempt.error,
                detail=_detail(row, attempts, attempt.status_code, values.get("next_attempt_at")),
                operator_message=attempt.detail,
            )
            await session.commit()
        extra = {
            "task_id": row.task_id,
            "webhook_id": row.id,
            "attempt": attempts,
            "outcome": outcome,
            "http_status": attempt.status_code,
            "recorded": kept,
        }
        if attempt.operator_error is not None:
            extra["error"] = attempt.operator_error
        if outcome == "given_up":
            log.warning("notification given up", extra=extra)
        else:
            log.info("notification attempt", extra=extra)

    async def _supersede(self, session: AsyncSession, row: Notification, status: str) -> None:
        now = utcnow()
        values = {
            "state": NotificationState.SUPERSEDED,
            "next_attempt_at": None,
            "updated_at": now,
        }
        if await notification_repository.record_attempt(session, row, values):
            await event_repository.record(
                session,
                row.task_id,
                kind=EventKind.NOTIFY,
                source="notify",
                at=now,
                outcome="superseded",
                message=f"not sent: the task is {status} now",
                detail=_detail(row, row.attempts, None, None),
            )
        await session.commit()


def _detail(
    row: Notification, attempt: int, status_code: int | None, next_at: datetime | None
) -> dict[str, Any]:
    return {
        "webhook_id": row.id,
        "type": row.type,
        "series": row.series,
        "attempt": attempt,
        "http_status": status_code,
        "next_attempt_at": None if next_at is None else next_at.isoformat(),
    }
