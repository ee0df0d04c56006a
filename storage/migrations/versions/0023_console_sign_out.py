"""The web console's sign-out: when a user last logged out, so every session cookie issued
before (a copy of it too) is refused from then on

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-04 03:20:00

Users from before never logged out (NULL). A plain ADD COLUMN.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("signed_out_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # In place (SQLite 3.35+ drops a column itself): rebuilding users in batch mode would
    # drop a table that jobs and usage point at, which SQLite's foreign keys refuse.
    op.drop_column("users", "signed_out_at")
