"""Private mode: a job answered to its owner alone, whether a server allows, forbids or
forces it, and whether a delivery's interaction was answered ephemerally

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 19:20:00

Jobs from before were public, and their answers were not ephemeral: false. Servers from
before allow it (NULL). Plain ADD COLUMNs.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("private", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("guild_settings", sa.Column("private_mode", sa.String(length=8), nullable=True))
    op.add_column(
        "deliveries",
        sa.Column("ephemeral", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("deliveries", "ephemeral")
    op.drop_column("guild_settings", "private_mode")
    op.drop_column("jobs", "private")
