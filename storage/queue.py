"""The jobs table is the queue: claim with a lease, renew it, complete fenced on its owner.

The claim's order is start-time fair queuing with one flow per user and model. Each job gets
its start tag at submit (``start_tag``): the larger of the model's system virtual time and the
finish tag of its user's previous job for that model; its finish tag is the start tag plus
``cost / weight``. The claim takes the lowest start tag through an index, so submit and claim
cost the same at 10 or 100,000 waiting jobs. The system virtual time of a model is its lowest
waiting start tag, or, while none waits, the tag last claimed for it or for a model a worker
serves with it: a user back from idle joins at the level of those being served, so idle time is
never saved up into a burst, and a job nobody serves holds back only its own model's
newcomers. Cost, weight and the tag are fixed at submit, so a released job is never charged
twice; a cancel moves the user's later tags back by what did not run (never below the tag
last claimed).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import (
    Delivery,
    DeliveryState,
    Job,
    JobStatus,
    QueueClock,
    QueueFlow,
    User,
    WorkerRow,
)
from storage.records import JobRecord, Lease, Renewal, to_record

# The error of a job whose lease ran out on its last attempt.
LEASE_EXPIRED_ERROR = "its worker stopped answering (lease expired), with no attempt left"
# The error of a job started this many times without ending (see max_runs).
TOO_MANY_RUNS_ERROR = "it was started {runs} times and never finished"
# A place in line is counted up to this ("1,000+ in line"): the count reads at most this many
# index entries, however long the line.
PLACE_CAP = 1000
# ``status = 'queued'`` written out, so the partial index on waiting jobs is used.
QUEUED: ColumnElement[bool] = Job.status == literal_column("'queued'")


def max_runs(max_attempts: int) -> int:
    """How often a job may be started at all: a clean shutdown gives its attempt back, so runs,
    not attempts, bound a job that is released every time (say it hangs and each SIGTERM
    releases it)."""
    return 2 * max_attempts


class Policy(enum.StrEnum):
    FAIR = "fair"  # weighted fair queuing per user
    FIFO = "fifo"  # first come, first served (for comparison)


def start_tag(system_time: float, previous_finish: float | None) -> float:
    """The fair-share policy, in one place: a job starts at the system virtual time, or after
    its user's previous job if that finishes later (a user never gets ahead by being idle)."""
    return system_time if previous_finish is None else max(system_time, previous_finish)


def finish_tag(start: float, cost: float, weight: float) -> float:
    """Where the job's user's next job starts: its share of the GPU is cost over weight."""
    return start + cost / weight


def select_next_job(model_id: str, now: dt.datetime | None = None) -> Select[int, float | None]:
    """The claim policy for one model: the waiting job with the lowest start tag (oldest
    first on a tie) that no retry's ``not_before`` holds back past ``now``."""
    waiting = select(Job.id, Job.start_tag).where(QUEUED, Job.model_id == model_id)
    if now is not None:
        waiting = waiting.where(or_(Job.not_before.is_(None), Job.not_before <= now))
    return waiting.order_by(Job.start_tag, Job.id).limit(1)


@dataclasses.dataclass(frozen=True, slots=True)
class Waiting:
    """A waiting job's place among its model's waiting jobs, in the order claims take them."""

    job_id: int
    user_id: int
    model_id: str
    position: int  # 1: next; capped at PLACE_CAP + 1
    cost_ahead: float  # the cost of the waiting jobs before it (of the first PLACE_CAP)
    capped: bool = False  # more than PLACE_CAP jobs are ahead: position says "1,000+"


