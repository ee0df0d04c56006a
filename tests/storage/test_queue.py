"""The jobs table as a queue, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

import storage.queue as queue_module
from storage.db import Database
from storage.models import JobStatus, utcnow
from storage.records import JobRecord, Lease, NewImage
from tests.storage.helpers import add_job

LEASE = 60.0


async def claim(db: Database, owner: str, now: dt.datetime | None = None):  # type: ignore[no-untyped-def]
    async with db.uow() as uow:
        claimed = await uow.queue.claim(owner, LEASE, now or utcnow())
        await uow.commit()
    return claimed


async def test_claims_in_submission_order_and_sets_a_lease(db: Database) -> None:
    first = await add_job(db)
    second = await add_job(db, user_id=2)
    now = utcnow()
    job, lease = await claim(db, "w1", now)
    assert job.id == first.id
    assert (job.status, job.attempts, job.lease_owner) == ("running", 1, "w1")
    assert lease.expires_at == now + dt.timedelta(seconds=LEASE)
    job2, _ = await claim(db, "w2")
    assert job2.id == second.id
    assert await claim(db, "w3") is None


async def positions(db: Database, jobs: list[JobRecord]) -> list[int]:
    """Each job's place in line; 0 once it is no longer waiting."""
    async with db.uow() as uow:
        stored = await uow.jobs.get_many([job.id for job in jobs])
        places = [await uow.queue.place(stored[job.id]) for job in jobs]
    return [place.position if place else 0 for place in places]


async def test_position_counts_the_jobs_ahead(db: Database) -> None:
    jobs = [await add_job(db) for _ in range(3)]
    assert await positions(db, jobs) == [1, 2, 3]
    await claim(db, "w1")
    assert await positions(db, jobs) == [0, 1, 2]


async def test_interaction_id_is_unique(db: Database) -> None:
    await add_job(db, interaction_id=555)
    with pytest.raises(IntegrityError):
        await add_job(db, interaction_id=555)


async def test_completion_is_fenced_on_the_lease_owner(db: Database) -> None:
    await add_job(db, max_attempts=3)
    start = utcnow()
    job, dead_lease = await claim(db, "dead-worker", start)
    # The lease runs out; the next claim re-queues the job and a live worker takes it.
    later = start + dt.timedelta(seconds=LEASE + 1)
    retaken, live_lease = await claim(db, "live-worker", later)
    assert retaken.id == job.id
    assert retaken.attempts == 2
    async with db.uow() as uow:
        assert not await uow.queue.finish(dead_lease, JobStatus.SUCCEEDED, later)
        renewal = await uow.queue.renew(dead_lease, LEASE, later)
        assert not renewal.held
        assert await uow.queue.finish(live_lease, JobStatus.SUCCEEDED, later)
        await uow.commit()
    async with db.uow() as uow:
        done = await uow.jobs.get(job.id)
    assert done is not None
    assert (done.status, done.lease_owner, done.attempts) == ("succeeded", None, 2)


async def test_a_job_out_of_attempts_fails_with_its_reason(db: Database) -> None:
    job = await add_job(db, max_attempts=2)
    now = utcnow()
    for attempt in range(2):
        claimed = await claim(db, f"w{attempt}", now)
        assert claimed is not None
        now += dt.timedelta(seconds=LEASE + 1)
    assert await claim(db, "w-last", now) is None
    async with db.uow() as uow:
        failed = await uow.jobs.get(job.id)
    assert failed is not None
    assert failed.status == "failed"
    assert failed.error and "lease expired" in failed.error


async def test_renewal_extends_the_lease_and_reports_cancel_requests(db: Database) -> None:
    await add_job(db)
    now = utcnow()
    job, lease = await claim(db, "w1", now)
    async with db.uow() as uow:
        renewal = await uow.queue.renew(lease, LEASE, now + dt.timedelta(seconds=50))
        await uow.commit()
    assert renewal.held and not renewal.cancel_requested
    # Renewed at +50 s, so the job is still held at +100 s: nobody else can take it.
    assert await claim(db, "w2", now + dt.timedelta(seconds=100)) is None
    async with db.uow() as uow:
        await uow.queue.request_cancel(job.id, now)
        renewal = await uow.queue.renew(lease, LEASE, now)
        await uow.commit()
    assert renewal.held and renewal.cancel_requested


