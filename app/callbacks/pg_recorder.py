"""The PostgreSQL fast path for the common callback: an authentic body about the task's own
upstream id. Two round trips on a dedicated asyncpg pool, each statement its own transaction:
read the task, then one statement that records the delivery, applies the decision and enqueues
the follow-up job, all or nothing.

That statement is composed from the very statements the ORM recorder runs one by one (the inbox
insert, the guarded task update, the job upsert; app/callbacks/repository.py,
app/tasks/repository.py, app/workers/repository.py) and the values come from the same functions
(`transition_values`, `transition_event`, `job_for`). It is compiled once per shape.

Why no explicit row lock: the task's state only ever grows (status rank, progress, the final
claim; terminal states absorb), and `decide` is a pure function of (state, news). So
- a decision that changes the task is applied by an UPDATE guarded by the exact state it was
  made on; if another writer got there first the guard fails, nothing is written, and the
  delivery is decided again on the new state;
- a decision that changes nothing stays right on any later state, so recording the delivery
  needs no guard.

Anything unusual (a body about another upstream id, malformed JSON) answers None and goes to the
general ORM recorder."""

from __future__ import annotations

import functools
import logging
from typing import Any

import asyncpg
from sqlalchemy import and_, bindparam, exists, func, insert, or_, select, true
from sqlalchemy.dialects import postgresql

from app.callbacks import repository as inbox
from app.callbacks.models import CallbackDelivery, DeliveryOutcome
from app.callbacks.orm_recorder import snapshot_of
from app.callbacks.service import (
    ACCEPTED,
    DUPLICATE,
    MALFORMED,
    MISMATCH,
    NOT_FOUND,
    UNAUTHORIZED,
    UNSTORED,
    Answer,
    Delivery,
    TaskSnapshot,
)
from app.core.pg_compiled import Compiled
from app.tasks.events import TaskEvent
from app.tasks.models import Task
from app.tasks.repository import update_if_state_statement
from app.tasks.service import (
    job_for,
    transition_event,
    transition_log_fields,
    transition_values,
)
from app.tasks.states import Decision, ProviderNews, TaskState, decide
from app.workers.models import Job
from app.workers.repository import enqueue_statement

log = logging.getLogger(__name__)

_REFUSALS: dict[str, Answer] = {
    DeliveryOutcome.MALFORMED: MALFORMED,
    DeliveryOutcome.MISMATCH: MISMATCH,
}
_EVENT_COLUMNS = ("kind", "from_status", "to_status", "message", "detail")


def _param(name: str, column: Any) -> Any:
    return bindparam(name, type_=column.type)


_TASK_ID = _param("task_id", Task.id)
_DIGEST = _param("digest", CallbackDelivery.digest)
_NOW = _param("now", CallbackDelivery.received_at)
SNAPSHOT = Compiled.of(inbox.snapshot_statement(_TASK_ID), {"task_id"})
COUNT_REPEAT = Compiled.of(
    inbox.count_repeat_statement(_TASK_ID, _DIGEST, _NOW), {"task_id", "digest", "now"}
)


@functools.cache
def record_statement(
    changes: tuple[str, ...] | None, stamped: tuple[str, ...], moved: bool, with_job: bool
) -> Compiled:
    """Record a new delivery, apply a decision and enqueue its job, in one statement.

    `changes`: the task columns the decision writes (None: it changes nothing); `stamped`: those
    of them it sets to the time of the delivery (all bound to the one `now` parameter); `moved`: a
    transition line goes to the timeline; `with_job`: the decision implies a job.
    Returns guarded (false when the task moved since it was read), inserted (the body was new
    and is now stored), known (the body was stored before), full (the inbox of the task was
    full: a new body is applied without being stored)."""
    names = {"task_id", "digest", "body", "reported_status", "now"}
    # The task's inbox as the statement found it, read once: how many bodies, and this one?
    seen = (
        select(
            func.count().label("stored"),
            func.coalesce(func.bool_or(CallbackDelivery.digest == _DIGEST), False).label("known"),
        )
        .where(CallbackDelivery.task_id == _TASK_ID)
        .cte("seen")
    )
    stored = select(seen.c.stored).scalar_subquery()
    known = select(seen.c.known).scalar_subquery()
    full = stored >= inbox.MAX_BODIES_PER_TASK
    ctes: list[Any] = [seen]
    applies: Any = ~known
    guarded: Any = true()
    if changes is not None:
        names |= {"expected_status", "expected_progress", "expected_claimed"}
        names |= {f"set_{column}" for column in changes}
        assert not set(changes) & set(stamped), "a column is either stamped or set"
        update = update_if_state_statement(
            _TASK_ID,
            status=_param("expected_status", Task.status),
            progress=_param("expected_progress", Task.progress),
            final_claimed=bindparam("expected_claimed", type_=postgresql.BOOLEAN()),
            values={c: _param(f"set_{c}", getattr(Task, c)) for c in changes}
            | dict.fromkeys(stamped, _NOW),
        )
        # A body stored before changes nothing again (it was refused, or already applied).
        upd = update.where(~known).returning(Task.id).cte("upd")
        ctes.append(upd)
        applies = exists(select(upd.c.id))
        guarded = or_(applies, known)
    ins = inbox.record_if_new_statement(
        postgresql.insert,
        task_id=_TASK_ID,
        digest=_DIGEST,
        body=_param("body", CallbackDelivery.body),
        # This path records only deliveries it applies, all from the callback endpoint.
        outcome=bindparam("outcome", DeliveryOutcome.APPLIED, type_=CallbackDelivery.outcome.type),
        reported_status=_param("reported_status", CallbackDelivery.reported_status),
        now=_NOW,
        when=applies if changes is not None else None,
        stored=stored,
    ).cte("ins")
    ctes.append(ins)
    inserted = exists(select(ins.c.task_id))
    if moved:
        names |= {f"event_{column}" for column in _EVENT_COLUMNS}
        line = select(
            _TASK_ID,
            _NOW,
            bindparam("source", "callback", type_=TaskEvent.source.type),
            *(_param(f"event_{c}", getattr(TaskEvent, c)) for c in _EVENT_COLUMNS),
        ).where(applies)
        columns = ["task_id", "at", "source", *_EVENT_COLUMNS]
        ctes.append(insert(TaskEvent).from_select(columns, line).cte("event"))
    if with_job:
        names.add("job_kind")
        job = enqueue_statement(
            postgresql.insert,
            _param("job_kind", Job.kind),
            _TASK_ID,
            _NOW,
            # A new body, stored or (the inbox full) not: the job is due.
            when=or_(inserted, and_(applies, full)),
        )
        ctes.append(job.cte("job"))
    result = select(
        guarded.label("guarded"),
        inserted.label("inserted"),
        known.label("known"),
        full.label("full"),
    ).add_cte(*ctes)
    return Compiled.of(result, names)