def _insert(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    return postgresql_insert if dialect == "postgresql" else sqlite_insert


class JobQueue:
    """Queue transitions on one session; the caller's unit of work commits them."""

    def __init__(self, session: AsyncSession, policy: Policy = Policy.FAIR) -> None:
        self._session = session
        self.policy = policy
        self.reaped: list[int] = []  # the jobs the last claim's reaping failed

    # -- submit: tags ---------------------------------------------------------------------

    async def models(self) -> list[str]:
        """Every model ever queued (one clock row each: a handful)."""
        return list(await self._session.scalars(select(QueueClock.model_id)))

    async def system_time(self, model_id: str, now: dt.datetime | None = None) -> float:
        """The model's system virtual time: its lowest waiting start tag (of the jobs a claim
        could take at ``now``: one held back by a retry's wait does not hold the level down);
        while none waits, ``_idle_level`` (one index probe, a few small rows)."""
        query = select(func.min(Job.start_tag)).where(QUEUED, Job.model_id == model_id)
        if now is not None:
            query = query.where(or_(Job.not_before.is_(None), Job.not_before <= now))
        lowest = await self._session.scalar(query)
        if lowest is not None:
            return float(lowest)
        return await self._idle_level(model_id)

    async def _idle_level(self, model_id: str) -> float:
        """Where a model's newcomers start while none of its jobs wait: the tag last claimed
        for it, or for any model a worker serves together with it (a worker compares their
        tags: an upscaler idle all afternoon joins at the level of the base model, not below
        it). Models on other workers do not count: their clocks move at unrelated rates."""
        together = {model_id}
        for (models,) in await self._session.execute(select(WorkerRow.models)):
            served = set((models or {}).get("ids", []))
            if model_id in served:
                together |= served
        highest = select(func.max(QueueClock.virtual_time))
        if together == {model_id} and await self._session.get(QueueClock, model_id) is None:
            # A model new to the queue that no worker has announced yet (a preset's own,
            # asked for before its worker found it): at the highest level of all, so its
            # jobs do not go ahead of everyone's once a worker takes it up.
            return float(await self._session.scalar(highest) or 0.0)
        level = await self._session.scalar(highest.where(QueueClock.model_id.in_(together)))
        return float(level or 0.0)

    async def _clock(self, model_id: str) -> float:
        level = await self._session.scalar(
            select(QueueClock.virtual_time).where(QueueClock.model_id == model_id)
        )
        return float(level or 0.0)

    async def enqueue(self, **fields: Any) -> JobRecord:
        """Queue a job: its start tag from the model's system virtual time and its user's flow
        (the caller holds the user's row, so one user's submits take turns)."""
        fields.setdefault("status", JobStatus.QUEUED)
        fields.setdefault("weight", 1.0)
        user_id, model_id = fields["user_id"], fields["model_id"]
        if self.policy is Policy.FIFO:
            tag = 0.0  # ties all round: the claim takes the oldest
        else:
            flow = await self._session.get(QueueFlow, (user_id, model_id), populate_existing=True)
            tag = start_tag(
                await self.system_time(model_id, fields.get("created_at")),
                flow.finish_tag if flow is not None else None,
            )
            finish = finish_tag(tag, fields["cost"], fields["weight"])
            statement = _insert(self._session)(QueueFlow).values(
                user_id=user_id, model_id=model_id, finish_tag=finish
            )
            await self._session.execute(
                statement.on_conflict_do_update(
                    index_elements=[QueueFlow.user_id, QueueFlow.model_id],
                    set_={"finish_tag": statement.excluded.finish_tag},
                )
            )
        if await self._session.get(QueueClock, model_id) is None:
            # A model's first job starts at the level of the models served with it.
            level = await self._idle_level(model_id)
            await self._session.execute(
                _insert(self._session)(QueueClock)
                .values(
                    model_id=model_id,
                    virtual_time=float(level or 0.0),
                    updated_at=fields.get("created_at") or dt.datetime.now(dt.UTC),
                )
                .on_conflict_do_nothing()
            )
        row = Job(**fields, start_tag=tag)
        self._session.add(row)
        await self._session.flush()
        return to_record(JobRecord, row)

    async def _move_back(
        self, user_id: int, model_id: str, after: float, amount: float, *, locked: bool = False
    ) -> None:
        """A job of this flow gave back ``amount`` of its share (a cancel): the user's later
        waiting jobs, and their next job, start that much earlier. Holds the user's row, so a
        submit of theirs at the same moment takes its tag after this."""
        if amount <= 0 or self.policy is Policy.FIFO:
            return
        if not locked:
            await self._lock_user(user_id)
        # Never below the tag last claimed: later jobs that had been lifted to the system
        # time when they were queued move back only as far as that (spaced as they were), so
        # they do not jump ahead of those served meanwhile.
        mine = (
            Job.user_id == user_id,
            Job.status == JobStatus.QUEUED,
            Job.model_id == model_id,
            Job.start_tag > after,
        )
        lowest = await self._session.scalar(select(func.min(Job.start_tag)).where(*mine))
        floor = await self._clock(model_id)
        if lowest is not None:
            amount = min(amount, max(0.0, float(lowest) - floor))
        await self._session.execute(
            update(Job)
            .where(*mine)
            .values(start_tag=Job.start_tag - amount)
            .execution_options(synchronize_session=False)
        )
        finish = QueueFlow.finish_tag - amount
        await self._session.execute(
            update(QueueFlow)
            .where(QueueFlow.user_id == user_id, QueueFlow.model_id == model_id)
            .values(finish_tag=case((finish < floor, floor), else_=finish))
            .execution_options(synchronize_session=False)
        )

    async def _lock_user(self, user_id: int) -> None:
        # FOR NO KEY UPDATE: rows that point at the user (a job, a day's usage) still insert.
        await self._session.execute(
            select(User.id).where(User.id == user_id).with_for_update(key_share=True)
        )

    # -- places and rates ------------------------------------------------------------------

    async def place(self, job: JobRecord) -> Waiting | None:
        """A waiting job's place among its model's waiting jobs (None once it is not waiting):
        a count of the index entries before it, at most PLACE_CAP of them, in one row."""
        if job.status != JobStatus.QUEUED or job.start_tag is None:
            return None
        tag = job.start_tag
        still = await self._session.scalar(select(Job.id).where(Job.id == job.id, QUEUED))
        if still is None:  # claimed or cancelled since it was read
            return None
        ahead = (
            select(Job.cost)
            .where(
                QUEUED,
                Job.model_id == job.model_id,
                or_(Job.start_tag < tag, and_(Job.start_tag == tag, Job.id < job.id)),
            )
            .order_by(Job.start_tag, Job.id)
            .limit(PLACE_CAP + 1)
            .subquery()
        )
        count, cost = (
            await self._session.execute(
                select(func.count(), func.coalesce(func.sum(ahead.c.cost), 0.0))
            )
        ).one()
        return Waiting(
            job.id,
            job.user_id,
            job.model_id,
            min(count, PLACE_CAP) + 1,
            float(cost),
            count > PLACE_CAP,
        )

    async def places(self, jobs: Sequence[JobRecord]) -> dict[int, Waiting]:
        """The places of several waiting jobs (one user's, say): one read per model of the
        index entries up to the last of them, at most PLACE_CAP + 1 more than they are."""
        if len(jobs) == 1:
            one = await self.place(jobs[0])
            return {} if one is None else {one.job_id: one}
        found: dict[int, Waiting] = {}
        by_model: dict[str, list[JobRecord]] = {}
        for job in jobs:
            if job.status == JobStatus.QUEUED and job.start_tag is not None:
                by_model.setdefault(job.model_id, []).append(job)
        for model_id, mine in by_model.items():
            mine.sort(key=lambda j: (j.start_tag, j.id))
            last = mine[-1]
            tag = last.start_tag
            assert tag is not None
            limit = PLACE_CAP + len(mine) + 1
            rows = (
                await self._session.execute(
                    select(Job.id, Job.start_tag, Job.cost)
                    .where(
                        QUEUED,
                        Job.model_id == model_id,
                        or_(Job.start_tag < tag, and_(Job.start_tag == tag, Job.id <= last.id)),
                    )
                    .order_by(Job.start_tag, Job.id)
                    .limit(limit)
                )
            ).all()
            cost = 0.0
            wanted = {job.id: job for job in mine}
            for ahead, (job_id, _tag, job_cost) in enumerate(rows):
                if job_id in wanted:
                    found[job_id] = Waiting(
                        job_id,
                        wanted[job_id].user_id,
                        model_id,
                        min(ahead, PLACE_CAP) + 1,
                        cost,
                        ahead > PLACE_CAP,
                    )
                cost += float(job_cost)
            if len(rows) == limit:  # the read stopped short of them: more than PLACE_CAP ahead
                for job in mine:
                    found.setdefault(
                        job.id, Waiting(job.id, job.user_id, model_id, PLACE_CAP + 1, cost, True)
                    )
            # Otherwise one not read is no longer waiting (claimed, cancelled): no place.
        return found

    async def queued_of(self, user_id: int) -> list[JobRecord]:
        """One user's waiting jobs (at most their quota of them), in the order they run."""
        rows = await self._session.scalars(
            select(Job)
            .where(Job.user_id == user_id, Job.status == JobStatus.QUEUED)
            .order_by(Job.start_tag, Job.id)
        )
        return [to_record(JobRecord, row) for row in rows]

    async def first_waiting(self, limit: int) -> list[JobRecord]:
        """The first ``limit`` waiting jobs of every model, in tag order."""
        rows = await self._session.scalars(
            select(Job).where(QUEUED).order_by(Job.start_tag, Job.id).limit(limit)
        )
        return [to_record(JobRecord, row) for row in rows]

    async def seconds_per_cost(self, *model_ids: str) -> float | None:
        """The seconds a cost unit takes on these models (the slowest of them; of any model for
        none), as workers measured it finishing jobs; None until one has."""
        query = select(func.max(QueueClock.seconds_per_cost))
        if model_ids:
            query = query.where(QueueClock.model_id.in_(model_ids))
        rate = await self._session.scalar(query)
        return float(rate) if rate is not None else None

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
            select(func.count(Job.id)).where(QUEUED, Job.model_id.in_(model_ids))
        )
        return int(count or 0)

    async def running(self, model_id: str | None = None) -> list[JobRecord]:
        """The running jobs (one per busy worker), of one model or all."""
        query = select(Job).where(Job.status == JobStatus.RUNNING)
        if model_id is not None:
            query = query.where(Job.model_id == model_id)
        rows = await self._session.scalars(query)
        return [to_record(JobRecord, row) for row in rows]

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
        *,
        prefer: Sequence[str] = (),
        bound: float = 0.0,
    ) -> tuple[JobRecord, Lease] | None:
        """Take the next job for ``owner`` with a lease, or None when nothing waits; a worker
        gives ``model_ids``, the models it can run, and gets only their jobs.

        ``prefer``: the models it has loaded. Their lowest job is taken instead of the lowest
        of all while its start tag is within ``bound`` (virtual time: cost over weight) of the
        lowest: a mixed queue then does not swap models every job, and no job is passed by
        jobs started more than that bound after its own start tag."""
        self.reaped = await self.reap_expired(now)
        if model_ids is None:
            model_ids = sorted(await self.models())
        # One LIMIT 1 through the index per model; the lowest tag of those runs. A job another
        # worker is claiming at this moment is skipped, not waited for.
        heads: list[tuple[float, int, str]] = []
        for model_id in model_ids:
            found = (
                await self._session.execute(
                    select_next_job(model_id, now).with_for_update(skip_locked=True, of=Job)
                )
            ).one_or_none()
            if found is not None:
                found_id, found_tag = found
                heads.append((float(found_tag or 0.0), int(found_id), model_id))
        if not heads:
            return None
        lowest = min(heads)
        loaded = [head for head in heads if head[2] in prefer]
        best = lowest
        if loaded and min(loaded)[0] <= lowest[0] + max(0.0, bound):
            best = min(loaded)
        tag, job_id, model_id = best
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
                virtual_start=func.coalesce(Job.virtual_start, Job.start_tag),
            )
            .returning(Job)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        row = result.scalar_one_or_none()
        if row is None:
            return None
        # The model's clock: the highest tag claimed (the system virtual time while none waits).
        await self._session.execute(
            update(QueueClock)
            .where(QueueClock.model_id == model_id, QueueClock.virtual_time < tag)
            .values(virtual_time=tag, updated_at=now)
            .execution_options(synchronize_session=False)
        )
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
        measure: bool = True,
        **fields: Any,
    ) -> bool:
        """End a job the lease holder ran; False (and nothing written) when it lost the lease.

        ``unrun`` is the fraction of the job that did not run (a cancel mid-way): that part of
        its cost goes back to the user's virtual time. ``measure``: its seconds per cost feed
        the model's ETA rate (not a resize, which calls no model).
        """
        if unrun > 0:  # the refund moves the user's tags: their row first, as a cancel does
            owner = await self._session.scalar(select(Job.user_id).where(*self._fenced(lease)))
            if owner is None:
                return False
            await self._lock_user(owner)
        result = await self._session.execute(
            update(Job)
            .where(*self._fenced(lease))
            .values(
                status=status, finished_at=now, lease_owner=None, lease_expires_at=None, **fields
            )
            .returning(Job.user_id, Job.model_id, Job.cost, Job.weight, Job.start_tag)
            .execution_options(synchronize_session=False)
        )
        ended = result.one_or_none()
        if ended is None:
            return False
        await self.due([lease.job_id], now)
        user_id, model_id, cost, weight, tag = ended
        if unrun > 0:
            await self._move_back(
                user_id, model_id, tag or 0.0, cost / weight * min(unrun, 1.0), locked=True
            )
        seconds = fields.get("gpu_seconds")
        if measure and status is JobStatus.SUCCEEDED and seconds is not None and cost > 0:
            await self.measured(model_id, float(seconds) / cost, now)
        return True

    async def measured(self, model_id: str, rate: float, now: dt.datetime) -> None:
        """A worker measured ``rate`` seconds per cost unit on a model: the ETA's rolling
        figure moves a fifth of the way there."""
        await self._session.execute(
            update(QueueClock)
            .where(QueueClock.model_id == model_id)
            .values(
                seconds_per_cost=func.coalesce(
                    0.8 * QueueClock.seconds_per_cost + 0.2 * rate, rate
                ),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )

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
        """Cancel a waiting job at once (its user's later jobs move up by its share); ask a
        running one to stop at its next step."""
        owner = await self._session.scalar(select(Job.user_id).where(Job.id == job_id))
        if owner is None:
            return None
        await self._lock_user(owner)  # before the job's row, as every tag move takes them
        cancelled = await self._session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELLED, finished_at=now)
            .returning(Job.model_id, Job.cost, Job.weight, Job.start_tag)
            .execution_options(synchronize_session=False)
        )
        gone = cancelled.one_or_none()
        if gone is not None:
            await self.due([job_id], now)
            model_id, cost, weight, tag = gone
            if tag is not None:
                await self._move_back(owner, model_id, tag, cost / weight, locked=True)
        await self._session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        row = await self._session.get(Job, job_id, populate_existing=True)
        return to_record(JobRecord, row) if row else None
