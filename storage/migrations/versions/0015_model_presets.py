"""model presets: the host's named models with their defaults and the servers that may use
them; a server's default preset; the preset a job was asked through

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 13:05:00

A new table and plain ADD COLUMNs: nothing is copied.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_presets",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("source", sa.String(length=500), nullable=False),
        sa.Column("sampler", sa.String(length=32), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("guidance", sa.Double(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("negative_prefix", sa.Text(), nullable=False, server_default=""),
        sa.Column("loras", sa.JSON(), nullable=False, server_default="[]"),
        sa.Column("cost_factor", sa.Double(), nullable=False, server_default="1"),
        sa.Column("guild_ids", sa.JSON(), nullable=False, server_default="[]"),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("guild_settings", sa.Column("default_model", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("preset", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "preset")
    op.drop_column("guild_settings", "default_model")
    op.drop_table("model_presets")
