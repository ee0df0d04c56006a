"""The reaper: jobs whose worker went silent go back in the queue, on a timer, in every process."""

from __future__ import annotations

import asyncio
import logging

from generation.events import EventBus, JobFailed
from generation.faults import is_transient
from storage.db import Database
from storage.queue import LEASE_EXPIRED_ERROR

logger = logging.getLogger(__name__)


class Reaper:
    """Every ``interval`` seconds, puts the jobs whose lease ran out (on the database's clock)
    back in the queue, or fails those out of attempts and tells their users (JobFailed). Every
    process runs one, the bot's too: with one worker that died, nobody would claim again."""

    def __init__(self, db: Database, events: EventBus, interval: float) -> None:
        self.db = db
        self.events = events
        self.interval = interval

    async def run(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception as error:
                if is_transient(error):
                    logger.warning("could not reap expired leases: %s", error)
                else:
                    logger.exception("could not reap expired leases")
            await asyncio.sleep(self.interval)

    async def reap_once(self) -> list[int]:
        """One round; the ids of the jobs it failed."""
        async with self.db.uow() as uow:
            failed = await uow.queue.reap_expired(await uow.now())
            await uow.commit()
        for job_id in failed:
            logger.warning("job %s failed: %s", job_id, LEASE_EXPIRED_ERROR)
            self.events.publish(JobFailed(job_id, LEASE_EXPIRED_ERROR))
        return failed
