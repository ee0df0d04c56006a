"""LoRAs: a job records the LoRAs it ran with (name, sha256, A1111 short hash, weight)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 13:10:00

Jobs from before ran with none: an empty list. A plain ADD COLUMN (no table rebuild).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("loras", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    op.drop_column("jobs", "loras")
