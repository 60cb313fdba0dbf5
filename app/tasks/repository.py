"""All queries on the task table. Functions flush at most; the caller's boundary commits."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Column,
    Select,
    String,
    Table,
    Update,
    and_,
    bindparam,
    case,
    func,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from app.core.db import UTCDateTime, matched_any
from app.tasks.models import Task
from app.tasks.states import TaskState, TaskStatus

ACTIVE_STATUSES = tuple(status.value for status in TaskStatus if not status.is_terminal)
# The first key of the advisory lock that serializes a caller's creates (lock_caller_creates).
CALLER_LOCK_CLASS = 16_0001


def insert_task_statement(insert: Any) -> Any:
    """INSERT … ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING id of a whole task
    row, every column a bound parameter named after it (`task_row`)."""
    table = Task.__table__
    return (
        insert(table)
        .values({column.name: bindparam(column.name, type_=column.type) for column in table.c})
        .on_conflict_do_nothing(index_elements=[table.c.caller, table.c.idempotency_key])
        .returning(table.c.id)
    )


# Built once, executed with the row as parameters: the create path neither builds a statement
# nor computes its cache key per request (Core on the table, no ORM bulk-insert bookkeeping).
_INSERT_TASK = {
    "postgresql": insert_task_statement(postgresql.insert),
    "sqlite": insert_task_statement(sqlite.insert),
}
_TASK_COLUMNS = tuple((prop.key, prop.columns[0].name) for prop in inspect(Task).column_attrs)
_BY_IDEMPOTENCY_KEY = select(Task).where(
    Task.caller == bindparam("caller"), Task.idempotency_key == bindparam("key")
)


def task_row(task: Task) -> dict[str, Any]:
    """The parameters of `insert_task_statement` for a new task (a transient instance with
    every column set)."""
    return {column: getattr(task, key) for key, column in _TASK_COLUMNS}


def adopt(session: AsyncSession, task: Task) -> None:
    """Make a task just inserted with `task_row` belong to `session` as if read from the row
    it wrote, without reading it back."""
    make_transient_to_detached(task)
    session.add(task)


async def insert_if_new(session: AsyncSession, task: Task) -> bool:
    """Insert a new task (see `task_row`) unless (caller, idempotency_key) exists; True when
    inserted, and `task` then belongs to `session` (`adopt`)."""
    statement = _INSERT_TASK[session.get_bind().dialect.name]
    if await session.scalar(statement, task_row(task)) is None:
        return False
    adopt(session, task)
    return True


_BY_ID = select(Task).where(Task.id == bindparam("task_id"))
_FRESH = {"populate_existing": True}


async def get(session: AsyncSession, task_id: str) -> Task | None:
    """A task by id, freshly read (a statement built once: cheaper than Session.get's own)."""
    result = await session.execute(_BY_ID, {"task_id": task_id}, execution_options=_FRESH)
    return result.scalar_one_or_none()


async def get_for_caller(session: AsyncSession, caller: str, task_id: str) -> Task | None:
    """A task by id, only if it belongs to `caller`."""
    return await session.scalar(select(Task).where(Task.id == task_id, Task.caller == caller))


async def get_by_idempotency_key(session: AsyncSession, caller: str, key: str) -> Task | None:
    """The caller's task created with this key."""
    return await session.scalar(_BY_IDEMPOTENCY_KEY, {"caller": caller, "key": key})


async def list_for_caller(
    session: AsyncSession,
    caller: str,
    *,
    status: str | None,
    limit: int,
    before: tuple[datetime, str] | None,
) -> Sequence[Task]:
    """The caller's tasks, newest first, strictly after the keyset position `before`."""
    query = select(Task).where(Task.caller == caller)
    if status is not None:
        query = query.where(Task.status == status)
    return (await session.scalars(newest_first(query, before=before, limit=limit))).all()


def newest_first(
    query: Select[Task], *, before: tuple[datetime, str] | None, limit: int
) -> Select[Task]:
    """`query` ordered newest first, strictly after the keyset position `before`."""
    if before is not None:
        created_at, task_id = before
        query = query.where(
            # The first bound is implied by the second; it lets an index scan on
            # (…, created_at, id) start at the cursor instead of filtering every newer row.
            Task.created_at <= created_at,
            or_(
                Task.created_at < created_at,
                and_(Task.created_at == created_at, Task.id < task_id),
            ),
        )
    return query.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)


# The task table's columns by attribute name (`metadata_` is the column `metadata`): the job
# handlers' writes are Core statements on the table, built once per set of columns and cached,
# instead of ORM bulk updates rebuilt (and their cache keys recomputed) on every call.
_TASKS = cast(Table, Task.__table__)
_COLUMNS: dict[str, Column[Any]] = {
    attribute.key: cast(Column[Any], attribute.columns[0])
    for attribute in inspect(Task).column_attrs
}
_ROW = tuple(_COLUMNS.items())  # what a RETURNING of the whole row reads, in order


