"""constant-cost queue and durable acknowledgements: start tags fixed at submit
(jobs.start_tag), one clock per model (queue_clocks: the last claimed tag and the measured
seconds per cost unit), one flow per user and model (queue_flows: the finish tag of their
last job); the indexes every periodic or per-interaction query reads (waiting jobs by tag, a
user's and a server's jobs by status, by
day and by id, lineage, the progress message a reaction lands on, moderation events by server
and by member); intents: requests written down before they are acknowledged

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 06:30:00

Jobs waiting at the upgrade get the tags the old claim would have taken them in (each user's
virtual time, then the cost / weight of their older waiting jobs), so the order does not change.
Old and new workers must not run side by side: an old one ignores the tags.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = sa.text("status = 'queued'")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("start_tag", sa.Float(), nullable=True))
    op.create_table(
        "queue_clocks",
        sa.Column("model_id", sa.String(length=300), nullable=False),
        sa.Column("virtual_time", sa.Float(), nullable=False),
        sa.Column("seconds_per_cost", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_queue_clocks")),
    )
    op.create_table(
        "queue_flows",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("model_id", sa.String(length=300), nullable=False),
        sa.Column("finish_tag", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "model_id", name=op.f("pk_queue_flows")),
    )
    op.create_table(
        "intents",
        sa.Column("interaction_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("delivery", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("interaction_id", name=op.f("pk_intents")),
    )
    _backfill()
    op.create_index(
        "ix_jobs_queue",
        "jobs",
        ["status", "model_id", "start_tag", "id", "cost"],
        postgresql_where=WAITING,
        sqlite_where=WAITING,
    )
    op.drop_index("ix_jobs_user_id", table_name="jobs")
    op.create_index("ix_jobs_user_id_status", "jobs", ["user_id", "status"])
    op.create_index("ix_jobs_user_id_created_at", "jobs", ["user_id", "created_at"])
    op.create_index("ix_jobs_user_id_id", "jobs", ["user_id", "id"])
    op.create_index("ix_jobs_guild_id_status", "jobs", ["guild_id", "status"])
    op.create_index("ix_jobs_guild_id_id", "jobs", ["guild_id", "id"])
    op.create_index("ix_jobs_parent_job_id", "jobs", ["parent_job_id"])
    op.create_index("ix_deliveries_original_message_id", "deliveries", ["original_message_id"])
    op.drop_index("ix_moderation_events_target_user_id", table_name="moderation_events")
    op.create_index(
        "ix_moderation_events_target_user_id_id", "moderation_events", ["target_user_id", "id"]
    )
    op.create_index("ix_moderation_events_guild_id_id", "moderation_events", ["guild_id", "id"])
    op.create_index("ix_moderation_events_job_id", "moderation_events", ["job_id"])


def _backfill() -> None:
    """Tags for the jobs waiting or running now, the clocks and the flows they imply."""
    bind = op.get_bind()
    start = {
        int(user_id): float(virtual_time)
        for user_id, virtual_time in bind.execute(
            sa.text(
                "SELECT id, virtual_time FROM users WHERE id IN "
                "(SELECT user_id FROM jobs WHERE status IN ('queued', 'running'))"
            )
        )
    }
    level = float(
        bind.execute(sa.text("SELECT coalesce(max(virtual_start), 0) FROM jobs")).scalar() or 0
    )
    finish: dict[tuple[int, str], float] = {}
    models: set[str] = set()
    running = bind.execute(
        sa.text(
            "SELECT id, user_id, model_id, cost, weight, virtual_start FROM jobs "
            "WHERE status = 'running'"
        )
    )
    for job_id, user_id, model_id, cost, weight, virtual_start in running:
        tag = level if virtual_start is None else float(virtual_start)
        bind.execute(
            sa.text("UPDATE jobs SET start_tag = :tag WHERE id = :id"), {"tag": tag, "id": job_id}
        )
        finish[(user_id, model_id)] = max(finish.get((user_id, model_id), 0.0), tag + cost / weight)
        models.add(model_id)
    clock: dict[int, float] = defaultdict(float)
    queued = bind.execute(
        sa.text(
            "SELECT id, user_id, model_id, cost, weight FROM jobs "
            "WHERE status = 'queued' ORDER BY id"
        )
    )
    for job_id, user_id, model_id, cost, weight in queued:
        tag = clock.get(user_id, start.get(user_id, 0.0))
        clock[user_id] = tag + cost / weight
        bind.execute(
            sa.text("UPDATE jobs SET start_tag = :tag WHERE id = :id"), {"tag": tag, "id": job_id}
        )
        finish[(user_id, model_id)] = max(finish.get((user_id, model_id), 0.0), tag + cost / weight)
        models.add(model_id)
    for (user_id, model_id), tag in finish.items():
        bind.execute(
            sa.text(
                "INSERT INTO queue_flows (user_id, model_id, finish_tag) "
                "VALUES (:user_id, :model_id, :tag)"
            ),
            {"user_id": user_id, "model_id": model_id, "tag": tag},
        )
    for model_id in models:
        bind.execute(
            sa.text(
                "INSERT INTO queue_clocks (model_id, virtual_time, updated_at) "
                "VALUES (:model_id, :level, CURRENT_TIMESTAMP)"
            ),
            {"model_id": model_id, "level": level},
        )


def downgrade() -> None:
    op.drop_index("ix_moderation_events_job_id", table_name="moderation_events")
    op.drop_index("ix_moderation_events_guild_id_id", table_name="moderation_events")
    op.drop_index("ix_moderation_events_target_user_id_id", table_name="moderation_events")
    op.create_index("ix_moderation_events_target_user_id", "moderation_events", ["target_user_id"])
    op.drop_index("ix_deliveries_original_message_id", table_name="deliveries")
    for name in (
        "ix_jobs_parent_job_id",
        "ix_jobs_guild_id_id",
        "ix_jobs_guild_id_status",
        "ix_jobs_user_id_id",
        "ix_jobs_user_id_created_at",
        "ix_jobs_user_id_status",
        "ix_jobs_queue",
    ):
        op.drop_index(name, table_name="jobs")
    op.create_index("ix_jobs_user_id", "jobs", ["user_id"])
    op.drop_table("intents")
    op.drop_table("queue_flows")
    op.drop_table("queue_clocks")
    op.drop_column("jobs", "start_tag")
