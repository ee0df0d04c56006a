"""Members' own defaults (/settings) on their user row, and results posted again (/show)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 19:30:00

Users from before have set nothing: NULL. The new table starts empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("preferences", sa.JSON(), nullable=True))
    op.create_table(
        "result_posts",
        sa.Column("message_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_result_posts_job_id_jobs")),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_result_posts")),
    )
    op.create_index(op.f("ix_result_posts_job_id"), "result_posts", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_result_posts_job_id"), table_name="result_posts")
    op.drop_table("result_posts")
    op.drop_column("users", "preferences")
