"""The outbox: where each job's result goes, recorded with the job, delivered once."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from storage.db import Database
from storage.models import utcnow
from storage.records import DeliveryRecord

# An interaction token answers for 15 minutes; stop using it a little before.
TOKEN_LIFETIME = dt.timedelta(minutes=15)
TOKEN_MARGIN = dt.timedelta(seconds=30)


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """Where a job's result goes: the interaction that asked for it and its channel."""

    application_id: int
    interaction_token: str
    interaction_at: dt.datetime
    channel_id: int | None = None
    reply_to_message_id: int | None = None
    attachment_size_limit: int | None = None  # bytes a file may weigh in answers to it


def token_valid(delivery: DeliveryRecord, now: dt.datetime) -> bool:
    """Whether the interaction token should still answer (with a margin for the request)."""
    return now < delivery.interaction_at + TOKEN_LIFETIME - TOKEN_MARGIN


class Outbox:
    """Delivery records: read them, note the progress message, and mark a result delivered."""

    def __init__(self, db: Database, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    async def get(self, job_id: int) -> DeliveryRecord | None:
        async with self.db.uow() as uow:
            return await uow.deliveries.get(job_id)

    async def by_message(self, message_id: int) -> DeliveryRecord | None:
        async with self.db.uow() as uow:
            return await uow.deliveries.by_message(message_id)

    async def set_original(self, job_id: int, message_id: int) -> None:
        async with self.db.uow() as uow:
            await uow.deliveries.set_original(job_id, message_id)
            await uow.commit()

    async def mark_delivered(self, job_id: int, message_id: int | None) -> bool:
        """Record that the result went out; False if that was already recorded."""
        async with self.db.uow() as uow:
            marked = await uow.deliveries.mark_delivered(job_id, message_id, self.clock())
            await uow.commit()
        return marked

    async def pending(self) -> list[DeliveryRecord]:
        """Results of ended jobs not yet delivered (after a restart, say)."""
        async with self.db.uow() as uow:
            return await uow.deliveries.undelivered()
