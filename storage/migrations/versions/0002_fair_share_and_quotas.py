"""fair share and quotas: virtual times, weights, quota overrides, the reroll bucket

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        # A weight of 1.0 was everybody's default, never an admin's choice: forget it.
        batch_op.alter_column("weight", existing_type=sa.Float(), nullable=True)
        batch_op.add_column(
            sa.Column("virtual_time", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("quota_overrides", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.add_column(sa.Column("bucket_tokens", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("bucket_updated_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE users SET weight = NULL WHERE weight = 1.0")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("virtual_time", server_default=None)
        batch_op.alter_column("quota_overrides", server_default=None)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("virtual_start", sa.Float(), nullable=True))
        batch_op.create_index("ix_jobs_guild_id_created_at", ["guild_id", "created_at"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("weight", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_guild_id_created_at")
        batch_op.drop_column("virtual_start")
        batch_op.drop_column("weight")
    op.execute("UPDATE users SET weight = 1.0 WHERE weight IS NULL")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("bucket_updated_at")
        batch_op.drop_column("bucket_tokens")
        batch_op.drop_column("quota_overrides")
        batch_op.drop_column("virtual_time")
        batch_op.alter_column("weight", existing_type=sa.Float(), nullable=False)
