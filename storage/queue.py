"""The jobs table is the queue: claim with a lease, renew it, complete fenced on its owner."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Job, JobStatus
from storage.records import JobRecord, Lease, Renewal, to_record


def select_next_job() -> Select[Any]:
    """The claim policy: which waiting job runs next. FIFO by id for now.

    Every choice of the next job goes through here, so the fair-share policy replaces only
    this function (and ``queued_ahead``).
    """
    return select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.id).limit(1)


def queued_ahead(job: JobRecord) -> Select[Any]:
    """Count of waiting jobs that the policy runs before ``job``."""
    return select(func.count()).where(Job.status == JobStatus.QUEUED, Job.id < job.id)


class JobQueue:
    """Queue transitions on one session; the caller's unit of work commits them."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def position(self, job: JobRecord) -> int:
        """1 for the next job to run, 0 once it is no longer waiting."""
        if job.status != JobStatus.QUEUED:
            return 0
        ahead = await self._session.scalar(queued_ahead(job))
        return int(ahead or 0) + 1

    async def reap_expired(self, now: dt.datetime) -> None:
        """Re-queue running jobs whose lease expired; fail those out of attempts."""
        expired = (Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        await self._session.execute(
            update(Job)
            .where(*expired, Job.attempts >= Job.max_attempts)
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                error="its worker stopped answering (lease expired) on every attempt",
            )
            .execution_options(synchronize_session=False)
        )
        await self._session.execute(
            update(Job)
            .where(*expired, Job.attempts < Job.max_attempts)
            .values(status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )

    async def claim(
        self, owner: str, lease_seconds: float, now: dt.datetime
    ) -> tuple[JobRecord, Lease] | None:
        """Take the next job for ``owner`` with a lease, or None when nothing waits."""
        await self.reap_expired(now)
        job_id = await self._session.scalar(select_next_job().with_for_update(skip_locked=True))
        if job_id is None:
            return None
        expires = now + dt.timedelta(seconds=lease_seconds)
        result = await self._session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING,
                attempts=Job.attempts + 1,
                lease_owner=owner,
                lease_expires_at=expires,
                started_at=now,
            )
            .returning(Job)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        row = result.scalar_one_or_none()
        if row is None:
            return None
        job = to_record(JobRecord, row)
        return job, Lease(job_id=job.id, owner=owner, attempt=job.attempts, expires_at=expires)

    def _fenced(self, lease: Lease) -> tuple[Any, ...]:
        return (
            Job.id == lease.job_id,
            Job.status == JobStatus.RUNNING,
            Job.lease_owner == lease.owner,
            Job.attempts == lease.attempt,
        )

    async def renew(self, lease: Lease, lease_seconds: float, now: dt.datetime) -> Renewal:
        """Extend a held lease; tells whether it is still held and whether cancel was asked."""
        result = await self._session.execute(
            update(Job)
            .where(*self._fenced(lease))
            .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
            .returning(Job.cancel_requested)
            .execution_options(synchronize_session=False)
        )
        cancel = result.scalar_one_or_none()
        return Renewal(held=cancel is not None, cancel_requested=bool(cancel))

    async def finish(
        self, lease: Lease, status: JobStatus, now: dt.datetime, **fields: Any
    ) -> bool:
        """End a job the lease holder ran; False (and nothing written) when it lost the lease."""
        result = await self._session.execute(
            update(Job)
            .where(*self._fenced(lease))
            .values(
                status=status, finished_at=now, lease_owner=None, lease_expires_at=None, **fields
            )
            .execution_options(synchronize_session=False)
        )
        changed: int = result.rowcount  # type: ignore[attr-defined]
        return changed == 1

    async def release(self, lease: Lease) -> bool:
        """Give a claimed job back to the queue without counting the attempt (clean shutdown)."""
        result = await self._session.execute(
            update(Job)
            .where(*self._fenced(lease))
            .values(
                status=JobStatus.QUEUED,
                attempts=Job.attempts - 1,
                lease_owner=None,
                lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        changed: int = result.rowcount  # type: ignore[attr-defined]
        return changed == 1

    async def request_cancel(self, job_id: int, now: dt.datetime) -> JobRecord | None:
        """Cancel a waiting job at once; ask a running one to stop at its next step."""
        await self._session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELLED, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        await self._session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        row = await self._session.get(Job, job_id, populate_existing=True)
        return to_record(JobRecord, row) if row else None