async def test_cancel_of_a_waiting_job_takes_effect_at_once(db: Database) -> None:
    job = await add_job(db)
    async with db.uow() as uow:
        cancelled = await uow.queue.request_cancel(job.id, utcnow())
        await uow.commit()
    assert cancelled is not None and cancelled.status == "cancelled"
    assert await claim(db, "w1") is None


async def release(db: Database, lease: Lease, **how: Any) -> JobStatus | None:
    """A clean shutdown's hand-back, unless ``how`` says otherwise."""
    async with db.uow() as uow:
        status = await uow.queue.put_back(lease, utcnow(), **{"attempt_counts": False, **how})
        await uow.commit()
    return status


async def test_release_returns_a_job_without_spending_an_attempt(db: Database) -> None:
    job = await add_job(db)
    _, lease = await claim(db, "w1")
    assert await release(db, lease) is JobStatus.QUEUED
    again, lease = await claim(db, "w2")
    assert (again.id, again.attempts, again.runs) == (job.id, 1, 2)
    assert await release(db, lease) is JobStatus.QUEUED
    assert await release(db, lease) is None, "fenced: the lease is no longer held"


async def test_a_job_released_every_time_ends_after_its_runs(db: Database) -> None:
    """Released on every shutdown, its attempt given back each time: runs still bound it."""
    job = await add_job(db, max_attempts=2)
    statuses = []
    while (claimed := await claim(db, "w")) is not None:
        statuses.append(await release(db, claimed[1]))
    assert statuses == [JobStatus.QUEUED] * 3 + [JobStatus.FAILED]
    async with db.uow() as uow:
        ended = await uow.jobs.get(job.id)
    assert ended is not None and ended.error == "it was started 4 times and never finished"


async def test_a_counted_hand_back_spends_an_attempt_and_waits_out_its_not_before(
    db: Database,
) -> None:
    job = await add_job(db, max_attempts=2)
    _, lease = await claim(db, "w")
    later = utcnow() + dt.timedelta(seconds=30)
    status = await release(db, lease, attempt_counts=True, not_before=later, error="store: 503")
    assert status is JobStatus.QUEUED
    assert await claim(db, "w") is None, "held back until not_before"
    again, lease = await claim(db, "w", later + dt.timedelta(seconds=1))
    assert (again.id, again.attempts, again.error) == (job.id, 2, "store: 503")
    status = await release(db, lease, attempt_counts=True, error="hung", exhausted="it hung")
    assert status is JobStatus.FAILED
    async with db.uow() as uow:
        ended = await uow.jobs.get(job.id)
    assert ended is not None and (ended.status, ended.error) == ("failed", "it hung")


async def test_an_api_wait_counts_neither_an_attempt_nor_a_run(db: Database) -> None:
    job = await add_job(db, max_attempts=1)
    since = []
    for _ in range(5):
        _, lease = await claim(db, "w")
        status = await release(db, lease, run_counts=False, error="rate limited")
        assert status is JobStatus.QUEUED
        async with db.uow() as uow:
            since.append((await uow.jobs.get(job.id)).deferred_since)  # type: ignore[union-attr]
    again, _ = await claim(db, "w")
    assert (again.id, again.attempts, again.runs) == (job.id, 1, 1)
    assert since[0] is not None and set(since) == {since[0]}, "when the waiting began, kept"


async def test_reaping_requeues_expired_leases_and_returns_the_jobs_it_failed(
    db: Database,
) -> None:
    requeued = await add_job(db, max_attempts=2)
    failed = await add_job(db, user_id=2, max_attempts=1)
    start = utcnow()
    await claim(db, "w", start)
    await claim(db, "w", start)
    async with db.uow() as uow:
        assert await uow.queue.reap_expired(start + dt.timedelta(seconds=LEASE - 1)) == []
        assert await uow.queue.reap_expired(start + dt.timedelta(seconds=LEASE + 1)) == [failed.id]
        await uow.commit()
        assert (await uow.jobs.get(requeued.id)).status == "queued"  # type: ignore[union-attr]


async def test_concurrent_claims_never_take_one_job_twice(db: Database) -> None:
    for user in range(6):
        await add_job(db, user_id=user + 1)
    results = await asyncio.gather(*(claim(db, f"w{i}") for i in range(8)))
    claimed = [job.id for job, _ in filter(None, results)]
    assert len(claimed) == 6
    assert len(set(claimed)) == 6


