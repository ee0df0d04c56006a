"""--video: a job asked with it keeps a frame per denoising step, offered as an animated WebP;
comparison grids: a job of kind compare keeps its knob, values and each cell's own recipe

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03 23:10:00

Jobs from before asked for no video (false) and compare nothing (NULL): plain ADD COLUMNs.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("video", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("jobs", sa.Column("compare", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "compare")
    op.drop_column("jobs", "video")