def _param(prefix: str, key: str) -> Any:
    # Prefixed: a bound parameter may not take the name of a column the statement sets.
    return bindparam(f"{prefix}_{key}", type_=_COLUMNS[key].type)


def _values(keys: Sequence[str]) -> dict[Column[Any], Any]:
    return {_COLUMNS[key]: _param("v", key) for key in keys}


@functools.cache
def transition_statement(keys: tuple[str, ...]) -> Update:
    """The guarded UPDATE of a transition writing the columns `keys`, returning the row."""
    return (
        update(_TASKS)
        .where(
            _TASKS.c.id == bindparam("w_id", type_=_TASKS.c.id.type),
            _TASKS.c.status == _param("w", "status"),
            _TASKS.c.progress == _param("w", "progress"),
            _TASKS.c.final_claimed_at.is_not(None) == bindparam("w_claimed", type_=Boolean()),
        )
        .values(_values(keys))
        .returning(*(column for _, column in _ROW))
    )


@functools.cache
def fields_update(keys: tuple[str, ...], conditions: tuple[tuple[str, bool], ...]) -> Update:
    """UPDATE of the columns `keys` where the row matches `conditions` ((column, is None))."""
    clauses = [_TASKS.c.id == bindparam("w_id", type_=_TASKS.c.id.type)]
    for key, is_none in conditions:
        column = _COLUMNS[key]
        clauses.append(column.is_(None) if is_none else column == _param("w", key))
    return update(_TASKS).where(*clauses).values(_values(keys))


def _parameters(task_id: str, values: Mapping[str, Any], **conditions: Any) -> dict[str, Any]:
    parameters = {f"v_{key}": value for key, value in values.items()}
    parameters |= {f"w_{key}": value for key, value in conditions.items() if value is not None}
    parameters["w_id"] = task_id
    return parameters


def refresh_from(task: Task, row: Sequence[Any]) -> None:
    """Give `task` the column values of `row` (a whole-row RETURNING) as loaded, not changed."""
    for (key, _), value in zip(_ROW, row, strict=True):
        set_committed_value(task, key, value)


_TASK_ID = bindparam("w_id", type_=_TASKS.c.id.type)
_RELOAD = select(*(column for _, column in _ROW)).where(_TASKS.c.id == _TASK_ID)


@functools.cache
def row_statement(flags: tuple[Any, ...]) -> Any:
    """A task's whole row by id (`w_id`), in `refresh_from`'s order, then the `flags` (boolean
    expressions on it, such as an EXISTS)."""
    return select(*(column for _, column in _ROW), *flags).where(_TASKS.c.id == _TASK_ID)


def task_of_row(row: Any) -> Task:
    """A task as loaded from `row` (a whole row in `refresh_from`'s order), detached: as a task
    read in a session that has ended."""
    task = Task()
    refresh_from(task, tuple(row)[: len(_ROW)])
    make_transient_to_detached(task)
    return task


def fields_statement(
    task_id: str, values: Mapping[str, Any], **conditions: Any
) -> tuple[Update, dict[str, Any]]:
    """`update_fields`'s statement (built once per shape) and its parameters."""
    shape = tuple((name, value is None) for name, value in conditions.items())
    return fields_update(tuple(values), shape), _parameters(task_id, values, **conditions)


async def reload(session: AsyncSession, task: Task) -> bool:
    """Read `task`'s row again into `task` itself; False when the row is gone."""
    row = (await session.execute(_RELOAD, {"w_id": task.id})).first()
    if row is None:
        return False
    refresh_from(task, row)
    return True


async def update_if_state(
    session: AsyncSession,
    task: Task,
    *,
    expected: TaskState,
    values: dict[str, Any],
) -> bool:
    """Write `values` only if the row still has the expected status, progress and final
    claim; when it did, `task` holds the row as written (one round trip: RETURNING)."""
    statement, parameters = transition_parameters(task.id, expected, values)
    row = (await session.execute(statement, parameters)).first()
    if row is None:
        return False
    refresh_from(task, row)
    return True


def transition_parameters(
    task_id: str, expected: TaskState, values: Mapping[str, Any]
) -> tuple[Update, dict[str, Any]]:
    """`update_if_state`'s statement (built once per set of columns; RETURNING the whole row,
    in `refresh_from`'s order) and its parameters."""
    parameters = _parameters(
        task_id,
        values,
        status=expected.status.value,
        progress=expected.progress,
        claimed=expected.final_claimed,
    )
    return transition_statement(tuple(values)), parameters


