"""The outbox: a delivery commits with its job, is due when the job ends, backs off on the row
between tries, and ends delivered once or undeliverable with why — never silently."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic import command
from sqlalchemy import text

from generation.errors import InvalidRequest
from generation.moderation import Moderation
from generation.outbox import Backoff, DeliveryTarget, Outbox, token_valid
from generation.requests import GenerationRequest
from generation.service import GenerationService
from storage.db import Database
from storage.image_store import ImageStore
from storage.migrate import alembic_config, upgrade
from storage.models import DeliveryState, EventKind, JobStatus, utcnow
from storage.records import JobRecord, Lease


def target() -> DeliveryTarget:
    return DeliveryTarget(
        application_id=11, interaction_token="tok", interaction_at=utcnow(), channel_id=22
    )


async def _claim(db: Database, job_id: int, lease_seconds: float = 60) -> Lease:
    async with db.uow() as uow:
        claimed = await uow.queue.claim("w", lease_seconds, await uow.now())
        await uow.commit()
    assert claimed is not None and claimed[0].id == job_id
    return claimed[1]


async def _finish(db: Database, job_id: int) -> None:
    lease = await _claim(db, job_id)
    async with db.uow() as uow:
        assert await uow.queue.finish(lease, JobStatus.FAILED, await uow.now(), error="boom")
        await uow.commit()


async def _submit(service: GenerationService, prompt: str = "a red circle") -> JobRecord:
    return (await service.submit(GenerationRequest(prompt, user_id=1), target())).job


async def _due(outbox: Outbox) -> list[int]:
    return [d.job_id for d in await outbox.due()]


async def test_a_delivery_commits_with_its_job_is_due_when_it_ends_and_is_delivered_once(
    service: GenerationService, db: Database
) -> None:
    outbox = Outbox(db)
    job = await _submit(service)
    delivery = await outbox.get(job.id)
    assert delivery is not None
    assert (delivery.application_id, delivery.channel_id, delivery.delivered_at) == (11, 22, None)
    assert (delivery.state, delivery.attempts, delivery.next_try_at) == ("pending", 0, None)
    assert token_valid(delivery, utcnow())
    assert await _due(outbox) == [], "a waiting job has nothing to deliver yet"

    await _finish(db, job.id)
    assert await _due(outbox) == [job.id]
    await outbox.set_original(job.id, 500)
    assert (await outbox.by_message(500)).job_id == job.id  # type: ignore[union-attr]
    assert await outbox.mark_delivered(job.id, 501, "channel") == (True, False)
    assert await outbox.mark_delivered(job.id, 502, "dm") == (False, False), "the second is refused"
    delivered = await outbox.get(job.id)
    assert delivered is not None
    assert (delivered.state, delivered.delivered_via, delivered.result_message_id) == (
        "delivered",
        "channel",
        501,
    )
    assert (await outbox.by_message(501)).job_id == job.id  # type: ignore[union-attr]
    assert await _due(outbox) == []
    assert not await outbox.give_up(job, "late"), "a delivered result cannot end otherwise"


async def test_a_passing_failure_backs_off_on_the_row_oldest_due_first(
    service: GenerationService, db: Database
) -> None:
    outbox = Outbox(db, Backoff(base=10, cap=40))
    first, second = await _submit(service, "one"), await _submit(service, "two")
    await _finish(db, first.id)
    await _finish(db, second.id)
    assert await _due(outbox) == [first.id, second.id], "oldest due first"

    delivery = await outbox.get(first.id)
    assert delivery is not None
    delay = await outbox.retry_later(delivery, "DiscordServerError: 503 Service Unavailable")
    assert 5 <= delay <= 10, "the first backoff is half to all of the base"
    tried = await outbox.get(first.id)
    assert tried is not None and tried.next_try_at is not None
    assert (tried.state, tried.attempts, tried.last_error) == (
        "pending",
        1,
        "DiscordServerError: 503 Service Unavailable",
    )
    assert await _due(outbox) == [second.id], "not due again until its backoff is over"

    db.clock_offset = dt.timedelta(seconds=11)  # the database's clock moves on
    assert await _due(outbox) == [second.id, first.id]
    delays = []
    for _ in range(5):
        current = await outbox.get(first.id)
        assert current is not None
        delays.append(await outbox.retry_later(current, "timeout"))
    assert 10 <= delays[0] <= 20 and 20 <= delays[2] <= 40
    assert all(20 <= d <= 40 for d in delays[2:]), "capped"
    assert (await outbox.get(first.id)).attempts == 6  # type: ignore[union-attr]


async def test_an_undeliverable_result_is_recorded_with_why_and_an_event(
    service: GenerationService, db: Database
) -> None:
    outbox = Outbox(db)
    job = await _submit(service)
    await _finish(db, job.id)
    reason = "channel: 403 50013: Missing Permissions; dm: the member does not take DMs"
    assert await outbox.give_up(job, reason)
    assert not await outbox.give_up(job, reason), "recorded once"
    ended = await outbox.get(job.id)
    assert ended is not None
    assert (ended.state, ended.last_error, ended.attempts, ended.next_try_at) == (
        DeliveryState.UNDELIVERABLE,
        reason,
        1,
        None,
    )
    assert await _due(outbox) == []
    assert not (await outbox.mark_delivered(job.id, 9, "dm"))[0], "an ended delivery stays ended"
    async with db.uow() as uow:
        events = await uow.events.for_job(job.id)
    assert [(e.kind, e.reason, e.target_user_id) for e in events] == [
        (EventKind.DELIVERY_FAILED, reason, 1)
    ]


async def test_every_way_a_job_ends_makes_its_result_due(
    service: GenerationService, db: Database
) -> None:
    outbox = Outbox(db)
    cancelled = await _submit(service, "cancelled while waiting")
    async with db.uow() as uow:
        await uow.queue.request_cancel(cancelled.id, await uow.now())
        await uow.commit()
    assert await _due(outbox) == [cancelled.id]

    # A worker that vanished on the job's last attempt: the reaper fails it.
    service.max_attempts = 1
    lost = await _submit(service, "lost")
    await _claim(db, lost.id, lease_seconds=1)
    db.clock_offset = dt.timedelta(seconds=5)
    async with db.uow() as uow:
        assert await uow.queue.reap_expired(await uow.now()) == [lost.id]
        await uow.commit()
    assert await _due(outbox) == [cancelled.id, lost.id]

    # Released on its last attempt with an error: failed, and due.
    spent = await _submit(service, "spent")
    lease = await _claim(db, spent.id)
    async with db.uow() as uow:
        await uow.queue.put_back(
            lease, await uow.now(), attempt_counts=True, error="the store failed"
        )
        await uow.commit()
    assert (await service.job(spent.id)).job.status == JobStatus.FAILED
    assert spent.id in await _due(outbox)


async def test_a_job_deleted_before_its_result_went_out_ends_its_delivery(
    service: GenerationService, db: Database, store: ImageStore
) -> None:
    outbox = Outbox(db)
    job = await _submit(service)
    await _finish(db, job.id)
    await Moderation(db, store).delete_job(1, job.id, is_admin=False)
    ended = await outbox.get(job.id)
    assert ended is not None
    # Never delivered, and its request's own message ("queued") is to go too.
    assert (ended.state, ended.attempts) == (DeliveryState.WITHDRAW, 0)
    assert ended.last_error == "the job was deleted before its result went out"
    assert await _due(outbox) == []
    assert [d.job_id for d in await outbox.withdrawals()] == [job.id]
    await outbox.withdrawn(job.id)
    assert await outbox.withdrawals() == []
    assert (await outbox.get(job.id)).state == DeliveryState.WITHDRAWN  # type: ignore[union-attr]


async def test_a_refused_request_stores_no_delivery(
    service: GenerationService, db: Database
) -> None:
    with pytest.raises(InvalidRequest):
        await service.submit(GenerationRequest("a red circle", user_id=1, steps=0), target())
    async with db.uow() as uow:
        assert await uow.deliveries.due(await uow.now()) == []
        assert await uow.deliveries.get(1) is None


def test_backoff_doubles_within_jitter_and_stops_at_its_cap() -> None:
    backoff = Backoff(base=2, cap=30)
    for attempts, ceiling in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (12, 30)]:
        delays = [backoff.after(attempts) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10, "jittered, not all at once"


async def test_the_upgrade_to_delivery_states_sorts_what_was_there(
    service: GenerationService, db: Database
) -> None:
    """0009 on a database with history: delivered rows stay delivered, what ended undelivered
    is due, a deleted job's result never goes, a waiting job's row waits."""
    jobs = [(await _submit(service, f"job {n}")).id for n in range(4)]
    deleted, ended, delivered, waiting = jobs
    async with db.engine.begin() as connection:
        await connection.execute(
            text("UPDATE jobs SET status = 'deleted' WHERE id = :id"), {"id": deleted}
        )
        await connection.execute(
            text("UPDATE jobs SET status = 'succeeded' WHERE id IN (:a, :b)"),
            {"a": ended, "b": delivered},
        )
        await connection.execute(
            text("UPDATE deliveries SET delivered_at = interaction_at WHERE job_id = :id"),
            {"id": delivered},
        )
        await connection.run_sync(lambda c: command.downgrade(alembic_config(c), "0008"))
    await upgrade(db.engine)

    outbox = Outbox(db)
    rows = {job_id: await outbox.get(job_id) for job_id in jobs}
    assert {job_id: row.state for job_id, row in rows.items() if row} == {
        deleted: DeliveryState.UNDELIVERABLE,
        ended: DeliveryState.PENDING,
        delivered: DeliveryState.DELIVERED,
        waiting: DeliveryState.PENDING,
    }
    assert rows[deleted].last_error == "the job was deleted before its result went out"  # type: ignore[union-attr]
    assert rows[waiting].next_try_at is None  # type: ignore[union-attr]
    assert await _due(outbox) == [ended]


async def test_a_try_holds_its_row_so_no_other_process_sends_it_meanwhile(
    service: GenerationService, db: Database
) -> None:
    outbox, other = Outbox(db), Outbox(db)  # two bot processes on one database
    job = await _submit(service)
    await _finish(db, job.id)
    assert await outbox.claim(job.id, hold=60)
    assert not await other.claim(job.id, hold=60), "held by the first try"
    assert await _due(other) == [], "not due while a try holds it"
    # The first try was cut short (its process stopping): due again at once.
    await outbox.release(job.id)
    assert await other.claim(job.id, hold=60)
    assert (await other.mark_delivered(job.id, 7, "response"))[0]
    assert not (await outbox.mark_delivered(job.id, 8, "channel"))[0], "the later sender learns"
    # A try whose process died: due again once its hold is over.
    second = await _submit(service, "two")
    await _finish(db, second.id)
    assert await outbox.claim(second.id, hold=30)
    db.clock_offset = dt.timedelta(seconds=31)
    assert await _due(other) == [second.id]


async def test_held_images_approved_while_their_result_went_out_send_it_again(
    service: GenerationService, db: Database, store: ImageStore
) -> None:
    """Approval and delivery cross: whichever commits second re-opens the delivery."""
    from storage.models import Image, Review

    outbox, moderation = Outbox(db), Moderation(db, store)
    jobs = [await _submit(service, prompt) for prompt in ("a red circle", "a blue square")]
    for job in jobs:
        lease = await _claim(db, job.id)
        async with db.uow() as uow:
            assert await uow.queue.finish(lease, JobStatus.SUCCEEDED, await uow.now())
            uow.session.add(
                Image(job_id=job.id, index=0, seed=1, sha256="0" * 64, path="p", width=64,
                      height=64, flags={}, review=Review.PENDING, created_at=utcnow())
            )  # fmt: skip
            await uow.commit()
    image_ids = []
    for job in jobs:
        async with db.uow() as uow:
            image_ids.append((await uow.images.for_job(job.id))[0].id)
    # Approved before the held result is recorded: recording it finds them approved.
    first, second = jobs
    await moderation.approve(5, image_ids[0])
    assert await outbox.mark_delivered(first.id, 1, "channel", withheld=True) == (True, True)
    assert (await outbox.get(first.id)).state == "pending"  # type: ignore[union-attr]
    # Approved after: the approval re-opens it.
    assert await outbox.mark_delivered(second.id, 2, "channel", withheld=True) == (True, False)
    await moderation.approve(5, image_ids[1])
    again = await outbox.get(second.id)
    assert again is not None and again.state == "pending" and again.withheld
