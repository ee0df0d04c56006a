"""The jobs table is the queue: claim with a lease, renew it, complete fenced on its owner.

The claim's order is weighted fair queuing with one flow per user (start-time fair queuing):
each user has a virtual time, the service received so far in cost units divided by weight.
A claim takes the waiting job whose user has the lowest virtual time (oldest job first within
a user) and adds the job's ``cost / weight`` to that user's virtual time; a user who comes
back after being idle is lifted to the others' level (``lift``), so idle time is never saved
up into a burst. Cost and weight are fixed on the job at submit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Delivery, DeliveryState, Job, JobStatus, User
from storage.records import JobRecord, Lease, Renewal, to_record

# The error of a job whose lease ran out on its last attempt.
LEASE_EXPIRED_ERROR = "its worker stopped answering (lease expired), with no attempt left"
# The error of a job started this many times without ending (see max_runs).
TOO_MANY_RUNS_ERROR = "it was started {runs} times and never finished"


def max_runs(max_attempts: int) -> int:
    """How often a job may be started at all: a clean shutdown gives its attempt back, so runs,
    not attempts, bound a job that is released every time (say it hangs and each SIGTERM
    releases it)."""
    return 2 * max_attempts


class Policy(enum.StrEnum):
    FAIR = "fair"  # weighted fair queuing per user
    FIFO = "fifo"  # first come, first served (for comparison)


def select_next_job(
    policy: Policy, model_ids: Sequence[str] | None = None, now: dt.datetime | None = None
) -> Select[Any]:
    """The claim policy: which waiting job runs next (of those for ``model_ids``, if given, and
    not held back past ``now`` by a retry's ``not_before``)."""
    waiting = select(Job.id).where(Job.status == JobStatus.QUEUED)
    if now is not None:
        waiting = waiting.where((Job.not_before.is_(None)) | (Job.not_before <= now))
    if model_ids is not None:
        waiting = waiting.where(Job.model_id.in_(model_ids))
    if policy is Policy.FIFO:
        return waiting.order_by(Job.id).limit(1)
    return waiting.join(User, User.id == Job.user_id).order_by(User.virtual_time, Job.id).limit(1)


@dataclasses.dataclass(frozen=True, slots=True)
class Waiting:
    """A waiting job in the order the claim will take it, with what runs before it."""

    job_id: int
    user_id: int
    position: int  # 1: next
    cost_ahead: float  # the cost of the waiting jobs before it


def fair_order(rows: list[tuple[int, int, float, float, float]], policy: Policy) -> list[Waiting]:
    """Order waiting jobs ``(id, user_id, cost, weight, user's virtual time)`` as claims will.

    Under fair share each job's start tag is its user's virtual time plus the cost/weight of
    that user's older waiting jobs; claims take the lowest tag, ties by job id. Exact while
    nothing new arrives (an arrival can only move in ahead of jobs with a later tag).
    """
    rows = sorted(rows)
    if policy is Policy.FIFO:
        keyed = [((0.0, row[0]), row) for row in rows]
    else:
        clock: dict[int, float] = {}
        keyed = []
        for row in rows:
            job_id, user_id, cost, weight, virtual_time = row
            tag = clock.get(user_id, virtual_time)
            clock[user_id] = tag + cost / weight
            keyed.append(((tag, job_id), row))
    keyed.sort(key=lambda item: item[0])
    order = []
    ahead = 0.0
    for position, (_, (job_id, user_id, cost, _weight, _vt)) in enumerate(keyed, start=1):
        order.append(Waiting(job_id, user_id, position, ahead))
        ahead += cost
    return order


class JobQueue:
    """Queue transitions on one session; the caller's unit of work commits them."""

    def __init__(self, session: AsyncSession, policy: Policy = Policy.FAIR) -> None:
        self._session = session
        self.policy = policy
        self.reaped: list[int] = []  # the jobs the last claim's reaping failed

    async def waiting(self) -> list[Waiting]:
        """Every waiting job, in the order the claim will take them."""
        result = await self._session.execute(
            select(Job.id, Job.user_id, Job.cost, Job.weight, User.virtual_time)
            .join(User, User.id == Job.user_id)
            .where(Job.status == JobStatus.QUEUED)
        )
        rows = [(int(a), int(b), float(c), float(d), float(e)) for a, b, c, d, e in result]
        return fair_order(rows, self.policy)

    async def due(self, job_ids: Sequence[int], now: dt.datetime) -> None:
        """The jobs ended: their results (if the bot delivers them) are due now."""
        if not job_ids:
            return
        await self._session.execute(
            update(Delivery)
            .where(Delivery.job_id.in_(job_ids), Delivery.state == DeliveryState.PENDING)
            .values(next_try_at=now)
            .execution_options(synchronize_session=False)
        )

    async def waiting_count(self, model_ids: Sequence[str]) -> int:
        """Queued jobs for these models, held back or not."""
        count = await self._session.scalar(
            select(func.count(Job.id)).where(
                Job.status == JobStatus.QUEUED, Job.model_id.in_(model_ids)
            )
        )
        return int(count or 0)

    async def running(self) -> list[JobRecord]:
        rows = await self._session.scalars(select(Job).where(Job.status == JobStatus.RUNNING))
        return [to_record(JobRecord, row) for row in rows]

    async def seconds_per_cost(self, recent: int = 20) -> float | None:
        """Measured seconds per cost unit over the last ``recent`` completed jobs."""
        latest = (
            select(Job.gpu_seconds, Job.cost)
            .where(Job.status == JobStatus.SUCCEEDED, Job.gpu_seconds.is_not(None), Job.cost > 0)
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(recent)
            .subquery()
        )
        row = (
            await self._session.execute(
                select(func.sum(latest.c.gpu_seconds), func.sum(latest.c.cost))
            )
        ).one()
        seconds, cost = row
        return float(seconds) / float(cost) if seconds is not None and cost else None

    async def lift(self, user_id: int) -> None:
        """A user who was idle joins at the level of those waiting (or of the last claim), so
        the time they were away counts for nothing. Call before queuing their first job."""
        floor = await self._session.scalar(
            select(func.min(User.virtual_time)).where(
                User.id.in_(select(Job.user_id).where(Job.status == JobStatus.QUEUED)),
                User.id != user_id,
            )
        )
        if floor is None:
            floor = await self._session.scalar(select(func.max(Job.virtual_start)))
        if floor is None:
            return
        await self._session.execute(
            update(User)
            .where(User.id == user_id, User.virtual_time < floor)
            .values(virtual_time=floor)
            .execution_options(synchronize_session=False)
        )

    async def reap_expired(self, now: dt.datetime) -> list[int]:
        """Re-queue running jobs whose lease expired (on the database's clock, ``now``); fail
        those out of attempts or runs. The ids of the jobs failed, for their users to hear."""
        expired = (Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        # A job whose user cancelled it while its worker was silent ends cancelled.
        cancelled = await self._session.scalars(
            update(Job)
            .where(*expired, Job.cancel_requested.is_(True))
            .values(
                status=JobStatus.CANCELLED,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        await self.due(list(cancelled), now)
        spent = (Job.attempts >= Job.max_attempts) | (Job.runs >= 2 * Job.max_attempts)
        failed = await self._session.scalars(
            update(Job)
            .where(*expired, spent)
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                error=LEASE_EXPIRED_ERROR,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        failed_ids = list(failed)
        await self.due(failed_ids, now)
        await self._session.execute(
            update(Job)
            .where(*expired, ~spent)
            .values(status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        return failed_ids

    async def claim(
        self,
        owner: str,
        lease_seconds: float,
        now: dt.datetime,
        model_ids: Sequence[str] | None = None,
    ) -> tuple[JobRecord, Lease] | None:
        """Take the next job for ``owner`` with a lease, or None when nothing waits; a worker
        gives ``model_ids``, the models it has loaded, and gets only their jobs."""
        self.reaped = await self.reap_expired(now)
        # Skipping locked users as well as locked jobs: a second worker claiming at the same
        # moment takes the next user's job, not the same user's next one.
        locked = (Job,) if self.policy is Policy.FIFO else (Job, User)
        job_id = await self._session.scalar(
            select_next_job(self.policy, model_ids, now).with_for_update(
                skip_locked=True, of=locked
            )
        )
        if job_id is None:
            return None
        expires = now + dt.timedelta(seconds=lease_seconds)
        result = await self._session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING,
                attempts=Job.attempts + 1,
                runs=Job.runs + 1,
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
        if row.virtual_start is None:
            # First claim: charge the user's virtual time (a retry is not charged again).
            share = row.cost / row.weight
            charged = await self._session.scalar(
                update(User)
                .where(User.id == row.user_id)
                .values(virtual_time=User.virtual_time + share)
                .returning(User.virtual_time)
                .execution_options(synchronize_session=False)
            )
            assert charged is not None
            row.virtual_start = charged - share
            await self._session.flush()
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
        self,
        lease: Lease,
        status: JobStatus,
        now: dt.datetime,
        *,
        unrun: float = 0.0,
        **fields: Any,
    ) -> bool:
        """End a job the lease holder ran; False (and nothing written) when it lost the lease.

        ``unrun`` is the fraction of the job that did not run (a cancel mid-way): that part of
        its cost goes back to the user's virtual time.
        """
        result = await self._session.execute(
            update(Job)
            .where(*self._fenced(lease))
            .values(
                status=status, finished_at=now, lease_owner=None, lease_expires_at=None, **fields
            )
            .returning(Job.user_id, Job.cost, Job.weight)
            .execution_options(synchronize_session=False)
        )
        ended = result.one_or_none()
        if ended is None:
            return False
        await self.due([lease.job_id], now)
        if unrun > 0:
            user_id, cost, weight = ended
            await self._session.execute(
                update(User)
                .where(User.id == user_id)
                .values(virtual_time=User.virtual_time - cost / weight * min(unrun, 1.0))
                .execution_options(synchronize_session=False)
            )
        return True

    async def put_back(
        self,
        lease: Lease,
        now: dt.datetime,
        *,
        attempt_counts: bool,
        run_counts: bool = True,
        not_before: dt.datetime | None = None,
        error: str | None = None,
        exhausted: str = "",
    ) -> JobStatus | None:
        """Give a claimed job back to the queue, or fail it when it has had its attempts or
        runs (with ``exhausted``, or the reason ``error`` gives). None when the lease was lost.

        A clean shutdown's release gives the attempt back (``attempt_counts=False``) but counts
        the run; an image API that asks to wait counts neither (it bounds the wait itself); a
        hang or an error counts both. ``not_before`` holds it back; ``error`` says why.
        """
        counts = await self._session.execute(
            select(Job.attempts, Job.runs, Job.max_attempts)
            .where(*self._fenced(lease))
            .with_for_update()
        )
        row = counts.one_or_none()
        if row is None:
            return None
        attempts, runs, most = row
        attempts -= 0 if attempt_counts else 1
        runs -= 0 if run_counts else 1
        fields: dict[str, Any] = {"attempts": attempts, "runs": runs}
        reason = None
        if attempts >= most:
            reason = exhausted or error or f"it failed on all {most} attempts"
        elif runs >= max_runs(most):
            reason = TOO_MANY_RUNS_ERROR.format(runs=runs) + (f" ({error})" if error else "")
        if reason is not None:
            fields |= {"status": JobStatus.FAILED, "finished_at": now, "error": reason}
            await self.due([lease.job_id], now)
        else:
            fields |= {"status": JobStatus.QUEUED, "not_before": not_before, "error": error}
        if not run_counts:  # an image API's wait: remember when the waiting began
            fields["deferred_since"] = func.coalesce(Job.deferred_since, now)
        result = await self._session.execute(
            update(Job)
            .where(*self._fenced(lease))
            .values(lease_owner=None, lease_expires_at=None, **fields)
            .execution_options(synchronize_session=False)
        )
        if not getattr(result, "rowcount", 1):
            return None  # reaped in between: not ours any more
        return JobStatus(fields["status"])

    async def request_cancel(self, job_id: int, now: dt.datetime) -> JobRecord | None:
        """Cancel a waiting job at once; ask a running one to stop at its next step."""
        cancelled = await self._session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELLED, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(cancelled, "rowcount", 0):
            await self.due([job_id], now)
        await self._session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        row = await self._session.get(Job, job_id, populate_existing=True)
        return to_record(JobRecord, row) if row else None
