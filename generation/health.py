"""The queue's health, as a host reads it: workers, the queue per model, waits by user,
deliveries still to go, failures by reason. Bounded reads through indexes (the newest jobs by
primary key, never a scan), so it stays cheap on a year of history."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from storage.db import Database
from storage.records import WorkerRecord

RECENT_JOBS = 5000  # the newest jobs whose waits are measured
RECENT_FAILURES = 1000  # the newest failures sorted by reason
FAILURE_WINDOW = dt.timedelta(hours=24)
SILENT_SECONDS = 60.0  # a worker not heard from for this long is silent


@dataclasses.dataclass(frozen=True, slots=True)
class ModelQueue:
    model_id: str
    waiting: int
    running: int
    oldest_wait_seconds: float  # 0 when none waits


@dataclasses.dataclass(frozen=True, slots=True)
class UserWaits:
    user_id: int
    jobs: int
    p50_seconds: float
    p95_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerHealth:
    worker: WorkerRecord
    heartbeat_age_seconds: float

    @property
    def silent(self) -> bool:
        return self.worker.state != "stopped" and self.heartbeat_age_seconds > SILENT_SECONDS


@dataclasses.dataclass(frozen=True, slots=True)
class Health:
    at: dt.datetime
    queues: list[ModelQueue]
    waits: list[UserWaits]  # slowest p95 first
    deliveries: dict[str, int]  # pending, undeliverable
    failures: dict[str, int]  # by reason, the last FAILURE_WINDOW
    workers: list[WorkerHealth]
    wait_p50_seconds: float = 0.0  # over every job measured
    wait_p95_seconds: float = 0.0


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` 0-1) of values, 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def failure_reason(error: str | None) -> str:
    """A failure's kind, for counting: its error's first clause without ids or numbers."""
    text = (error or "unknown").split(":")[0].strip() or "unknown"
    return re.sub(r"\d+", "N", text)[:80]


async def read_health(db: Database) -> Health:
    async with db.uow() as uow:
        now = await uow.now()
        queue = await uow.jobs.in_queue()
        started = await uow.jobs.latest_started(RECENT_JOBS)
        failed = await uow.jobs.latest_failures(RECENT_FAILURES)
        deliveries = await uow.deliveries.open_counts()
        workers = await uow.workers.all()
    counts = {(model_id, status): (n, oldest) for model_id, status, n, oldest in queue}
    queues = []
    for model_id in sorted({model_id for model_id, _ in counts}):
        waiting, oldest = counts.get((model_id, "queued"), (0, None))
        running, _ = counts.get((model_id, "running"), (0, None))
        age = (now - _aware(oldest)).total_seconds() if oldest is not None else 0.0
        queues.append(ModelQueue(model_id, waiting, running, max(0.0, age)))
    waited: dict[int, list[float]] = defaultdict(list)
    for user_id, created, began in started:
        if began is not None:
            waited[user_id].append(max(0.0, (_aware(began) - _aware(created)).total_seconds()))
    waits = sorted(
        (
            UserWaits(user, len(times), percentile(times, 0.5), percentile(times, 0.95))
            for user, times in waited.items()
        ),
        key=lambda w: (-w.p95_seconds, w.user_id),
    )
    since = now - FAILURE_WINDOW
    failures = Counter(
        failure_reason(error)
        for error, ended in failed
        if ended is not None and _aware(ended) >= since
    )
    every = [seconds for times in waited.values() for seconds in times]
    return Health(
        wait_p50_seconds=percentile(every, 0.5),
        wait_p95_seconds=percentile(every, 0.95),
        at=now,
        queues=queues,
        waits=waits,
        deliveries=deliveries,
        failures=dict(failures.most_common()),
        workers=[
            WorkerHealth(w, max(0.0, (now - _aware(w.heartbeat_at)).total_seconds()))
            for w in workers
        ],
    )


def _aware(moment: dt.datetime) -> dt.datetime:
    """SQLite gives naive UTC datetimes back; PostgreSQL aware ones."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
