"""the provider's balance (one row) and named leases (one poller per period)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "provider_balance",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("token_remaining", sa.Float(), nullable=True),
        sa.Column("token_used", sa.Float(), nullable=True),
        sa.Column("token_unlimited", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("user_remaining", sa.Float(), nullable=True),
        sa.Column("user_used", sa.Float(), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_provider_balance")),
    )


def downgrade() -> None:
    op.drop_table("provider_balance")
    op.drop_table("leases")
