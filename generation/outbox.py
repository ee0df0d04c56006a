"""The outbox: where each job's result goes, recorded with the job, delivered once.

A delivery is pending until it is delivered or recorded undeliverable. It is due when its job
ends (the queue sets ``next_try_at``); a try that meets a passing failure (Discord away, a
timeout, a 5xx) sets the next try with exponential backoff and jitter, on the row, so a restart
picks up where it was and an outage of any length ends with the result delivered; a result that
can go nowhere is recorded undeliverable, with why, and a ``delivery_failed`` event.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

from generation.access import HIDDEN_REVIEWS
from storage.db import Database
from storage.models import EventKind
from storage.records import DeliveryRecord, JobRecord, ResultPostRecord

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
    ephemeral: bool = False  # answered so that only its member sees it (private mode)


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds before try n + 1: ``base`` × 2ⁿ, at most ``cap``, with jitter (a half to the
    whole), so results that failed together do not all come back at once."""

    base: float = 5.0
    cap: float = 300.0

    def after(self, attempts: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(0, attempts - 1))
        return random.uniform(ceiling / 2, ceiling)


def exposed(job: JobRecord, delivery: DeliveryRecord) -> bool:
    """A private job whose request was answered where others see it (its server switched to
    private mode between the answer and the job): nothing of it is shown on that answer, and
    its result goes by direct message."""
    return job.private and not delivery.ephemeral


def token_valid(delivery: DeliveryRecord, now: dt.datetime) -> bool:
    """Whether the interaction token should still answer (with a margin for the request)."""
    return now < delivery.interaction_at + TOKEN_LIFETIME - TOKEN_MARGIN


class Outbox:
    """Delivery records: read them, note the progress message, and record how each try went."""

    def __init__(self, db: Database, backoff: Backoff | None = None) -> None:
        self.db = db
        self.backoff = backoff or Backoff()

    async def get(self, job_id: int) -> DeliveryRecord | None:
        async with self.db.uow() as uow:
            return await uow.deliveries.get(job_id)

    async def for_jobs(self, job_ids: list[int]) -> dict[int, DeliveryRecord]:
        async with self.db.uow() as uow:
            return await uow.deliveries.for_jobs(job_ids)

    async def by_message(self, message_id: int) -> DeliveryRecord | None:
        async with self.db.uow() as uow:
            return await uow.deliveries.by_message(message_id)

    async def add_post(
        self, message_id: int, job_id: int, channel_id: int | None, user_id: int
    ) -> None:
        """A result posted again (/show): ✉️ and ❌ on it act on its job."""
        async with self.db.uow() as uow:
            await uow.posts.add(
                message_id=message_id,
                job_id=job_id,
                channel_id=channel_id,
                user_id=user_id,
                created_at=await uow.now(),
            )
            await uow.commit()

    async def post(self, message_id: int) -> ResultPostRecord | None:
        """The result posted again that this message is, if it is one."""
        async with self.db.uow() as uow:
            return await uow.posts.get(message_id)

    async def remove_post(self, message_id: int) -> None:
        async with self.db.uow() as uow:
            await uow.posts.remove(message_id)
            await uow.commit()

    async def posts(self, job_id: int) -> list[ResultPostRecord]:
        async with self.db.uow() as uow:
            return await uow.posts.for_job(job_id)

    async def set_original(self, job_id: int, message_id: int) -> None:
        async with self.db.uow() as uow:
            await uow.deliveries.set_original(job_id, message_id)
            await uow.commit()

    async def due(self, limit: int = 50) -> list[DeliveryRecord]:
        """Results due now (on the database's clock), oldest due first."""
        async with self.db.uow() as uow:
            return await uow.deliveries.due(await uow.now(), limit)

    async def withdrawals(self, limit: int = 50) -> list[DeliveryRecord]:
        """Deleted jobs whose messages are still to remove, due now."""
        async with self.db.uow() as uow:
            return await uow.deliveries.withdrawals(await uow.now(), limit)

    async def withdrawn(self, job_id: int) -> None:
        """Its messages are gone (best effort: one Discord would not delete stays)."""
        async with self.db.uow() as uow:
            await uow.deliveries.withdrawn(job_id)
            await uow.commit()

    async def claim(self, job_id: int, hold: float) -> bool:
        """Take a due result for one try, for ``hold`` seconds at most; False if it is not due
        (another process has it, its backoff is not over) or no longer pending."""
        async with self.db.uow() as uow:
            now = await uow.now()
            taken = await uow.deliveries.claim(job_id, now, now + dt.timedelta(seconds=hold))
            await uow.commit()
        return taken

    async def release(self, job_id: int) -> None:
        """A try stopped half-way (the process is stopping): due again now."""
        async with self.db.uow() as uow:
            await uow.deliveries.release(job_id, await uow.now())
            await uow.commit()

    async def mark_delivered(
        self, job_id: int, message_id: int | None, via: str, *, withheld: bool = False
    ) -> tuple[bool, bool]:
        """Record that the result went out (``via``: response, channel or dm; ``withheld``:
        without its flagged images): whether it was recorded now (False: it was already), and
        whether it is due again at once, its held images approved while it went out (decided
        in the same transaction, so an approval either sees the row delivered and re-opens
        it, or is seen here)."""
        async with self.db.uow() as uow:
            now = await uow.now()
            marked = await uow.deliveries.mark_delivered(
                job_id, message_id, now, via, withheld=withheld
            )
            reopened = False
            if marked and withheld:
                images = await uow.images.for_job(job_id)
                if not any(image.review in HIDDEN_REVIEWS for image in images):
                    reopened = await uow.deliveries.reopen(job_id, now)
            await uow.commit()
        return marked, reopened

    async def retry_later(self, delivery: DeliveryRecord, error: str) -> float:
        """A passing failure: the next try, after the backoff; its delay in seconds."""
        delay = self.backoff.after(delivery.attempts + 1)
        async with self.db.uow() as uow:
            when = await uow.now() + dt.timedelta(seconds=delay)
            await uow.deliveries.tried(delivery.job_id, error[:1000], when)
            await uow.commit()
        return delay

    async def give_up(self, job: JobRecord, reason: str) -> bool:
        """The result can go nowhere: undeliverable, with why, and a ``delivery_failed`` event
        (the requester's moderators and the host see it); False if no longer pending."""
        async with self.db.uow() as uow:
            now = await uow.now()
            ended = await uow.deliveries.give_up(job.id, reason)
            if ended:
                await uow.events.add(
                    kind=EventKind.DELIVERY_FAILED,
                    actor_id=None,
                    guild_id=job.guild_id,
                    target_user_id=job.user_id,
                    job_id=job.id,
                    reason=reason,
                    details={"channel_id": job.channel_id},
                    created_at=now,
                )
                await uow.commit()
        return ended