class PostgresRecorder:
    """Fast path for deliveries about the task's own upstream id."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def snapshot(self, task_id: str) -> TaskSnapshot | None:
        row = await self._pool.fetchrow(SNAPSHOT.sql, *SNAPSHOT.arguments({"task_id": task_id}))
        return None if row is None else snapshot_of(row)

    async def receive(self, delivery: Delivery) -> Answer | None:
        news = delivery.news
        if news is None:
            return None
        snapshot = delivery.snapshot  # read to admit a URL without its nonce, else None
        async with self._pool.acquire() as connection:
            for attempt in range(10):
                if snapshot is None or attempt:  # the first read, or the task moved since
                    row = await connection.fetchrow(
                        SNAPSHOT.sql, *SNAPSHOT.arguments({"task_id": delivery.task_id})
                    )
                    if row is None:
                        return NOT_FOUND
                    snapshot = snapshot_of(row)
                if snapshot.nonce != delivery.nonce:  # a URL of another nonce: state untouched
                    return UNAUTHORIZED
                if snapshot.provider_task_id != news.id:
                    return None
                decision = decide(snapshot.state, ProviderNews(news, confirmed=False))
                statement, values, moved = _record(delivery, snapshot.state, decision, snapshot)
                result = await connection.fetchrow(statement.sql, *statement.arguments(values))
                assert result is not None
                if not result["guarded"]:
                    continue
                if moved and not result["known"] and log.isEnabledFor(logging.INFO):
                    # Each statement commits: the change is in, so it may be logged.
                    _log_transition(delivery.task_id, snapshot, decision.state)
                if result["inserted"]:
                    return ACCEPTED
                if result["full"] and not result["known"]:
                    return UNSTORED
                first = await connection.fetchval(
                    COUNT_REPEAT.sql,
                    *COUNT_REPEAT.arguments(
                        {"task_id": delivery.task_id, "digest": delivery.digest}
                        | {"now": delivery.received_at}
                    ),
                )
                return _REFUSALS.get(first or "", DUPLICATE)
        raise RuntimeError(f"task {delivery.task_id} kept changing under a callback")


def _log_transition(task_id: str, snapshot: TaskSnapshot, new: TaskState | None) -> None:
    """The line apply_event writes for a transition (a final claim alone is not one)."""
    assert new is not None
    current = snapshot.state
    fields = transition_log_fields(
        task_id, snapshot.caller, snapshot.provider_task_id, current, new, "callback"
    )
    log.info("task transition", extra=fields)


def _record(
    delivery: Delivery, current: TaskState, decision: Decision, snapshot: TaskSnapshot
) -> tuple[Compiled, dict[str, Any], bool]:
    """The statement for a delivery, its values, and whether it moves the task (status or
    progress: a transition line for the timeline and the log)."""
    news = delivery.news
    assert news is not None
    now = delivery.received_at
    kinds = [k for e in decision.effects if (k := job_for(e, snapshot.notify_url)) is not None]
    assert len(kinds) <= 1, "a callback implies at most one follow-up job"
    values: dict[str, Any] = {
        "task_id": delivery.task_id,
        "digest": delivery.digest,
        "body": delivery.body,
        "reported_status": news.raw_status,
        "now": now,
    }
    if kinds:
        values["job_kind"] = kinds[0]
    new = decision.state
    if new is None:
        return record_statement(None, (), False, bool(kinds)), values, False
    changes = transition_values(current, new, now=now, extra={"last_news_at": now})
    # The columns set to the time of the delivery share its one parameter.
    stamped = tuple(sorted(column for column, value in changes.items() if value is now))
    for column, value in changes.items():
        if value is not now:
            values[f"set_{column}"] = value
    values["expected_status"] = current.status.value
    values["expected_progress"] = current.progress
    values["expected_claimed"] = current.final_claimed
    line = transition_event(current, new)
    if line is not None:
        for column in _EVENT_COLUMNS:
            values[f"event_{column}"] = line[column]
    set_ = tuple(sorted(column for column in changes if column not in stamped))
    statement = record_statement(set_, stamped, line is not None, bool(kinds))
    return statement, values, line is not None
