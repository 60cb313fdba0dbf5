"""reference images: uploads, and one row per reference image of a task

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 15:00:00.000000

Tasks made before this revision have no `task_references` rows; their `image_urls` are their
references (the presenter and the submission fall back to them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("caller", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
        sa.UniqueConstraint(
            "caller", "idempotency_key", name=op.f("uq_uploads_caller_idempotency_key")
        ),
    )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.create_index("ix_uploads_caller_created", ["caller", "created_at"], unique=False)
        batch_op.create_index("ix_uploads_expires", ["expires_at"], unique=False)

    op.create_table(
        "task_references",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("upload_id", sa.String(length=40), nullable=True),
        sa.Column("source_task_id", sa.String(length=36), nullable=True),
        sa.Column("source_index", sa.Integer(), nullable=True),
        sa.Column("key", sa.String(length=512), nullable=True),
        sa.Column("content_type", sa.String(length=32), nullable=True),
        sa.Column("bytes", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("provider_file_id", sa.String(length=128), nullable=True),
        sa.Column("provider_file_url", sa.Text(), nullable=True),
        sa.Column("provider_file_uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_references_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "position", name=op.f("pk_task_references")),
    )
    with op.batch_alter_table("task_references", schema=None) as batch_op:
        batch_op.create_index("ix_task_references_upload", ["upload_id"], unique=False)
        batch_op.create_index("ix_task_references_key", ["key"], unique=False)


def downgrade() -> None:
    op.drop_table("task_references")
    op.drop_table("uploads")
