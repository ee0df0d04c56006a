"""delivery state: pending, delivered or undeliverable, with attempts, the next try and why

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 17:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TERMINAL = ("succeeded", "failed", "cancelled")


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("state", sa.String(length=16), nullable=False, server_default="pending")
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("delivered_via", sa.String(length=16), nullable=True))
        batch_op.create_index(
            "ix_deliveries_state_next_try_at", ["state", "next_try_at"], unique=False
        )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column("state", server_default=None)
        batch_op.alter_column("attempts", server_default=None)
    deliveries = sa.table(
        "deliveries",
        sa.column("job_id", sa.Integer()),
        sa.column("state", sa.String()),
        sa.column("delivered_at", sa.DateTime(timezone=True)),
        sa.column("interaction_at", sa.DateTime(timezone=True)),
        sa.column("next_try_at", sa.DateTime(timezone=True)),
        sa.column("last_error", sa.Text()),
    )
    jobs = sa.table("jobs", sa.column("id", sa.Integer()), sa.column("status", sa.String()))
    op.execute(
        deliveries.update().where(deliveries.c.delivered_at.is_not(None)).values(state="delivered")
    )
    # A job deleted before its result went out: that result never goes.
    deleted = sa.select(jobs.c.id).where(jobs.c.status == "deleted")
    op.execute(
        deliveries.update()
        .where(deliveries.c.delivered_at.is_(None), deliveries.c.job_id.in_(deleted))
        .values(state="undeliverable", last_error="the job was deleted before its result went out")
    )
    # What else ended before the upgrade and was not delivered is due now.
    ended = sa.select(jobs.c.id).where(jobs.c.status.in_(TERMINAL))
    op.execute(
        deliveries.update()
        .where(deliveries.c.delivered_at.is_(None), deliveries.c.job_id.in_(ended))
        .values(next_try_at=deliveries.c.interaction_at)
    )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_state_next_try_at")
        batch_op.drop_column("delivered_via")
        batch_op.drop_column("last_error")
        batch_op.drop_column("next_try_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("state")
