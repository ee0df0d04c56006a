"""Parameters in the prompt: a job records the prompt as typed (``--ar 16:9 --no text``) when
parameters were taken out of it

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 17:30:00

Jobs from before were asked without them: NULL. A plain ADD COLUMN (no table rebuild).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("raw_prompt", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "raw_prompt")
