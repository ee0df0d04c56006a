"""Fair share against FIFO on a simulated GPU clock, through the real submit and claim code.

A heavy user keeps N jobs queued (N in 1, 4, 16, 64) while a light user submits one job every
30 simulated seconds (3 s into a heavy job); every job takes one job-time (10 s). Prints the
light user's wait from submit to start, p50 / p95 / max in job-times, for FIFO and for fair
share. Then four users
with weights 1, 1, 2, 4 and different job sizes stay backlogged, and it prints Jain's index
of their weight-normalised service (1.0: exactly in proportion to weight).

    python benchmarks/fairness.py [--light-jobs 40] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

from generation.simulation import Arrival, Backlog, Served, Simulation
from storage.db import Database
from storage.queue import Policy

JOB_STEPS = 10  # one job-time: 10 units at 1 s a unit
JOB_SECONDS = 10.0
HEAVY, LIGHT = 1, 2


async def _database(policy: Policy) -> Database:
    folder = Path(tempfile.mkdtemp(prefix="fairness-"))
    db = Database(f"sqlite+aiosqlite:///{folder / 'imagine.db'}", policy=policy)
    await db.upgrade()
    return db


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def light_user_waits(policy: Policy, backlog: int, light_jobs: int) -> dict[str, float]:
    db = await _database(policy)
    try:
        simulation = Simulation(db)
        arrivals = [Arrival(30.0 * i + 3.0, LIGHT, JOB_STEPS) for i in range(light_jobs)]
        backlogs = {HEAVY: Backlog(queued=backlog, steps=JOB_STEPS)}

        def all_light_served(served: list[Served]) -> bool:
            return sum(job.user_id == LIGHT for job in served) == light_jobs

        served = await simulation.run(arrivals, backlogs, done=all_light_served)
        waits = [job.wait / JOB_SECONDS for job in served if job.user_id == LIGHT]
    finally:
        await db.close()
    return {
        "p50": statistics.median(waits),
        "p95": _percentile(waits, 0.95),
        "max": max(waits),
    }


async def jain_index(jobs: int) -> float:
    weights = {1: 1.0, 2: 1.0, 3: 2.0, 4: 4.0}
    sizes = {1: (10, 1), 2: (5, 4), 3: (20, 2), 4: (8, 3)}  # steps, count: different costs
    db = await _database(Policy.FAIR)
    try:
        simulation = Simulation(db, weights=weights)
        backlogs = {u: Backlog(queued=3, steps=s, count=c) for u, (s, c) in sizes.items()}
        served = await simulation.run((), backlogs, jobs=jobs)
    finally:
        await db.close()
    normalised = [sum(j.units for j in served if j.user_id == u) / w for u, w in weights.items()]
    return sum(normalised) ** 2 / (len(normalised) * sum(x * x for x in normalised))


async def main(light_jobs: int, jain_jobs: int) -> dict[str, object]:
    result: dict[str, object] = {}
    for policy in (Policy.FIFO, Policy.FAIR):
        result[policy.value] = {
            str(n): await light_user_waits(policy, n, light_jobs) for n in (1, 4, 16, 64)
        }
    result["jain"] = await jain_index(jain_jobs)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light-jobs", type=int, default=40, help="light user's jobs per run")
    parser.add_argument("--jain-jobs", type=int, default=200, help="jobs in the weights run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(main(args.light_jobs, args.jain_jobs))
    if args.json:
        print(json.dumps(figures))
    else:
        print("light user's wait, in job-times (p50 / p95 / max)")
        print(f"{'N':>4}  {'FIFO':>22}  {'fair share':>22}")
        fifo, fair = figures["fifo"], figures["fair"]
        assert isinstance(fifo, dict)
        assert isinstance(fair, dict)
        for n in fifo:
            a, b = fifo[n], fair[n]
            print(
                f"{n:>4}  {a['p50']:6.2f} {a['p95']:6.2f} {a['max']:6.2f}    "
                f"{b['p50']:6.2f} {b['p95']:6.2f} {b['max']:6.2f}"
            )
        print(
            f"Jain's index, weight-normalised service of 4 backlogged users: {figures['jain']:.4f}"
        )
