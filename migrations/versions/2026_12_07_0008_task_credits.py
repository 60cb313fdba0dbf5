"""task credits (estimate or the provider's figure) and the indexes of per-caller limits

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 16:00:00.000000

Tasks made before this revision get the estimate of the time (docs/limits.md, "Estimates"),
computed here from their quality, size and number of references (the table is frozen in this
file: later changes to the estimate do not rewrite history), except tasks the provider refused
(`submission_rejected`), which cost nothing. `ix_tasks_caller_created` is rebuilt to carry the
credits on PostgreSQL (an index-only sum of a caller's month); on a large database build
`ix_tasks_caller_active` beforehand with CREATE INDEX CONCURRENTLY.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# app/provider/pricing.py as of this revision: credits of the image alone by quality and size,
# and what each reference image adds.
_IMAGE_CREDITS = {
    "low": {"1024x1024": 0.53, "1024x1536": 0.795, "1536x1024": 0.7794},
    "medium": {"1024x1024": 2.0576, "1024x1536": 3.0865, "1536x1024": 3.0553},
    "high": {"1024x1024": 8.1059, "1024x1536": 12.1588, "1536x1024": 12.0965},
}
_SIZE_ALIASES = {"1:1": "1024x1024", "2:3": "1024x1536", "3:2": "1536x1024"}
_PER_REFERENCE = 0.7557
_DEAREST = 12.1588


def _image_credits(tasks: sa.TableClause) -> sa.Case[float]:
    quality, size = tasks.c.quality, tasks.c.size
    whens = []
    for level, sizes in _IMAGE_CREDITS.items():
        for name, credits in sizes.items():
            names = [name, *(alias for alias, real in _SIZE_ALIASES.items() if real == name)]
            whens.append((sa.and_(quality == level, size.in_(names)), credits))
    return sa.case(*whens, else_=_DEAREST)


def upgrade() -> None:
    # Plain ADD COLUMN with constant defaults: a batch rebuild of `tasks` on SQLite would drop
    # the table, and with it (ON DELETE CASCADE) every task's reference rows.
    op.add_column("tasks", sa.Column("credits", sa.Float(), server_default="0", nullable=False))
    op.add_column(
        "tasks",
        sa.Column("credits_source", sa.String(length=8), server_default="estimate", nullable=False),
    )
    tasks = sa.table(
        "tasks",
        sa.column("id"),
        sa.column("quality"),
        sa.column("size"),
        sa.column("image_urls"),
        sa.column("status"),
        sa.column("error_code"),
        sa.column("credits"),
        sa.column("credits_source"),
    )
    references = sa.table("task_references", sa.column("task_id"))
    rows = (
        sa.select(sa.func.count())
        .select_from(references)
        .where(references.c.task_id == tasks.c.id)
        .scalar_subquery()
    )
    count = sa.case((rows > 0, rows), else_=sa.func.json_array_length(tasks.c.image_urls))
    capped = sa.case((count > 16, 16), else_=count)
    rejected = sa.and_(tasks.c.status == "failed", tasks.c.error_code == "submission_rejected")
    op.execute(
        tasks.update().values(
            credits=sa.case((rejected, 0.0), else_=_image_credits(tasks) + capped * _PER_REFERENCE),
            credits_source=sa.case((rejected, "provider"), else_="estimate"),
        )
    )
    op.drop_index("ix_tasks_caller_created", table_name="tasks")
    op.create_index(
        "ix_tasks_caller_created",
        "tasks",
        ["caller", "created_at", "id"],
        postgresql_include=["credits"],
    )
    op.create_index(
        "ix_tasks_caller_active",
        "tasks",
        ["caller"],
        postgresql_where=sa.text("completed_at IS NULL"),
        sqlite_where=sa.text("completed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_caller_active", table_name="tasks")
    op.drop_index("ix_tasks_caller_created", table_name="tasks")
    op.create_index("ix_tasks_caller_created", "tasks", ["caller", "created_at", "id"])
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch rebuild: see upgrade().
    op.drop_column("tasks", "credits_source")
    op.drop_column("tasks", "credits")
