"""The outbox: a delivery record commits with its job, and a result is marked delivered once."""

from __future__ import annotations

import pytest

from generation.errors import InvalidRequest
from generation.outbox import DeliveryTarget, Outbox, token_valid
from generation.requests import GenerationRequest
from generation.service import GenerationService
from storage.db import Database
from storage.models import JobStatus, utcnow
from storage.records import Lease


def target() -> DeliveryTarget:
    return DeliveryTarget(
        application_id=11, interaction_token="tok", interaction_at=utcnow(), channel_id=22
    )


async def _finish(db: Database, job_id: int) -> None:
    async with db.uow() as uow:
        claimed = await uow.queue.claim("w", 60, utcnow())
        await uow.commit()
    assert claimed is not None and claimed[0].id == job_id
    lease: Lease = claimed[1]
    async with db.uow() as uow:
        assert await uow.queue.finish(lease, JobStatus.FAILED, utcnow(), error="boom")
        await uow.commit()


async def test_a_delivery_commits_with_its_job_and_is_marked_delivered_once(
    service: GenerationService, db: Database
) -> None:
    outbox = Outbox(db)
    job = (await service.submit(GenerationRequest("a red circle", user_id=1), target())).job
    delivery = await outbox.get(job.id)
    assert delivery is not None
    assert (delivery.application_id, delivery.channel_id, delivery.delivered_at) == (11, 22, None)
    assert token_valid(delivery, utcnow())
    assert await outbox.pending() == [], "a waiting job has nothing to deliver yet"

    await _finish(db, job.id)
    assert [d.job_id for d in await outbox.pending()] == [job.id]
    await outbox.set_original(job.id, 500)
    assert (await outbox.by_message(500)).job_id == job.id  # type: ignore[union-attr]
    assert await outbox.mark_delivered(job.id, 501)
    assert not await outbox.mark_delivered(job.id, 502), "the second delivery is refused"
    assert (await outbox.by_message(501)).job_id == job.id  # type: ignore[union-attr]
    assert await outbox.pending() == []


async def test_a_refused_request_stores_no_delivery(
    service: GenerationService, db: Database
) -> None:
    with pytest.raises(InvalidRequest):
        await service.submit(GenerationRequest("a red circle", user_id=1, steps=0), target())
    async with db.uow() as uow:
        assert await uow.deliveries.undelivered() == []
        assert await uow.deliveries.get(1) is None