async def test_images_and_usage_round_trip(db: Database) -> None:
    job = await add_job(db)
    today = utcnow().date()
    async with db.uow() as uow:
        await uow.images.add_many(job.id, [NewImage(0, 7, "ab" * 32, "images/x.png", 64, 64)])
        await uow.usage.charge(job.user_id, today, images=4, cost=2.5, gpu_seconds=1.0)
        await uow.usage.charge(job.user_id, today, images=1, cost=0.5, gpu_seconds=0.5)
        await uow.commit()
    async with db.uow() as uow:
        images = await uow.images.for_job(job.id)
        usage = await uow.usage.get(job.user_id, today)
    assert [(image.index, image.seed, image.path) for image in images] == [(0, 7, "images/x.png")]
    assert usage is not None
    assert (usage.jobs, usage.images, usage.cost, usage.gpu_seconds) == (2, 5, 3.0, 1.5)


async def test_uncommitted_work_is_rolled_back(db: Database) -> None:
    async with db.uow() as uow:
        await uow.users.ensure(42, "ghost")
    async with db.uow() as uow:
        assert await uow.users.get(42) is None


async def test_timestamps_come_back_in_utc(db: Database) -> None:
    job = await add_job(db)
    async with db.uow() as uow:
        stored = await uow.jobs.get(job.id)
    assert stored is not None
    assert stored.created_at.tzinfo == dt.UTC
    assert abs((stored.created_at - job.created_at).total_seconds()) < 1e-3


async def test_two_workers_claiming_at_once_follow_the_fair_order(db: Database) -> None:
    for user, jobs in ((1, 6), (2, 2), (3, 2)):
        for _ in range(jobs):
            await add_job(db, user_id=user)
    order: list[int] = []

    async def work(owner: str) -> None:
        while claimed := await claim(db, owner):
            job, lease = claimed
            order.append(job.user_id)
            async with db.uow() as uow:
                assert await uow.queue.finish(lease, JobStatus.SUCCEEDED, utcnow())
                await uow.commit()

    await asyncio.gather(work("w1"), work("w2"))
    async with db.uow() as uow:
        jobs = await uow.jobs.recent(limit=20)
    assert sorted(order) == [1] * 6 + [2] * 2 + [3] * 2  # every job once
    assert all(job.status == "succeeded" and job.attempts == 1 for job in jobs)
    # Equal costs: while several users wait, nobody gets two jobs ahead of another.
    for end in range(1, len(order) + 1):
        counts = [min(order[:end].count(user), total) for user, total in ((1, 6), (2, 2), (3, 2))]
        waiting = [c for c, total in zip(counts, (6, 2, 2), strict=True) if c < total]
        if len(waiting) > 1:
            assert max(waiting) - min(waiting) <= 2, order
    # User 1's extra jobs run last, once the others are served.
    assert order[-4:] == [1, 1, 1, 1], order


async def tags(db: Database, user_id: int) -> list[float]:
    async with db.uow() as uow:
        return [job.start_tag or 0.0 for job in await uow.queue.queued_of(user_id)]


async def test_tags_are_fixed_at_submit_a_retry_is_not_charged_twice_and_a_cancel_refunds(
    db: Database,
) -> None:
    first = await add_job(db, user_id=1, cost=2.0, weight=4.0)
    await add_job(db, user_id=1, cost=2.0, weight=4.0)
    assert first.start_tag == 0.0
    assert await tags(db, 1) == [0.0, 0.5]  # each job starts where the last one's share ends
    job, lease = await claim(db, "w1")
    assert (job.id, job.virtual_start) == (first.id, 0.0)
    assert await release(db, lease)  # a clean shutdown gives it back, with its tag
    job, lease = await claim(db, "w2")  # claimed again first: not charged twice
    assert job.id == first.id
    assert await tags(db, 1) == [0.5]
    async with db.uow() as uow:
        assert await uow.queue.finish(lease, JobStatus.CANCELLED, utcnow(), unrun=0.75)
        await uow.commit()
    # Three quarters of the first job's share did not run: the next job moves up by that.
    assert await tags(db, 1) == [pytest.approx(0.125)]


async def test_cancelling_a_waiting_job_moves_its_users_later_jobs_up(db: Database) -> None:
    jobs = [await add_job(db, user_id=1, cost=1.0) for _ in range(3)]
    other = await add_job(db, user_id=2, cost=1.0)
    assert await tags(db, 1) == [0.0, 1.0, 2.0]
    async with db.uow() as uow:
        await uow.queue.request_cancel(jobs[1].id, utcnow())
        await uow.commit()
    assert await tags(db, 1) == [0.0, 1.0]
    assert await tags(db, 2) == [other.start_tag]
    assert (await add_job(db, user_id=1, cost=1.0)).start_tag == 2.0  # not 3.0