def update_if_state_statement(
    task_id: Any, *, status: Any, progress: Any, final_claimed: Any, values: Mapping[str, Any]
) -> Update:
    """The guarded UPDATE of a transition (values or bound parameters): it writes only if the
    row still has the state the decision was made on. The callback fast path composes it too."""
    return (
        update(Task)
        .where(
            Task.id == task_id,
            Task.status == status,
            Task.progress == progress,
            Task.final_claimed_at.is_not(None) == final_claimed,
        )
        .values(**values)
    )


async def update_fields(
    session: AsyncSession, task_id: str, values: dict[str, Any], **conditions: Any
) -> bool:
    """Write `values` where the row still matches `conditions` (column=value; None: IS NULL)."""
    statement, parameters = fields_statement(task_id, values, **conditions)
    return matched_any(await session.execute(statement, parameters))


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    """How many tasks are in each status (one GROUP BY over the table)."""
    rows = await session.execute(select(Task.status, func.count()).group_by(Task.status))
    return {status: int(count) for status, count in rows}


_LOCK_CALLER_CREATES = select(
    func.pg_advisory_xact_lock(CALLER_LOCK_CLASS, func.hashtext(bindparam("caller", type_=String)))
)


async def lock_caller_creates(session: AsyncSession, caller: str) -> None:
    """Serialize the creates of one caller until the transaction ends, across every replica:
    a PostgreSQL transaction-scoped advisory lock on a hash of the caller (two callers whose
    hashes collide only wait for each other). SQLite needs none: every transaction there
    begins IMMEDIATE and holds the database's one write lock (app/core/db.py)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    await session.execute(_LOCK_CALLER_CREATES, {"caller": caller})


_RECENT_USAGE = select(
    func.coalesce(
        func.sum(
            case((Task.created_at > bindparam("minute_start", type_=UTCDateTime()), 1), else_=0)
        ),
        0,
    ),
    func.coalesce(
        func.sum(
            case(
                (Task.created_at >= bindparam("day_start", type_=UTCDateTime()), Task.credits),
                else_=0.0,
            )
        ),
        0.0,
    ),
    func.coalesce(func.sum(Task.credits), 0.0),
).where(Task.caller == bindparam("caller"), Task.created_at >= bindparam("since"))


async def recent_usage(
    session: AsyncSession,
    caller: str,
    *,
    since: datetime,
    minute_start: datetime,
    day_start: datetime,
) -> tuple[int, float, float]:
    """(creates since `minute_start`, credits since `day_start`, credits since `since`) of the
    caller's tasks created since `since` (the earliest of the three): one range scan of
    ix_tasks_caller_created, index-only on PostgreSQL."""
    parameters = {
        "caller": caller,
        "since": since,
        "minute_start": minute_start,
        "day_start": day_start,
    }
    row = (await session.execute(_RECENT_USAGE, parameters)).one()
    return int(row[0]), float(row[1]), float(row[2])


async def nth_newest_created_at(
    session: AsyncSession, caller: str, *, after: datetime, n: int
) -> datetime | None:
    """The creation time of the caller's n-th newest task (1 = the newest) created after
    `after`: when the rate window frees a slot."""
    return await session.scalar(
        select(Task.created_at)
        .where(Task.caller == caller, Task.created_at > after)
        .order_by(Task.created_at.desc(), Task.id.desc())
        .offset(n - 1)
        .limit(1)
    )


_COUNT_ACTIVE = select(func.count()).where(
    Task.caller == bindparam("caller"),
    Task.completed_at.is_(None),
    Task.status.in_(ACTIVE_STATUSES),
)
# Both in one round trip; the count is not correlated with the outer scan of the same table.
_RECENT_USAGE_AND_ACTIVE = _RECENT_USAGE.add_columns(
    _COUNT_ACTIVE.correlate(None).scalar_subquery()
)


async def count_active(session: AsyncSession, caller: str) -> int:
    """How many of the caller's tasks are not terminal (ix_tasks_caller_active)."""
    count = await session.scalar(_COUNT_ACTIVE, {"caller": caller})
    return int(count or 0)


async def recent_usage_and_active(
    session: AsyncSession,
    caller: str,
    *,
    since: datetime,
    minute_start: datetime,
    day_start: datetime,
) -> tuple[int, float, float, int]:
    """`recent_usage` and `count_active` in one statement."""
    parameters = {
        "caller": caller,
        "since": since,
        "minute_start": minute_start,
        "day_start": day_start,
    }
    row = (await session.execute(_RECENT_USAGE_AND_ACTIVE, parameters)).one()
    return int(row[0]), float(row[1]), float(row[2]), int(row[3] or 0)
