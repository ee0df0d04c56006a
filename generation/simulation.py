"""A simulated GPU clock driving the real submit and claim code, for fairness tests and
``benchmarks/fairness.py``.

Jobs go through ``GenerationService.submit`` (quotas, weights, the start tags) and
``JobQueue.claim``/``finish`` (the lowest tag) on a real database; only the
rendering is replaced by advancing a clock by the job's cost × seconds per cost unit. One
simulated worker runs one job at a time, so the result is deterministic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence

from generation.model_info import ModelInfo
from generation.quotas import Quotas
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from storage.db import Database
from storage.models import JobStatus

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SIZE = 64  # every simulated job is SIZE×SIZE; its steps × count sets its cost
UNLIMITED = Quotas(
    queued_per_user=1_000_000,
    queued_per_guild=1_000_000,
    images_per_user_day=1_000_000_000,
    images_per_guild_day=1_000_000_000,
)
SIM_MODEL = ModelInfo(
    model_id="simulated",
    path="",
    revision="0",
    native_width=SIZE,
    native_height=SIZE,
    default_steps=10,
    default_guidance=3.0,
    scheduler="DPMSolverMultistepScheduler",
    local=True,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Arrival:
    """A job a user submits at simulated second ``at``; it costs ``steps × count`` units."""

    at: float
    user_id: int
    steps: int = 10
    count: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Backlog:
    """A user who keeps ``queued`` jobs waiting from ``start`` on, topping up as they run."""

    queued: int
    steps: int = 10
    count: int = 1
    start: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Served:
    job_id: int
    user_id: int
    units: float  # steps × count: the job's cost in simulation units
    weight: float
    submitted: float
    started: float
    finished: float

    @property
    def wait(self) -> float:
        return self.started - self.submitted


def units(steps: int, count: int) -> float:
    return float(steps * count)


class Simulation:
    """Runs arrivals and backlogs through the real queue on ``db`` (freshly migrated)."""

    def __init__(
        self,
        db: Database,
        *,
        weights: Mapping[int, float] | None = None,
        seconds_per_unit: float = 1.0,
    ) -> None:
        self.db = db
        self.now = 0.0
        self.seconds_per_unit = seconds_per_unit
        self.weights = dict(weights or {})
        limits = Limits(max_steps=10_000, max_count=4)
        self.service = GenerationService(db, SIM_MODEL, limits, clock=self.clock, quotas=UNLIMITED)
        self._submitted: dict[int, float] = {}
        self._units: dict[int, float] = {}

    def clock(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.now)

    async def _setup(self) -> None:
        for user_id, weight in self.weights.items():
            await self.service.set_limits(user_id, weight=weight)

    async def submit(self, user_id: int, steps: int, count: int, at: float | None = None) -> int:
        """Submit now; ``at`` (≤ now) is when the user asked, if the clock has passed it."""
        submission = await self.service.submit(
            GenerationRequest("simulated", user_id=user_id, steps=steps, count=count, seed=0)
        )
        self._submitted[submission.job.id] = self.now if at is None else at
        self._units[submission.job.id] = units(steps, count)
        return submission.job.id

    async def _top_up(self, backlogs: Mapping[int, Backlog]) -> None:
        for user_id, backlog in backlogs.items():
            if self.now < backlog.start:
                continue
            async with self.db.uow() as uow:
                waiting = len(await uow.queue.queued_of(user_id))
            for _ in range(backlog.queued - waiting):
                await self.submit(user_id, backlog.steps, backlog.count)

    async def run(
        self,
        arrivals: Sequence[Arrival] = (),
        backlogs: Mapping[int, Backlog] | None = None,
        *,
        until: float | None = None,
        jobs: int | None = None,
        done: Callable[[list[Served]], bool] | None = None,
    ) -> list[Served]:
        """Serve jobs until simulated second ``until``, ``jobs`` jobs, ``done(served)``, or an
        empty queue."""
        await self._setup()
        backlogs = dict(backlogs or {})
        pending = sorted(arrivals, key=lambda a: a.at)
        served: list[Served] = []
        while (
            (until is None or self.now < until)
            and (jobs is None or len(served) < jobs)
            and (done is None or not done(served))
        ):
            while pending and pending[0].at <= self.now:
                arrival = pending.pop(0)
                await self.submit(arrival.user_id, arrival.steps, arrival.count, arrival.at)
            await self._top_up(backlogs)
            async with self.db.uow() as uow:
                claimed = await uow.queue.claim("simulated", 3600.0, self.clock())
                await uow.commit()
            if claimed is None:
                future = [b.start for b in backlogs.values() if b.start > self.now]
                future += [pending[0].at] if pending else []
                if not future:
                    break
                self.now = min(future)
                continue
            job, lease = claimed
            await self._top_up(backlogs)  # a backlog stays full while its job runs
            started = self.now
            unit_count = self._units[job.id]
            self.now += unit_count * self.seconds_per_unit
            async with self.db.uow() as uow:
                await uow.queue.finish(
                    lease,
                    JobStatus.SUCCEEDED,
                    self.clock(),
                    gpu_seconds=unit_count * self.seconds_per_unit,
                )
                await uow.commit()
            served.append(
                Served(
                    job.id,
                    job.user_id,
                    unit_count,
                    job.weight,
                    self._submitted[job.id],
                    started,
                    self.now,
                )
            )
        return served
