"""Holding a claimed job: its lease renewed on the database's clock from the claim to the
recorded end, through database errors, until it is refused or has gone unrenewed too long."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from generation.faults import is_transient
from storage.db import Database
from storage.records import Lease

logger = logging.getLogger(__name__)

# The keeper gives the lease up a little before the database would let it expire, so it never
# writes after another worker may have taken the job.
MARGIN = 0.9


class LeaseKeeper:
    """Renews one job's lease every ``interval`` seconds while the job is in hand (rendering,
    checking, writing files, recording). A renewal that fails with a passing error is tried
    again at the next beat; the lease counts as lost only when the database refused it (another
    worker owns the job) or when no renewal has succeeded for ``lease_seconds``."""

    def __init__(
        self, db: Database, lease: Lease, worker_id: str, lease_seconds: float, interval: float
    ) -> None:
        self.db = db
        self.lease = lease
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.renewed_at = time.monotonic()  # the claim set the lease just now
        self.cancel_requested = False
        self.lost_because = ""
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LeaseKeeper:
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.lease.job_id}")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` after which this worker must not act on the job any more."""
        return self.renewed_at + self.lease_seconds * MARGIN

    def holdable(self) -> bool:
        return not self.lost.is_set() and time.monotonic() < self.deadline

    def _lose(self, because: str) -> None:
        if not self.lost.is_set():
            self.lost_because = because
            self.lost.set()
            logger.warning("job %s: lease lost: %s", self.lease.job_id, because)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            # The database counts the new expiry from the renewal's start: so does the keeper.
            asked_at = time.monotonic()
            try:
                async with self.db.uow() as uow:
                    now = await uow.now()
                    renewal = await uow.queue.renew(self.lease, self.lease_seconds, now)
                    await uow.workers.beat(self.worker_id, "busy", self.lease.job_id, now)
                    await uow.commit()
            except Exception as error:
                if not is_transient(error):
                    logger.exception("job %s: renewing its lease failed", self.lease.job_id)
                else:
                    logger.warning(
                        "job %s: could not renew its lease: %s", self.lease.job_id, error
                    )
                if time.monotonic() >= self.deadline:
                    self._lose(f"no renewal succeeded for {self.lease_seconds:g} s")
                    return
                continue
            if not renewal.held:
                self._lose("another worker owns the job now")
                return
            self.renewed_at = asked_at
            if renewal.cancel_requested:
                self.cancel_requested = True
