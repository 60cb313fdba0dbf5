"""indexes for the console: tasks (created_at, id), task_events (kind, at)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 05:00:00.000000

Both columns sets are written once and never updated, so the tasks row keeps its in-place (HOT)
updates. On a large PostgreSQL database, build them beforehand without blocking writes
(`CREATE INDEX CONCURRENTLY ix_tasks_created ON tasks (created_at, id)`, the same for
`ix_task_events_kind_at ON task_events (kind, at)`); this migration then leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_created", "tasks", ["created_at", "id"], if_not_exists=True)
    op.create_index("ix_task_events_kind_at", "task_events", ["kind", "at"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_task_events_kind_at", table_name="task_events")
    op.drop_index("ix_tasks_created", table_name="tasks")
