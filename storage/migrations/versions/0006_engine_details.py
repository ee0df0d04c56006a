"""engine details: what an image API said about a job (model, size, revised prompts)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 06:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("engine_details", sa.JSON(), nullable=False, server_default="{}")
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("engine_details", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("engine_details")
