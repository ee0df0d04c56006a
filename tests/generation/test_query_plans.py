"""Every query a submit, a claim, a place, a sweep, a reaction, a quota check, a lineage or a
logs page makes reads an index, never the whole of ``jobs`` or ``deliveries``: the statements
the real code sends are recorded and each one's plan is read with EXPLAIN, on both databases.

SQLite plans as if tables were large while it has no statistics (no ANALYZE here); PostgreSQL
is told not to scan tables sequentially where anything else would do, so a query no index
serves still shows as a sequential scan.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text

from generation.model_info import ModelInfo
from generation.moderation import Moderation
from generation.outbox import DeliveryTarget, Outbox
from generation.quotas import Quotas, usage
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind, JobStatus, utcnow
from storage.records import NewImage

WATCHED = ("jobs", "deliveries")
GENEROUS = Quotas(queued_per_user=100, images_per_user_day=10_000, bucket_size=100)


@contextmanager
def recording(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """The statements sent to the database meanwhile, with their parameters."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)


def _reads_watched(statement: str) -> bool:
    upper = statement.lstrip().upper()
    if upper.startswith(("INSERT", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")):
        return False
    return any(re.search(rf"\b{table}\b", statement) for table in WATCHED)


def _sqlite_full_scans(plan: list[str], statement: str) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN lines that read a watched table whole: a bare ``SCAN
    jobs``, or a scan of a whole index that is not the (partial) waiting-jobs one. Newest
    first by id with a LIMIT (the first logs page) stops after its page."""
    bad = []
    for line in plan:
        found = re.search(r"\bSCAN (\w+)(.*)", line)
        if not found or found.group(1) not in WATCHED:
            continue
        rest = found.group(2)
        if "ix_jobs_queue" in rest:
            continue  # only waiting jobs are in it
        if not rest.strip() and re.search(r"ORDER BY jobs\.id DESC\s+LIMIT", statement):
            continue
        bad.append(line)
    return bad


def _postgres_full_scans(node: dict[str, Any], limited: bool = False) -> list[str]:
    """Plan nodes that read a watched table whole: a sequential scan, or an index scan with
    no condition that no LIMIT stops."""
    bad = []
    kind = node.get("Node Type", "")
    limited = limited or kind == "Limit"
    relation = node.get("Relation Name")
    if relation in WATCHED:
        if kind == "Seq Scan":
            bad.append(f"Seq Scan on {relation}")
        elif (
            "Index" in kind
            and not node.get("Index Cond")
            and not limited
            and node.get("Index Name") != "ix_jobs_queue"
        ):
            bad.append(f"{kind} on {relation} using {node.get('Index Name')} (no condition)")
    for child in node.get("Plans", []):
        bad += _postgres_full_scans(child, limited)
    return bad


async def full_scans(db: Database, sent: list[tuple[str, Any]]) -> dict[str, list[str]]:
    """Each recorded statement that reads ``jobs`` or ``deliveries`` whole, with why."""
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    async with db.engine.connect() as connection:
        if db.dialect == "postgresql":
            await connection.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in sent:
            if statement in seen or not _reads_watched(statement):
                continue
            seen.add(statement)
            if db.dialect == "sqlite":
                rows = await connection.exec_driver_sql(
                    f"EXPLAIN QUERY PLAN {statement}", parameters
                )
                bad = _sqlite_full_scans([str(row[3]) for row in rows], statement)
            else:
                rows = await connection.exec_driver_sql(
                    f"EXPLAIN (FORMAT JSON) {statement}", parameters
                )
                plan = rows.scalar_one()
                plan = json.loads(plan) if isinstance(plan, str) else plan
                bad = _postgres_full_scans(plan[0]["Plan"])
            if bad:
                found[statement] = bad
        await connection.rollback()
    return found


async def test_hot_queries_read_indexes_not_whole_tables(
    db: Database, model: ModelInfo, store: ImageStore
) -> None:
    service = GenerationService(
        db, model, Limits(max_steps=50, max_width=256, max_height=256), quotas=GENEROUS
    )
    outbox, moderation = Outbox(db), Moderation(db, store)
    target = DeliveryTarget(1, "token", utcnow(), channel_id=5)
    with recording(db) as sent:
        submitted = [
            await service.submit(
                GenerationRequest(
                    f"a red circle {n}",
                    user_id=1 + n % 3,
                    guild_id=77,
                    channel_id=5,
                    interaction_id=1000 + n,
                    steps=4,
                ),
                target,
            )
            for n in range(9)
        ]
        await service.status(submitted[-1].job.id)
        await service.waiting(1)
        await service.waiting()
        await service.cancel(submitted[-1].job.id, submitted[-1].job.user_id)
        async with db.uow() as uow:
            now = await uow.now()
            claimed = await uow.queue.claim("w", 60, now, model_ids=[model.model_id])
            assert claimed is not None
            job, lease = claimed
            await uow.queue.renew(lease, 60, now)
            assert await uow.queue.finish(lease, JobStatus.SUCCEEDED, now, gpu_seconds=1.5)
            image = NewImage(0, job.seed, "0" * 64, f"{job.id}-0.png", 64, 64)
            await uow.images.add_many(job.id, [image])
            await uow.commit()
        await service.derive(JobKind.REROLL, job.id, None, job.user_id, interaction_id=5000)
        async with db.uow() as uow:
            claimed = await uow.queue.claim("w", 60, await uow.now(), model_ids=[model.model_id])
            assert claimed is not None
            await uow.queue.put_back(claimed[1], await uow.now(), attempt_counts=True)
            await uow.commit()
            user = await uow.users.get(1)
            assert user is not None
            await usage(uow, GENEROUS, user, now)
        await outbox.set_original(job.id, 424242)
        await outbox.due()
        await outbox.by_message(424242)
        await outbox.by_message(999)
        page = await moderation.logs(per_page=2)
        await moderation.logs(per_page=2, before=page.jobs[-1].job.id, guild_id=77)
        await moderation.logs(per_page=2, after=page.jobs[-1].job.id, user_id=1)
        await moderation.report(job.id)
        await service.job(job.id)
    assert len(sent) > 50
    assert await full_scans(db, sent) == {}


async def test_the_check_sees_a_full_scan(db: Database) -> None:
    """The plan reader itself: a query no index serves is caught on both databases."""
    with recording(db) as sent:
        async with db.uow() as uow:
            await uow.jobs.recent(status="queued", since=utcnow() - dt.timedelta(days=1))
            await uow.session.execute(text("SELECT id FROM jobs WHERE prompt = 'x'"))
    scans = await full_scans(db, sent)
    assert any("prompt" in statement for statement in scans), scans
