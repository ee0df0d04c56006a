"""The worker: jobs run once, leases fence late workers, cancels stop at the next step."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import pytest
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError

from generation.engine import DiffusersEngine, RenderSpec
from generation.events import EventBus, JobCancelled, JobClaimed, JobProgress, JobSucceeded
from generation.imaging import pixel_sha256, read_recipe
from generation.requests import GenerationRequest
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind, QueueFlow, utcnow


def make_worker(
    db: Database,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
    name: str,
    **config: Any,
) -> Worker:
    return Worker(db, engine, store, events, WorkerConfig(worker_id=name, **config))


async def submit(service: GenerationService, **options: object) -> int:
    request = GenerationRequest(
        **{"prompt": "a red circle", "user_id": 1, "seed": 7, "steps": 4, **options}
    )  # type: ignore[arg-type]
    return (await service.submit(request)).job.id


async def test_a_job_runs_once_and_records_images_usage_and_runtime(
    db: Database,
    service: GenerationService,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
) -> None:
    job_id = await submit(service)
    worker = make_worker(db, engine, store, events, "w1", preview_interval=0.0)
    async with events.subscribe() as queue:
        assert await worker.run(burst=True) == 1
        seen = [queue.get_nowait() for _ in range(queue.qsize())]
    view = await service.job(job_id)
    job = view.job
    assert (job.status, job.attempts, job.device_kind, job.dtype, job.torch_threads) == (
        "succeeded",
        1,
        "cpu",
        "float32",
        1,
    )
    assert job.library_versions["torch"] and job.gpu_seconds and job.gpu_seconds > 0
    assert [(image.index, image.seed) for image in view.images] == [(i, 7 + i) for i in range(4)]
    for image in view.images:
        with Image.open(store.path(image.path)) as png:
            assert pixel_sha256(png) == image.sha256
        recipe = read_recipe(store.get(image.path))
        assert (recipe["job_id"], recipe["image_seed"], recipe["steps"]) == (job_id, image.seed, 4)
    grid = store.path(f"images/{job_id}/1/{job_id}-grid.png")
    with Image.open(grid) as png:
        assert png.size == (128, 128)
    assert isinstance(seen[0], JobClaimed)
    progress = [event for event in seen if isinstance(event, JobProgress)]
    assert [event.step for event in progress] == [1, 2, 3, 4]
    assert progress[0].preview_png is not None
    assert isinstance(seen[-1], JobSucceeded)
    async with db.uow() as uow:
        usage = await uow.usage.get(1, utcnow().date())
    assert usage is not None and (usage.jobs, usage.images) == (1, 4)
    assert usage.cost == job.cost


async def test_a_dead_workers_job_is_finished_by_the_next_worker_exactly_once(
    db: Database,
    service: GenerationService,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
) -> None:
    job_id = await submit(service)
    dead = make_worker(db, engine, store, events, "dead", lease_seconds=30)
    claimed = await dead.claim()  # it claims, then its process dies before finishing
    assert claimed is not None
    db.clock_offset = dt.timedelta(seconds=31)  # the database's clock passes the lease
    live = make_worker(db, engine, store, events, "live", lease_seconds=30)
    assert await live.run(burst=True) == 1
    view = await service.job(job_id)
    assert (view.job.status, view.job.attempts) == ("succeeded", 2)
    assert {image.path.split("/")[2] for image in view.images} == {"2"}

    # The dead worker comes back and finishes its stale attempt: refused, nothing written.
    job, lease = claimed
    assert await dead.execute(job, lease) is None
    after = await service.job(job_id)
    assert after.images == view.images
    assert not store.exists(f"images/{job_id}/1")
    async with db.uow() as uow:
        usage = await uow.usage.get(1, utcnow().date())
    assert usage is not None and usage.jobs == 1


async def test_a_restarted_worker_picks_up_queued_and_interrupted_jobs(
    db: Database,
    service: GenerationService,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
) -> None:
    interrupted = await submit(service)
    waiting = await submit(service, seed=8)
    crashed = make_worker(db, engine, store, events, "crashed", lease_seconds=10)
    assert await crashed.claim() is not None
    db.clock_offset = dt.timedelta(seconds=11)
    restarted = make_worker(db, engine, store, events, "restarted")
    assert await restarted.run(burst=True) == 2
    for job_id in (interrupted, waiting):
        assert (await service.job(job_id)).job.status == "succeeded"


async def test_leases_go_by_the_databases_clock_not_the_hosts(
    db: Database,
    service: GenerationService,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker on a host whose clock runs an hour fast must not take a job whose lease is
    still held on the database's clock (it did when leases were set on each host's clock)."""
    job_id = await submit(service)
    holder = make_worker(db, engine, store, events, "holder", lease_seconds=30)
    assert await holder.claim() is not None
    fast = utcnow() + dt.timedelta(hours=1)
    monkeypatch.setattr("storage.models.utcnow", lambda: fast)
    monkeypatch.setattr("generation.service.utcnow", lambda: fast, raising=False)
    other = make_worker(db, engine, store, events, "fast-clock", lease_seconds=30)
    assert await other.claim() is None
    assert (await service.job(job_id)).job.lease_owner == "holder"


