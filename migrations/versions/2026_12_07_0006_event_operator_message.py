"""timeline lines: a message for operators only; notification errors callers see made generic

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 12:00:00.000000

Notification errors recorded before this revision could name the addresses a notify_url
resolved to and the resolver's error text, and callers saw them (the task's `notification`,
`GET /v1/tasks/{id}/events`). They move to the operators' column; callers get the generic reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (LIKE pattern of an old notify error, the reason callers see now): the texts of app.notify.notifying
# before this revision that carried network detail.
_OLD_ERRORS = (
    (
        "refused: % resolves only to forbidden addresses %",
        "notify_url resolves to a non-public address",
    ),
    ("refused: %", "notify_url was refused"),
    ("% did not answer within the timeout", "the notify_url did not answer within the timeout"),
    ("cannot reach %", "could not connect to the notify_url"),
)


def _generic(column: sa.ColumnClause[str]) -> sa.Case[str]:
    return sa.case(*((column.like(old), new) for old, new in _OLD_ERRORS), else_=column)


def _matches(column: sa.ColumnClause[str]) -> sa.ColumnElement[bool]:
    return sa.or_(*(column.like(old) for old, _ in _OLD_ERRORS))


def upgrade() -> None:
    op.add_column("task_events", sa.Column("operator_message", sa.Text(), nullable=True))
    events = sa.table(
        "task_events",
        sa.column("kind", sa.String()),
        sa.column("message", sa.Text()),
        sa.column("operator_message", sa.Text()),
    )
    # One statement: both right-hand sides read the row as it was.
    op.execute(
        events.update()
        .where(events.c.kind == "notify", _matches(events.c.message))
        .values(operator_message=events.c.message, message=_generic(events.c.message))
    )
    notifications = sa.table("notifications", sa.column("last_error", sa.Text()))
    op.execute(
        notifications.update()
        .where(_matches(notifications.c.last_error))
        .values(last_error=_generic(notifications.c.last_error))
    )


def downgrade() -> None:
    op.drop_column("task_events", "operator_message")
