"""guild settings: each server's safety policy, blocked terms, age-restricted rule and limits;
the channel a job was asked in: age-restricted, visible to everyone; the job a /reproduce job
makes again; a delivery that withheld its images (approving them sends them)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 03:30:00

Jobs from before keep NULL for both channel columns: not known, so treated as neither (their
images are not shown in the clear where they are flagged; other members do not see them in
/job; their owners and the moderators still do).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("safety_policy", sa.String(length=16), nullable=True),
        sa.Column("blocked_terms", sa.JSON(), nullable=False),
        sa.Column("age_restricted_only", sa.Boolean(), nullable=False),
        sa.Column("quotas", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_settings")),
    )
    # Plain ADD COLUMN (SQLite takes it without rebuilding a table other tables point at).
    op.add_column("jobs", sa.Column("channel_nsfw", sa.Boolean(), nullable=True))
    op.add_column("jobs", sa.Column("channel_public", sa.Boolean(), nullable=True))
    op.add_column("jobs", sa.Column("reproduces_job_id", sa.Integer(), nullable=True))
    op.add_column(
        "deliveries",
        sa.Column("withheld", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("deliveries", "withheld")
    op.drop_column("jobs", "reproduces_job_id")
    op.drop_column("jobs", "channel_public")
    op.drop_column("jobs", "channel_nsfw")
    op.drop_table("guild_settings")