async def test_a_refund_never_moves_later_jobs_ahead_of_those_served_meanwhile(
    db: Database,
) -> None:
    """User 1's big job runs while user 2's are served up to tag 110; user 1 then queues four
    more (lifted to 110). Cancelling the big job gives back its share, but those four must not
    drop to 10-40 and run before everyone else."""
    big = await add_job(db, user_id=1, cost=100.0)
    for _ in range(12):
        await add_job(db, user_id=2, cost=10.0)
    _, lease = await claim(db, "w1")
    for _ in range(12):
        await claim(db, "w2")
    later = [await add_job(db, user_id=1, cost=10.0) for _ in range(4)]
    assert [job.start_tag for job in later] == [110.0, 120.0, 130.0, 140.0]
    async with db.uow() as uow:
        assert await uow.queue.finish(lease, JobStatus.CANCELLED, utcnow(), unrun=1.0)
        await uow.commit()
    assert big.start_tag == 0.0
    assert await tags(db, 1) == [110.0, 120.0, 130.0, 140.0]


async def test_a_job_held_back_by_a_retry_does_not_hold_the_level_down(db: Database) -> None:
    """A job waiting out a retry's backoff at tag 0 is not what newcomers join at: they would
    start below the users being served (idle time banked after all)."""
    await add_job(db, user_id=9, cost=1.0, not_before=utcnow() + dt.timedelta(hours=1))
    for _ in range(4):
        await add_job(db, user_id=1, cost=1.0)
    for _ in range(3):
        await claim(db, "w1")
    assert (await add_job(db, user_id=2, cost=1.0)).start_tag == 3.0


async def test_a_returning_user_starts_at_the_level_of_those_waiting(db: Database) -> None:
    for _ in range(3):
        await add_job(db, user_id=1, cost=1.0)
    await claim(db, "w1")
    await claim(db, "w1")  # user 1 has had 2.0 of service; their third job waits at 2.0
    newcomer = await add_job(db, user_id=2, cost=1.0)
    assert newcomer.start_tag == 2.0


async def test_a_job_nobody_serves_does_not_hold_back_the_level_of_other_models(
    db: Database,
) -> None:
    """A job for a model no worker has (removed, or its API's worker down) waits at tag 0;
    another model's newcomer joins at the level its users are served at, not at 0 (it would
    outrank everyone waiting there)."""
    await add_job(db, user_id=9, model_id="unserved", cost=1.0)
    for _ in range(4):
        await add_job(db, user_id=1, cost=1.0)
    for _ in range(3):
        async with db.uow() as uow:
            assert await uow.queue.claim("w", LEASE, utcnow(), model_ids=["embedded"])
            await uow.commit()
    newcomer = await add_job(db, user_id=2, cost=1.0)
    assert newcomer.start_tag == 3.0
    async with db.uow() as uow:
        order = [
            job.user_id for job in await uow.queue.first_waiting(10) if job.model_id == "embedded"
        ]
    assert order == [1, 2]  # user 1's last job (tag 3, older) and then the newcomer


async def test_a_worker_claims_only_jobs_for_the_models_it_has(db: Database) -> None:
    first = await add_job(db, model_id="model-a")
    second = await add_job(db, model_id="model-b")
    async with db.uow() as uow:
        claimed = await uow.queue.claim("w", 60, utcnow(), model_ids=["model-b"])
        assert claimed is not None and claimed[0].id == second.id
        assert await uow.queue.claim("w", 60, utcnow(), model_ids=["model-c"]) is None
        await uow.commit()
    async with db.uow() as uow:
        claimed = await uow.queue.claim("w", 60, utcnow(), model_ids=["model-a", "model-b"])
    assert claimed is not None and claimed[0].id == first.id


async def test_the_first_jobs_of_a_day_finishing_at_once_are_both_counted(db: Database) -> None:
    """Two workers record a user's first two jobs of the day at the same moment: one upsert
    each (an insert made one of them fail)."""
    await add_job(db)
    today = utcnow().date()

    async def charge(images: int) -> None:
        async with db.uow() as uow:
            await uow.usage.charge(1, today, images=images, cost=1.5, gpu_seconds=2.0)
            await uow.commit()

    await asyncio.gather(charge(4), charge(2))
    async with db.uow() as uow:
        usage = await uow.usage.get(1, today)
    assert usage is not None
    assert (usage.jobs, usage.images, usage.cost, usage.gpu_seconds) == (2, 6, 3.0, 4.0)


