"""samplers by name: a job records the scheduler's options and the sampler's familiar name,
and whether its decode went through the VAE in tiles

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 09:40:00

Jobs from before keep their scheduler class with no options and no sampler name: they run that
class on the model's own scheduler config, as they did; and NULL tiling: decoded whole, as
they were. Plain ADD COLUMNs (no table rebuild on
SQLite: a year of jobs is not copied).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("scheduler_options", sa.JSON(), nullable=False, server_default="{}")
    )
    op.add_column("jobs", sa.Column("sampler", sa.String(length=32), nullable=True))
    op.add_column("jobs", sa.Column("vae_tiling", sa.Boolean(), nullable=True))


def downgrade() -> None:
    for column in ("vae_tiling", "sampler", "scheduler_options"):
        op.drop_column("jobs", column)
