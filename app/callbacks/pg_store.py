"""The PostgreSQL fast path for the common callback: an authentic body about the task's own
upstream id. Two round trips on a dedicated asyncpg pool, each statement its own transaction:
read the task, then one statement that records the delivery, applies the decision and enqueues
the follow-up job, all or nothing.

Why no explicit row lock: the task's state only ever grows (status rank, progress, the final
claim; terminal states absorb), and `decide` is a pure function of (state, news). So
- a decision that changes the task is applied by an UPDATE guarded by the exact state it was
  made on; if another writer got there first the guard fails, nothing is written, and the
  delivery is decided again on the new state;
- a decision that changes nothing stays right on any later state, so recording the delivery
  needs no guard.

Anything unusual (unknown task, a body about another upstream id, malformed JSON) answers None
and goes to the general ORM store."""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg

from app.callbacks.models import DeliveryOutcome
from app.callbacks.service import (
    ACCEPTED,
    DUPLICATE,
    NOT_FOUND,
    UNAUTHORIZED,
    Answer,
    Authenticate,
    Delivery,
)
from app.tasks.service import job_for
from app.tasks.states import Decision, ProviderNews, TaskState, TaskStatus, decide

log = logging.getLogger(__name__)

SNAPSHOT = """
SELECT callback_nonce, status, progress, final_claimed_at IS NOT NULL AS claimed,
       provider_task_id, notify_url, caller
FROM tasks WHERE id = $1
"""

_INBOX = """
    INSERT INTO callback_deliveries
        (task_id, digest, body, outcome, reported_status, deliveries, received_at,
         last_received_at)
    SELECT {source}, $2, $3, $4, $5, 1, $6, $6 {where}
    ON CONFLICT (task_id, digest) DO NOTHING
    RETURNING task_id
"""
_JOB = """
    INSERT INTO jobs (kind, task_id, state, run_at, attempts, created_at, updated_at)
    SELECT $7::text, task_id, 'queued', $6, 0, $6, $6 FROM ins WHERE $7::text IS NOT NULL
    ON CONFLICT (kind, task_id) WHERE state = 'queued'
    DO UPDATE SET run_at = LEAST(jobs.run_at, EXCLUDED.run_at)
"""

# $1 task id, $2 digest, $3 body, $4 outcome, $5 reported status, $6 now, $7 job kind or null.
RECORD = """
WITH ins AS (
    INSERT INTO callback_deliveries
        (task_id, digest, body, outcome, reported_status, deliveries, received_at,
         last_received_at)
    VALUES ($1, $2, $3, $4, $5, 1, $6, $6)
    ON CONFLICT (task_id, digest) DO NOTHING
    RETURNING task_id
), job AS (
    INSERT INTO jobs (kind, task_id, state, run_at, attempts, created_at, updated_at)
    SELECT $7::text, task_id, 'queued', $6, 0, $6, $6 FROM ins WHERE $7::text IS NOT NULL
    ON CONFLICT (kind, task_id) WHERE state = 'queued'
    DO UPDATE SET run_at = LEAST(jobs.run_at, EXCLUDED.run_at)
)
SELECT 1 AS guarded, (SELECT count(*) FROM ins) AS inserted
"""

# ... and $8/$9/$10 the state the decision was made on, $11..$14 the new state, $15 claim now,
# $16 whether to record a transition event, $17 its detail.
CHANGE = """
WITH upd AS (
    UPDATE tasks SET status = $11, progress = $12, error_code = $13, error_message = $14,
        updated_at = $6, last_news_at = $6,
        final_claimed_at = CASE WHEN $15::boolean THEN $6 ELSE final_claimed_at END
    WHERE id = $1 AND status = $8 AND progress = $9 AND (final_claimed_at IS NOT NULL) = $10
    RETURNING id
), ins AS (
    INSERT INTO callback_deliveries
        (task_id, digest, body, outcome, reported_status, deliveries, received_at,
         last_received_at)
    SELECT id, $2, $3, $4, $5, 1, $6, $6 FROM upd
    ON CONFLICT (task_id, digest) DO NOTHING
    RETURNING task_id
), event AS (
    INSERT INTO task_events (task_id, at, kind, source, from_status, to_status, detail)
    SELECT id, $6, 'transition', 'callback', $8, $11, $17::json FROM upd WHERE $16::boolean
), job AS (
    INSERT INTO jobs (kind, task_id, state, run_at, attempts, created_at, updated_at)
    SELECT $7::text, task_id, 'queued', $6, 0, $6, $6 FROM ins WHERE $7::text IS NOT NULL
    ON CONFLICT (kind, task_id) WHERE state = 'queued'
    DO UPDATE SET run_at = LEAST(jobs.run_at, EXCLUDED.run_at)
)
SELECT (SELECT count(*) FROM upd) AS guarded, (SELECT count(*) FROM ins) AS inserted
"""

