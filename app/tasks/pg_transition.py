"""PostgreSQL: a transition written in one statement. The guarded UPDATE of the task (returning
its row), the timeline lines that go with it and the upserts of the jobs it implies, as
data-modifying CTEs: the lines and jobs are written only when the UPDATE matched, all or
nothing, in one round trip instead of one per statement. Built once per shape (the columns
written, the number of lines, the job kinds) from the statements the other paths run
(`repository.transition_parameters`, `event_repository.LINE_COLUMNS`,
`workers.repository.enqueue_statement`)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, exists, insert, literal, select, union_all
from sqlalchemy.dialects import postgresql

from app.tasks import repository
from app.tasks.event_repository import EVENTS, LINE_COLUMNS
from app.tasks.models import Task
from app.tasks.states import TaskState
from app.workers import repository as jobs
from app.workers import signals
from app.workers.models import Job, JobKind


@functools.cache
def _statement(keys: tuple[str, ...], lines: int, kinds: tuple[JobKind, ...]) -> Any:
    upd = repository.transition_statement(keys).cte("upd")
    applied = exists(select(upd.c.id))
    ctes: list[Any] = [upd]
    if lines:
        rows = [
            select(
                *(
                    bindparam(f"l{i}_{column}", type_=EVENTS.c[column].type).label(column)
                    for column in LINE_COLUMNS
                ),
                literal(i).label("ord"),
            ).where(applied)
            for i in range(lines)
        ]
        given = (rows[0] if lines == 1 else union_all(*rows)).subquery("given")
        # Inserted in the order given, so their ids (the timeline's order) follow it.
        body = select(*(given.c[column] for column in LINE_COLUMNS)).order_by(given.c.ord)
        ctes.append(insert(EVENTS).from_select(list(LINE_COLUMNS), body).cte("lines"))
    task_id = bindparam("w_id", type_=Job.task_id.type)
    run_at = bindparam("job_run_at", type_=Job.run_at.type)
    for kind in kinds:
        job = jobs.enqueue_statement(
            postgresql.insert, literal(kind.value, Job.kind.type), task_id, run_at, when=applied
        )
        ctes.append(job.cte(f"job_{kind.value}"))
    return select(*upd.c).add_cte(*ctes)


def statement(
    task_id: str,
    expected: TaskState,
    values: Mapping[str, Any],
    lines: Sequence[dict[str, Any]],
    kinds: Sequence[JobKind],
    now: datetime,
) -> tuple[Any, dict[str, Any]]:
    """The one statement of a transition and its parameters: it returns the task's row as
    written (as `update_if_state`), or nothing when the task was not in `expected`."""
    _, parameters = repository.transition_parameters(task_id, expected, values)
    for i, line in enumerate(lines):
        parameters |= {f"l{i}_{column}": line[column] for column in LINE_COLUMNS}
    if kinds:
        parameters["job_run_at"] = now
        signals.note_enqueued(now)
    return _statement(tuple(values), len(lines), tuple(kinds)), parameters


@functools.cache
def _fields_with_job(update: Any, kind: JobKind) -> Any:
    upd = update.returning(Task.id).cte("upd")
    job = jobs.enqueue_statement(
        postgresql.insert,
        literal(kind.value, Job.kind.type),
        bindparam("w_id", type_=Job.task_id.type),
        bindparam("job_run_at", type_=Job.run_at.type),
        when=exists(select(upd.c.id)),
    )
    return job.add_cte(upd).returning(Job.task_id)


def fields_with_job(
    task_id: str,
    values: Mapping[str, Any],
    kind: JobKind,
    run_at: datetime,
    **conditions: Any,
) -> tuple[Any, dict[str, Any]]:
    """`repository.update_fields` and, only when it matched, the upsert of a `kind` job at
    `run_at`, as one statement (built once per shape): it returns a row when the update
    matched, none otherwise."""
    update, parameters = repository.fields_statement(task_id, values, **conditions)
    signals.note_enqueued(run_at)
    return _fields_with_job(update, kind), parameters | {"job_run_at": run_at}