async def test_reaping_a_job_cancelled_while_its_worker_was_silent_ends_it_cancelled(
    db: Database,
) -> None:
    job = await add_job(db)
    start = utcnow()
    await claim(db, "w", start)
    async with db.uow() as uow:
        await uow.queue.request_cancel(job.id, start)
        assert await uow.queue.reap_expired(start + dt.timedelta(seconds=LEASE + 1)) == []
        await uow.commit()
        ended = await uow.jobs.get(job.id)
    assert ended is not None and ended.status == "cancelled"


async def test_places_past_the_cap_say_so_and_read_no_further(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "PLACE_CAP", 3)
    jobs = [await add_job(db, user_id=n, cost=2.0) for n in range(1, 7)]
    async with db.uow() as uow:
        places = await uow.queue.places(jobs)
    assert [(places[j.id].position, places[j.id].capped) for j in jobs] == [
        (1, False),
        (2, False),
        (3, False),
        (4, False),
        (4, True),
        (4, True),
    ]
    assert places[jobs[3].id].cost_ahead == 6.0


async def test_an_idle_model_joins_the_level_of_the_models_its_worker_serves_with_it(
    db: Database,
) -> None:
    """A worker serves a base model and an upscaler and compares their tags: an upscale after
    an afternoon without any starts where the base model's users are, not hours ahead of
    them. A model on another worker (an image API) moves its own clock and never counts."""
    async with db.uow() as uow:
        for name, models in (("gpu", ["base", "upscaler"]), ("api", ["dall-e-3"])):
            await uow.workers.announce(
                name, host="h", pid=1, device="cpu", models=models, now=utcnow()
            )
        await uow.commit()
    await add_job(db, user_id=1, model_id="upscaler", cost=1.0)
    async with db.uow() as uow:
        assert await uow.queue.claim("gpu", LEASE, utcnow(), model_ids=["base", "upscaler"])
        await uow.commit()
    for _ in range(6):
        await add_job(db, user_id=2, model_id="base", cost=10.0)
    for _ in range(40):
        await add_job(db, user_id=3, model_id="dall-e-3", cost=100.0)
    for _ in range(5):
        async with db.uow() as uow:
            assert await uow.queue.claim("gpu", LEASE, utcnow(), model_ids=["base", "upscaler"])
            await uow.commit()
    for _ in range(40):  # the API's clock runs to 3,900
        async with db.uow() as uow:
            assert await uow.queue.claim("api", LEASE, utcnow(), model_ids=["dall-e-3"])
            await uow.commit()
    upscale = await add_job(db, user_id=4, model_id="upscaler", cost=1.0)
    assert upscale.start_tag == 40.0  # the base model's level, not the upscaler's 0


@pytest.mark.parametrize(
    ("prefer", "bound", "swaps"), [(False, 0.0, 11), (True, 0.0, 6), (True, 2.0, 2)]
)
async def test_a_worker_keeps_to_its_loaded_model_while_within_the_bound(
    db: Database, prefer: bool, bound: float, swaps: int
) -> None:
    """Two users, one model each, six jobs each: the fair order alternates models every job
    (on equal tags, the older first); preferring the loaded model on equal tags halves the
    swaps; within two jobs of the lowest tag it swaps twice, and no job is claimed more than
    the bound (in jobs) past the lowest waiting tag."""
    jobs = []
    for _ in range(6):
        jobs.append(await add_job(db, user_id=1, model_id="model-a"))
        jobs.append(await add_job(db, user_id=2, model_id="model-b"))
    waiting = {job.id: job for job in jobs}
    span = jobs[0].cost / jobs[0].weight
    loaded: str | None = None
    changes, lags = 0, []
    while waiting:
        async with db.uow() as uow:
            claimed = await uow.queue.claim(
                "w",
                LEASE,
                utcnow(),
                model_ids=["model-a", "model-b"],
                prefer=[loaded] if loaded and prefer else [],
                bound=bound * span,
            )
            await uow.commit()
        assert claimed is not None
        job = claimed[0]
        lags.append(job.start_tag - min(w.start_tag for w in waiting.values()))
        del waiting[job.id]
        changes += loaded is not None and job.model_id != loaded
        loaded = job.model_id
    assert changes == swaps
    assert max(lags) <= bound * span + 1e-9
    assert max(lags) > 0 or bound == 0  # it did take a job ahead of its turn
