"""fair work: the per-host breaker of notify URLs and the provider's shared hold on creates

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 16:00:00.000000

`notify_hosts`: one row per notify host that timed out or refused connections (the breaker,
app/notify/breaker.py). `provider_holds`: until when every replica waits before the next create
after the provider answered 429 (app/tasks/provider_hold.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notify_hosts",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("open_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("host", name=op.f("pk_notify_hosts")),
    )
    op.create_table(
        "provider_holds",
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_provider_holds")),
    )


def downgrade() -> None:
    op.drop_table("provider_holds")
    op.drop_table("notify_hosts")
