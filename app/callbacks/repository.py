"""Queries on the callback inbox, and the read of a callback's task. Each statement is built here
once, for the ORM recorder and (compiled) for the PostgreSQL fast path."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, Update, func, literal, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.callbacks.models import CallbackDelivery, DeliveryOutcome
from app.core.db import as_expression, upsert_insert
from app.tasks.models import Task

# At most this many distinct bodies are kept per task; later new bodies are applied to the task
# and acknowledged, but not stored (see README, Provider callbacks).
MAX_BODIES_PER_TASK = 16


def snapshot_statement(
    task_id: Any,
) -> Select[str, str, int, bool, str | None, str | None, str]:
    """What a callback reads about its task: the nonce of its URL and the state to decide on."""
    return select(
        Task.callback_nonce,
        Task.status,
        Task.progress,
        Task.final_claimed_at.is_not(None).label("claimed"),
        Task.provider_task_id,
        Task.notify_url,
        Task.caller,
    ).where(Task.id == task_id)


def stored_bodies(task_id: Any) -> Any:
    """How many distinct bodies the inbox keeps for the task (a scalar subquery)."""
    return (
        select(func.count())
        .select_from(CallbackDelivery)
        .where(CallbackDelivery.task_id == task_id)
        .scalar_subquery()
    )


def record_if_new_statement(
    insert: Any,
    *,
    task_id: Any,
    digest: Any,
    body: Any,
    outcome: Any,
    reported_status: Any,
    now: Any,
    when: ColumnElement[bool] | None = None,
    stored: Any = None,
) -> Any:
    """INSERT of a delivery unless this body was seen for this task, or the task already has
    MAX_BODIES_PER_TASK bodies (`stored`: how many it has, when the caller counted them), or
    `when` does not hold; RETURNING its task id when inserted.

    `ON CONFLICT DO NOTHING RETURNING` decides concurrent duplicates in the database: exactly
    one of them gets a row, so exactly one applies the transition."""
    rows = select(
        as_expression(task_id, CallbackDelivery.task_id),
        as_expression(digest, CallbackDelivery.digest),
        as_expression(body, CallbackDelivery.body),
        as_expression(outcome, CallbackDelivery.outcome),
        as_expression(reported_status, CallbackDelivery.reported_status),
        literal(1, CallbackDelivery.deliveries.type),
        as_expression(now, CallbackDelivery.received_at),
        as_expression(now, CallbackDelivery.last_received_at),
    ).where(
        true() if when is None else when,
        (stored_bodies(task_id) if stored is None else stored) < MAX_BODIES_PER_TASK,
    )
    columns = [
        "task_id",
        "digest",
        "body",
        "outcome",
        "reported_status",
        "deliveries",
        "received_at",
        "last_received_at",
    ]
    return (
        insert(CallbackDelivery)
        .from_select(columns, rows)
        .on_conflict_do_nothing(index_elements=[CallbackDelivery.task_id, CallbackDelivery.digest])
        .returning(CallbackDelivery.task_id)
    )


def count_repeat_statement(task_id: Any, digest: Any, now: Any) -> Update:
    """One more delivery of a stored body; RETURNING what was done with its first one."""
    return (
        update(CallbackDelivery)
        .where(CallbackDelivery.task_id == task_id, CallbackDelivery.digest == digest)
        .values(deliveries=CallbackDelivery.deliveries + 1, last_received_at=now)
        .returning(CallbackDelivery.outcome)
    )


async def record_if_new(
    session: AsyncSession,
    *,
    task_id: str,
    digest: str,
    body: bytes,
    now: datetime,
) -> bool:
    """Insert a delivery unless this body was seen for this task or the inbox of the task is
    full; True when inserted."""
    statement = record_if_new_statement(
        upsert_insert(session),
        task_id=task_id,
        digest=digest,
        body=body,
        outcome="",  # set with what is done with it (set_outcome)
        reported_status=None,
        now=now,
    )
    return await session.scalar(statement) is not None


async def count_repeat(
    session: AsyncSession, *, task_id: str, digest: str, now: datetime
) -> str | None:
    """Note one more delivery of a body already recorded; what was done with its first one,
    None when the body is not stored."""
    statement = count_repeat_statement(task_id, digest, now)
    outcome: str | None = await session.scalar(
        statement.execution_options(synchronize_session=False)
    )
    return outcome


async def set_outcome(
    session: AsyncSession,
    task_id: str,
    digest: str,
    outcome: DeliveryOutcome,
    reported_status: str | None,
) -> None:
    """What was done with a new delivery."""
    await session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.task_id == task_id, CallbackDelivery.digest == digest)
        .values(outcome=outcome, reported_status=reported_status)
        .execution_options(synchronize_session=False)
    )
