"""Fair share on a simulated clock, driving the real submit and claim code (hypothesis)."""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.simulation import Arrival, Backlog, Served, Simulation
from storage.db import Database
from storage.queue import Policy

T = TypeVar("T")
EXAMPLES = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never meets a new one by chance
    suppress_health_check=[HealthCheck.too_slow],
)


@functools.cache
def _template() -> Path:
    """A migrated SQLite file, copied for every example (migrating each time is slow)."""
    path = Path(tempfile.mkdtemp(prefix="fair-template-")) / "template.db"

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.upgrade()
        await db.close()

    asyncio.run(migrate())
    return path


def simulate(
    body: Callable[[Simulation], Awaitable[T]],
    *,
    weights: dict[int, float] | None = None,
    policy: Policy = Policy.FAIR,
) -> T:
    folder = Path(tempfile.mkdtemp(prefix="fair-"))
    shutil.copy(_template(), folder / "imagine.db")

    async def run() -> T:
        db = Database(f"sqlite+aiosqlite:///{folder / 'imagine.db'}", policy=policy)
        try:
            return await body(Simulation(db, weights=weights))
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def normalised_service(served: list[Served], weights: dict[int, float]) -> dict[int, float]:
    totals: dict[int, float] = defaultdict(float)
    for job in served:
        totals[job.user_id] += job.units
    return {user: totals[user] / weights.get(user, 1.0) for user in weights}


jobs = st.tuples(st.integers(1, 20), st.integers(1, 4))  # steps, count
weight = st.sampled_from([1.0, 2.0, 3.0, 4.0])


@EXAMPLES
@given(st.lists(st.tuples(weight, st.lists(jobs, min_size=4, max_size=10)), min_size=2, max_size=4))
def test_backlogged_users_stay_within_two_largest_jobs_of_each_other(
    users: list[tuple[float, list[tuple[int, int]]]],
) -> None:
    weights = {index + 1: w for index, (w, _) in enumerate(users)}
    arrivals = [
        Arrival(0.0, user_id, steps, count)
        for user_id, (_, queued) in enumerate(users, start=1)
        for steps, count in queued
    ]
    largest = max(a.steps * a.count / weights[a.user_id] for a in arrivals)
    served = simulate(lambda sim: sim.run(arrivals), weights=weights)
    assert sorted(job.job_id for job in served) == sorted(range(1, len(arrivals) + 1))
    left = defaultdict(int, {u: len(q) for u, (_, q) in enumerate(users, start=1)})
    started: dict[int, float] = defaultdict(float)
    for job in served:
        # Everyone still waiting when this job is picked has been backlogged all along.
        backlogged = [user for user in weights if left[user] > 0]
        normal = [started[user] / weights[user] for user in backlogged]
        assert max(normal) - min(normal) <= 2 * largest, (job, started)
        started[job.user_id] += job.units
        left[job.user_id] -= 1


@EXAMPLES
@given(
    st.lists(st.tuples(weight, jobs), min_size=1, max_size=4),
    st.floats(0, 300),
    jobs,
)
def test_an_arriving_user_waits_at_most_one_job_per_backlogged_user_plus_the_running_one(
    backlogged: list[tuple[float, tuple[int, int]]], at: float, own: tuple[int, int]
) -> None:
    weights = {index + 1: w for index, (w, _) in enumerate(backlogged)}
    backlogs = {
        index + 1: Backlog(queued=3, steps=steps, count=count)
        for index, (_, (steps, count)) in enumerate(backlogged)
    }
    newcomer = 99
    arrival = Arrival(at, newcomer, *own)

    def newcomer_served(served: list[Served]) -> bool:
        return any(job.user_id == newcomer for job in served)

    async def body(sim: Simulation) -> list[Served]:
        return await sim.run([arrival], backlogs, done=newcomer_served)

    served = simulate(body, weights={**weights, newcomer: 1.0})
    (mine,) = [job for job in served if job.user_id == newcomer]
    largest = max(steps * count for _, (steps, count) in backlogged)
    assert mine.wait <= (len(backlogged) + 1) * largest


@EXAMPLES
@given(st.lists(weight, min_size=2, max_size=3), jobs)
def test_shares_follow_weights(user_weights: list[float], job: tuple[int, int]) -> None:
    weights = {index + 1: w for index, w in enumerate(user_weights)}
    backlogs = {user: Backlog(queued=2, steps=job[0], count=job[1]) for user in weights}
    served = simulate(lambda sim: sim.run((), backlogs, jobs=60), weights=weights)
    total = sum(j.units for j in served)
    per_user = {u: sum(j.units for j in served if j.user_id == u) for u in weights}
    for user, w in weights.items():
        expected = w / sum(weights.values())
        # Off by at most two jobs' worth of the total.
        assert abs(per_user[user] / total - expected) <= 2 * job[0] * job[1] / total


@EXAMPLES
@given(st.integers(3, 30), jobs, jobs, weight, weight)
def test_an_idle_user_cannot_bank_credit(
    idle_jobs: int,
    light: tuple[int, int],
    heavy: tuple[int, int],
    w_light: float,
    w_heavy: float,
) -> None:
    weights = {1: w_light, 2: w_heavy}
    # User 1's first job runs, then it stays away for about idle_jobs of user 2's jobs.
    idle_for = light[0] * light[1] + idle_jobs * heavy[0] * heavy[1]
    backlogs = {
        1: Backlog(queued=3, steps=light[0], count=light[1], start=idle_for),
        2: Backlog(queued=3, steps=heavy[0], count=heavy[1]),
    }
    arrivals = [Arrival(0.0, 1, *light)]  # one job, then a long idle time

    async def body(sim: Simulation) -> list[Served]:
        return await sim.run(arrivals, backlogs, jobs=idle_jobs + 30)

    served = simulate(body, weights=weights)
    largest = max(light[0] * light[1] / w_light, heavy[0] * heavy[1] / w_heavy)
    back = [job for job in served if job.started >= idle_for]
    assert any(job.user_id == 1 for job in back)
    seen: dict[int, float] = defaultdict(float)
    for job in back:
        seen[job.user_id] += job.units
        normal = {user: seen[user] / weights[user] for user in weights}
        # Had the idle time been banked, user 1 would run alone until it caught up.
        assert normal[1] - normal[2] <= 2 * largest, (job, normal)


def test_fifo_serves_a_light_user_after_a_heavy_backlog_and_fair_share_does_not() -> None:
    arrivals = [Arrival(0.0, 1) for _ in range(12)] + [Arrival(0.0, 2)]
    for policy, place in ((Policy.FIFO, 13), (Policy.FAIR, 2)):
        served = simulate(lambda sim: sim.run(arrivals), policy=policy)
        assert [job.user_id for job in served].index(2) + 1 == place, policy
