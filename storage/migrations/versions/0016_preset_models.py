"""Preset models: a preset may run a model of its own (a hub id, a folder or a file), not only
one of the host's; the row keeps that model's description, read when the preset was added

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 16:10:00

Presets from before name a host model: NULL. A plain ADD COLUMN (no table rebuild).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("model_presets", sa.Column("model", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("model_presets", "model")
