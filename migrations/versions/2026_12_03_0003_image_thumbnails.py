"""thumbnails of archived images (task_images.thumbnail_key, thumbnail_error)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 04:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("thumbnail_key", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("thumbnail_error", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_images", schema=None) as batch_op:
        batch_op.drop_column("thumbnail_error")
        batch_op.drop_column("thumbnail_key")
