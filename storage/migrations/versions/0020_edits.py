"""Edits of a finished image (Zoom Out, Make Square, Pan, Vary (Region)): the job keeps the
edit's description, from which its canvas and mask are made again

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03 20:20:00

Jobs from before are no edits: NULL. A plain ADD COLUMN.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("edit", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "edit")