COUNT_REPEAT = """
UPDATE callback_deliveries SET deliveries = deliveries + 1, last_received_at = $3
WHERE task_id = $1 AND digest = $2
"""


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """Connections here never hold session state: every statement is its own transaction."""


async def create_pool(dsn: str, *, max_size: int = 20) -> asyncpg.Pool:
    """The dedicated pool of the callback intake."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, reset=_no_reset
    )
    return pool


class PostgresCallbackStore:
    """Fast path for deliveries about the task's own upstream id."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def receive(self, delivery: Delivery, authentic: Authenticate) -> Answer | None:
        news = delivery.news
        if news is None:
            return None
        async with self._pool.acquire() as connection:
            for _ in range(10):
                row = await connection.fetchrow(SNAPSHOT, delivery.task_id)
                if row is None:
                    return NOT_FOUND
                if not authentic(delivery.task_id, row["callback_nonce"], delivery.token):
                    return UNAUTHORIZED
                if row["provider_task_id"] != news.id:
                    return None
                current = TaskState(
                    TaskStatus(row["status"]), row["progress"], final_claimed=row["claimed"]
                )
                decision = decide(current, ProviderNews(news, confirmed=False))
                statement, arguments = _statement(delivery, current, decision, row["notify_url"])
                result = await connection.fetchrow(statement, *arguments)
                assert result is not None
                if not result["guarded"]:
                    continue  # the task moved since it was read: decide again
                if decision.state is not None:  # each statement commits: the change is in
                    _log_transition(delivery.task_id, row, current, decision.state)
                if result["inserted"]:
                    return ACCEPTED
                if decision.changed:  # impossible while the state only grows; see above
                    log.error(
                        "a repeated delivery changed a task", extra={"task_id": delivery.task_id}
                    )
                await connection.execute(
                    COUNT_REPEAT, delivery.task_id, delivery.digest, delivery.received_at
                )
                return DUPLICATE
        raise RuntimeError(f"task {delivery.task_id} kept changing under a callback")


def _log_transition(task_id: str, row: asyncpg.Record, current: TaskState, new: TaskState) -> None:
    """The line apply_event writes for a transition (a final claim alone is not one)."""
    if (new.status, new.progress) == (current.status, current.progress):
        return
    log.info(
        "task transition",
        extra={
            "task_id": task_id,
            "caller": row["caller"],
            "provider_task_id": row["provider_task_id"],
            "from_status": current.status.value,
            "to_status": new.status.value,
            "progress": new.progress,
            "source": "callback",
        },
    )


def _statement(
    delivery: Delivery, current: TaskState, decision: Decision, notify_url: str | None
) -> tuple[str, list[Any]]:
    kinds = [kind for e in decision.effects if (kind := job_for(e, notify_url)) is not None]
    assert len(kinds) <= 1, "a callback implies at most one follow-up job"
    assert delivery.news is not None
    arguments: list[Any] = [
        delivery.task_id,
        delivery.digest,
        delivery.body,
        DeliveryOutcome.APPLIED,
        delivery.news.raw_status,
        delivery.received_at,
        kinds[0] if kinds else None,
    ]
    new = decision.state
    if new is None:
        return RECORD, arguments
    moved = (new.status, new.progress) != (current.status, current.progress)
    detail = json.dumps({"progress": new.progress, "error_code": new.error_code}) if moved else None
    return CHANGE, [
        *arguments,
        current.status.value,
        current.progress,
        current.final_claimed,
        new.status.value,
        new.progress,
        new.error_code,
        new.error_message,
        new.final_claimed and not current.final_claimed,
        moved,
        detail,
    ]
