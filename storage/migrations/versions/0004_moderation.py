"""moderation: image review state, the guild of an event, events by time

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("review", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_images_review"), ["review"], unique=False)
    with op.batch_alter_table("moderation_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("guild_id", sa.BigInteger(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_moderation_events_created_at"), ["created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("moderation_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_moderation_events_created_at"))
        batch_op.drop_column("guild_id")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_review"))
        batch_op.drop_column("review")