async def test_cancel_stops_a_running_job_at_the_next_step(
    db: Database,
    service: GenerationService,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = await submit(service, steps=40, count=1)
    worker = make_worker(db, engine, store, events, "w1", heartbeat_interval=0.05)
    # The render waits at step 3 until the cancel is asked: on a busy machine a 40-step job
    # could otherwise finish before the test's loop got to ask.
    gate, render = threading.Event(), engine.render

    def gated(spec: Any, on_step: Any = None) -> Any:
        def step(progress: Any) -> None:
            if progress.step == 3:
                gate.wait(30)
            if on_step is not None:
                on_step(progress)

        return render(spec, step)

    monkeypatch.setattr(engine, "render", gated)
    seen = []
    async with events.subscribe() as queue:
        task = asyncio.create_task(worker.run_once())
        while not (
            isinstance(event := await asyncio.wait_for(queue.get(), 30), JobProgress)
            and event.step == 2
        ):
            seen.append(event)
        seen.append(event)
        await service.cancel(job_id, user_id=1)
        await asyncio.sleep(0.5)  # ten heartbeats: the run has heard of the cancel
        gate.set()
        await asyncio.wait_for(task, 30)
        seen += [queue.get_nowait() for _ in range(queue.qsize())]
    view = await service.job(job_id)
    assert view.job.status == "cancelled"
    assert view.images == []
    assert isinstance(seen[-1], JobCancelled)
    last_step = max(event.step for event in seen if isinstance(event, JobProgress))
    assert last_step < 40
    async with db.uow() as uow:
        assert await uow.usage.get(1, utcnow().date()) is None  # not charged
        flow = await uow.session.get(QueueFlow, (1, view.job.model_id))
        assert flow is not None
        finish = flow.finish_tag
    # The job's whole share was on the user's flow from its submit; the steps that never ran
    # came back: their next job starts only as much later as the part that ran.
    assert view.job.start_tag is not None
    ran = finish - view.job.start_tag
    assert 0 < ran <= view.job.cost * (last_step + 1) / 40


class _BrokenEngine:
    def __init__(self, engine: DiffusersEngine) -> None:
        self.model = engine.model
        self.models = engine.models
        self.runtime = engine.runtime

    async def render_async(self, spec: RenderSpec, on_step: object = None) -> list[Image.Image]:
        raise RuntimeError("CUDA out of memory")


async def test_a_failing_render_is_recorded_with_its_error(
    db: Database,
    service: GenerationService,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
) -> None:
    job_id = await submit(service)
    worker = Worker(db, _BrokenEngine(engine), store, events, WorkerConfig(worker_id="w1"))
    await worker.run(burst=True)
    job = (await service.job(job_id)).job
    assert job.status == "failed"
    assert job.error == "RuntimeError: CUDA out of memory"


async def test_variation_and_upscale_start_from_the_chosen_image(
    db: Database,
    service: GenerationService,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
) -> None:
    parent = await submit(service)
    worker = make_worker(db, engine, store, events, "w1")
    await worker.run(burst=True)
    upscale = await service.derive(JobKind.UPSCALE, parent, 2, user_id=1, seed=11)
    variation = await service.derive(JobKind.VARIATION, parent, 1, user_id=1, seed=12)
    reroll = await service.derive(JobKind.REROLL, parent, None, user_id=1, seed=13)
    assert await worker.run(burst=True) == 3
    up = await service.job(upscale.job.id)
    assert (up.job.kind, up.job.parent_job_id, up.job.parent_image_index) == ("upscale", parent, 2)
    assert [(image.width, image.height) for image in up.images] == [(128, 128)]
    var = await service.job(variation.job.id)
    assert (var.job.strength, len(var.images)) == (0.6, 4)
    rer = await service.job(reroll.job.id)
    assert (rer.job.kind, rer.job.strength, rer.job.seed) == ("reroll", None, 13)


async def test_overlapped_completion_records_every_job_once_and_in_full(
    db: Database,
    service: GenerationService,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
) -> None:
    job_ids = [await submit(service, seed=seed, count=2) for seed in (1, 2, 3)]
    worker = make_worker(db, engine, store, events, "w1", overlap_completion=True)
    async with events.subscribe() as queue:
        assert await worker.run(burst=True) == 3
        seen = [queue.get_nowait() for _ in range(queue.qsize())]
    for job_id in job_ids:
        view = await service.job(job_id)
        assert view.job.status == "succeeded"
        assert [image.index for image in view.images] == [0, 1]
    assert sorted(e.job_id for e in seen if isinstance(e, JobSucceeded)) == job_ids


async def test_a_worker_rides_out_an_unreachable_database(
    engine: DiffusersEngine, store: ImageStore, events: EventBus
) -> None:
    unreachable = Database("postgresql+asyncpg://postgres@127.0.0.1:9/imagine")
    worker = Worker(unreachable, engine, store, events, WorkerConfig(poll_interval=0.05))
    try:
        with pytest.raises((SQLAlchemyError, OSError)):
            await worker.run(burst=True)  # burst mode reports the failure
        task = asyncio.create_task(worker.run())  # a long-running worker keeps retrying
        await asyncio.sleep(0.3)
        assert not task.done()
        worker.stop()
        assert await asyncio.wait_for(task, 5) == 0
    finally:
        await unreachable.close()


async def test_a_worker_announces_itself_and_says_what_it_is_doing(
    db: Database,
    service: GenerationService,
    engine: DiffusersEngine,
    store: ImageStore,
    events: EventBus,
) -> None:
    await submit(service)
    worker = make_worker(db, engine, store, events, "w-announced")
    assert await worker.run(burst=True) == 1
    async with db.uow() as uow:
        rows = await uow.workers.all()
    assert [(r.id, r.device, r.models["ids"], r.state, r.current_job_id) for r in rows] == [
        ("w-announced", "cpu", list(engine.models), "stopped", None)
    ]
