"""The worker through faults: a database that goes away (through the fault proxy), a store
that fails for a while, a safety checker that raises, a render that hangs, an image API whose
key died. Each ends one job at most, never the worker."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy.exc import DBAPIError

from generation.engine import DiffusersEngine, RenderSpec
from generation.errors import RenderHung
from generation.events import EventBus, JobEvent, JobFailed, JobProgress, JobSucceeded
from generation.model_info import ModelInfo
from generation.openai_engine import EngineSet, OpenAIEngine, describe_api_model
from generation.reaper import Reaper
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind
from storage.queue import LEASE_EXPIRED_ERROR
from storage.repositories import ImageRepository
from storage.unit_of_work import UnitOfWork
from tests.fakeopenai import FakeImagesAPI
from tests.faultproxy import FaultProxy


async def submit(service: GenerationService, **options: Any) -> int:
    request = GenerationRequest(**{"prompt": "a red circle", "user_id": 1, "seed": 7, **options})
    return (await service.submit(request)).job.id


def worker(db: Database, engine: Any, store: ImageStore, events: EventBus, **config: Any) -> Worker:
    settings = {"worker_id": "w", "poll_interval": 0.05, "heartbeat_interval": 0.2, **config}
    return Worker(db, engine, store, events, WorkerConfig(**settings))


async def until(check: Any, seconds: float = 60, what: str = "a condition") -> Any:
    deadline = time.monotonic() + seconds
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return result


@pytest.fixture
async def proxied(postgres_url: str) -> AsyncIterator[tuple[FaultProxy, Database]]:
    """PostgreSQL reached through the fault proxy."""
    async with FaultProxy("127.0.0.1", 5432) as proxy:
        database = Database(proxy.url(postgres_url))
        yield proxy, database
        proxy.refuse(0)
        await database.close()


class Slow:
    """The real engine, each step taking at least ``seconds``: time for a fault mid-render."""

    def __init__(self, engine: DiffusersEngine, seconds: float) -> None:
        self._engine = engine
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def render_async(self, spec: RenderSpec, on_step: Any = None) -> list[Image.Image]:
        def slowed(progress: Any) -> None:
            time.sleep(self._seconds)
            if on_step is not None:
                on_step(progress)

        return await self._engine.render_async(spec, slowed)


async def _outage_mid_render(
    proxied: tuple[FaultProxy, Database],
    model: ModelInfo,
    engine: DiffusersEngine,
    tmp_path: Path,
    *,
    lease: float,
    outage: float,
) -> tuple[GenerationService, int, JobEvent]:
    """A job rendering on a worker whose database goes away for ``outage`` seconds once its
    first step is out; the job, and how it ended. The worker's loop must live through it."""
    proxy, db = proxied
    store, events = ImageStore(tmp_path / "store"), EventBus()
    service = GenerationService(db, model, Limits())
    job_id = await submit(service, steps=40)
    running = worker(db, Slow(engine, 0.1), store, events, lease_seconds=lease)
    async with events.subscribe() as seen:
        task = asyncio.create_task(running.run())
        while not isinstance(await seen.get(), JobProgress):
            pass
        proxy.outage(outage)
        done = await asyncio.wait_for(_first(seen, JobSucceeded, JobFailed), 120)
    assert not task.done(), "the worker's loop survived the outage"
    running.stop()
    await asyncio.wait_for(task, 30)
    assert proxy.refused > 0, "the outage did meet the worker"
    return service, job_id, done


@pytest.mark.postgres
async def test_a_database_outage_mid_render_is_ridden_out_and_the_job_finishes_once(
    proxied: tuple[FaultProxy, Database], model: ModelInfo, engine: DiffusersEngine, tmp_path: Path
) -> None:
    # Renewals fail for 3 s, less than the 8 s lease.
    service, job_id, done = await _outage_mid_render(
        proxied, model, engine, tmp_path, lease=8, outage=3
    )
    assert isinstance(done, JobSucceeded) and done.job_id == job_id
    job = (await service.job(job_id)).job
    assert (job.status, job.attempts) == ("succeeded", 1)


@pytest.mark.postgres
async def test_an_outage_longer_than_the_lease_costs_an_attempt_and_the_worker_goes_on(
    proxied: tuple[FaultProxy, Database], model: ModelInfo, engine: DiffusersEngine, tmp_path: Path
) -> None:
    # Longer than the lease: this worker must let the job go; another attempt finishes it.
    service, job_id, done = await _outage_mid_render(
        proxied, model, engine, tmp_path, lease=2, outage=3.5
    )
    assert isinstance(done, JobSucceeded)
    job = (await service.job(job_id)).job
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert {image.path.split("/")[2] for image in (await service.job(job_id)).images} == {"2"}


class FlakyStore(ImageStore):
    """An image store whose writes fail (an S3 503, a full disk) until ``heals_at``."""

    def __init__(self, root: Path, failing_for: float) -> None:
        super().__init__(root)
        self.heals_at = time.monotonic() + failing_for
        self.failures = 0

    def put(self, key: str, data: bytes) -> str:
        if time.monotonic() < self.heals_at:
            self.failures += 1
            raise OSError(28, "No space left on device")
        return super().put(key, data)


async def test_a_store_that_fails_for_a_while_is_retried_while_the_lease_holds(
    db: Database, model: ModelInfo, engine: DiffusersEngine, tmp_path: Path
) -> None:
    service = GenerationService(db, model, Limits())
    job_id = await submit(service, steps=2)
    store = FlakyStore(tmp_path / "store", failing_for=1.5)
    assert await worker(db, engine, store, EventBus(), lease_seconds=10).run(burst=True) == 1
    view = await service.job(job_id)
    assert (view.job.status, view.job.attempts) == ("succeeded", 1)
    assert store.failures >= 2 and all(store.exists(image.path) for image in view.images)


class RaisingChecker:
    """A host's own safety checker, as the README describes one: ``scores`` only (no name)."""

    def scores(self, image: Image.Image) -> dict[str, float]:
        if image.getpixel((0, 0)) is not None:
            raise RuntimeError("the classifier's model file is corrupt")
        return {}


class QuietChecker:
    def scores(self, image: Image.Image) -> dict[str, float]:
        return {"EXPOSED": 0.0}


async def test_a_safety_checker_needs_only_scores_and_one_that_raises_flags_for_review(
    db: Database, model: ModelInfo, engine: DiffusersEngine, store: ImageStore
) -> None:
    service = GenerationService(db, model, Limits())
    calm = await submit(service, steps=2, count=1)
    ok = Worker(db, engine, store, EventBus(), WorkerConfig(), checker=QuietChecker())
    assert await ok.run(burst=True) == 1
    assert [i.review for i in (await service.job(calm)).images] == [None]

    broken = await submit(service, steps=2, count=2, seed=9)
    failing = Worker(db, engine, store, EventBus(), WorkerConfig(), checker=RaisingChecker())
    assert await failing.run(burst=True) == 1, "the worker went on"
    view = await service.job(broken)
    assert view.job.status == "succeeded"
    assert [i.review for i in view.images] == ["pending", "pending"], "held for review"
    assert "corrupt" in view.images[0].flags["safety_error"]
    async with db.uow() as uow:
        events = await uow.events.for_job(broken)
    assert [e.kind for e in events] == ["image_flagged"] * 2
    assert events[0].reason.startswith("the safety check (RaisingChecker) could not run")


class Hanging:
    """The real engine, except that renders never make a step (a driver hang)."""

    def __init__(self, engine: DiffusersEngine) -> None:
        self._engine = engine
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def render_async(self, spec: RenderSpec, on_step: Any = None) -> list[Image.Image]:
        return await asyncio.to_thread(self._hang)

    def _hang(self) -> list[Image.Image]:
        self.release.wait(30)
        raise RuntimeError("released at the end of the test")


@pytest.mark.parametrize("max_attempts", [1, 3])
async def test_a_hung_render_is_abandoned_its_attempt_counted_and_the_worker_ends(
    db: Database, model: ModelInfo, engine: DiffusersEngine, store: ImageStore, max_attempts: int
) -> None:
    service = GenerationService(db, model, Limits(), max_attempts=max_attempts)
    job_id = await submit(service)
    hanging, events = Hanging(engine), EventBus()
    try:
        async with events.subscribe() as seen:
            started = time.monotonic()
            with pytest.raises(RenderHung):
                await worker(db, hanging, store, events, hang_seconds=1.0).run()
            took = time.monotonic() - started
            told = [e for e in _drain(seen) if isinstance(e, JobFailed)]
    finally:
        hanging.release.set()
    assert took < 10
    job = (await service.job(job_id)).job
    assert job.attempts == 1
    if max_attempts == 1:
        assert job.status == "failed"
        assert job.error == "it hung: no progress for 1 s, with no attempt left"
        assert [e.job_id for e in told] == [job_id], "its user is told"
    else:
        assert (job.status, job.error) == ("queued", "it hung: no progress for 1 s")
        assert job.not_before is not None and told == []


async def test_a_dead_api_key_pauses_only_the_api_and_its_job_fails_after_the_give_up(
    db: Database, model: ModelInfo, engine: DiffusersEngine, store: ImageStore
) -> None:
    async with FakeImagesAPI() as api:
        api.kill_key()
        api_model = describe_api_model("dall-e-2")
        service = GenerationService(db, model, Limits(), store=store, more_models=[api_model])
        both = EngineSet(engine, OpenAIEngine(["dall-e-2"], api_key="sk", base_url=api.base_url))
        stuck = await submit(service, model="dall-e-2", user_id=2)
        local = [await submit(service, steps=2, seed=s) for s in (1, 2, 3)]
        events = EventBus()
        running = worker(db, both, store, events, api_give_up_seconds=2.0)
        async with events.subscribe() as seen:
            task = asyncio.create_task(running.run())
            done = [await asyncio.wait_for(_first(seen, JobSucceeded), 60) for _ in local]
            failed = await asyncio.wait_for(_first(seen, JobFailed), 90)
        running.stop()
        await asyncio.wait_for(task, 30)
    assert sorted(e.job_id for e in done) == local, "the GPU kept making images"
    assert failed.job_id == stuck
    job = (await service.job(stuck)).job
    assert job.status == "failed"
    assert job.error.startswith("the image service could not take it for")  # type: ignore[union-attr]
    assert "API key" in job.error or "IMAGINE_OPENAI_API_KEY" in job.error  # type: ignore[operator]


async def test_the_reaper_requeues_or_fails_expired_leases_and_tells_the_users(
    db: Database, model: ModelInfo, engine: DiffusersEngine, store: ImageStore
) -> None:
    service = GenerationService(db, model, Limits(), max_attempts=1)
    job_id = await submit(service)
    assert await worker(db, engine, store, EventBus(), lease_seconds=5).claim() is not None
    events = EventBus()
    reaper = Reaper(db, events, interval=0.05)
    async with events.subscribe() as seen:
        task = asyncio.create_task(reaper.run())
        db.clock_offset = dt.timedelta(seconds=6)
        failed = await asyncio.wait_for(_first(seen, JobFailed), 10)
        task.cancel()
    assert (failed.job_id, failed.error) == (job_id, LEASE_EXPIRED_ERROR)
    assert (await service.job(job_id)).job.status == "failed"


async def _first(seen: asyncio.Queue[JobEvent], *kinds: type[JobEvent]) -> Any:
    while not isinstance(event := await seen.get(), kinds):
        pass
    return event


def _drain(seen: asyncio.Queue[JobEvent]) -> list[JobEvent]:
    return [seen.get_nowait() for _ in range(seen.qsize())]


@pytest.mark.postgres
async def test_a_hang_during_a_database_outage_still_ends_the_worker(
    proxied: tuple[FaultProxy, Database], model: ModelInfo, engine: DiffusersEngine, tmp_path: Path
) -> None:
    """Nothing can be recorded, but the stuck thread must go all the same: the lease runs out
    and the job comes back (it once went on with the thread stuck)."""
    proxy, db = proxied
    service = GenerationService(db, model, Limits())
    await submit(service)
    hanging = Hanging(engine)
    running = worker(db, hanging, ImageStore(tmp_path / "store"), EventBus(), hang_seconds=1.5)
    try:
        task = asyncio.create_task(running.run())
        await until(lambda: _running(db), what="the claim")
        proxy.outage(30)
        with pytest.raises(RenderHung) as hung:
            await asyncio.wait_for(task, 30)
        assert hung.value.status is None, "nothing could be recorded"
    finally:
        hanging.release.set()
        proxy.refuse(0)


async def _running(db: Database) -> bool:
    async with db.uow() as uow:
        return bool(await uow.queue.running())


async def test_a_missing_start_image_fails_its_job_at_once_and_the_worker_goes_on(
    db: Database, model: ModelInfo, engine: DiffusersEngine, store: ImageStore
) -> None:
    """A moderator deleted the parent's images while a variation waited: FileNotFoundError is
    no passing fault (it was retried while the lease held, the job 'running' for ever)."""
    service = GenerationService(db, model, Limits())
    parent = await submit(service, steps=2)
    assert await worker(db, engine, store, EventBus()).run(burst=True) == 1
    varied = (await service.derive(JobKind.VARIATION, parent, 0, user_id=1)).job.id
    store.delete_tree(f"images/{parent}")
    started = time.monotonic()
    assert await worker(db, engine, store, EventBus(), lease_seconds=30).run(burst=True) == 1
    assert time.monotonic() - started < 10
    job = (await service.job(varied)).job
    assert job.status == "failed" and "FileNotFoundError" in (job.error or "")


async def test_a_completion_whose_answer_was_lost_keeps_its_files(
    db: Database,
    model: ModelInfo,
    engine: DiffusersEngine,
    store: ImageStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commit went through but the connection dropped before its answer: the job is done,
    and its files must not be taken for a lost attempt's (they once were deleted)."""
    service = GenerationService(db, model, Limits())
    job_id = await submit(service, steps=2)
    original_commit, original_add = UnitOfWork.commit, ImageRepository.add_many
    lost = []

    async def add_many(self: ImageRepository, job: int, images: Any) -> None:
        self._session.info["completing"] = True
        await original_add(self, job, images)

    async def commit_then_drop(self: UnitOfWork) -> None:
        await original_commit(self)
        if self.session.info.pop("completing", False) and not lost:
            lost.append(True)
            await asyncio.sleep(0.5)  # the lease keeper sees the lease gone meanwhile
            dropped = Exception("connection lost")
            raise DBAPIError("COMMIT", {}, dropped, connection_invalidated=True)

    monkeypatch.setattr(ImageRepository, "add_many", add_many)
    monkeypatch.setattr(UnitOfWork, "commit", commit_then_drop)
    events = EventBus()
    async with events.subscribe() as seen:
        assert await worker(db, engine, store, events).run(burst=True) == 1
        told = [e for e in _drain(seen) if isinstance(e, JobSucceeded)]
    view = await service.job(job_id)
    assert lost and view.job.status == "succeeded"
    assert all(store.exists(image.path) for image in view.images), "the files are there"
    assert [e.job_id for e in told] == [job_id]


class SlowApi:
    """An image API engine whose answers take ``seconds`` (slow, not hung)."""

    def __init__(self, seconds: float, call_seconds: float = 0.0) -> None:
        info = describe_api_model("dall-e-2")
        self.model, self.models = info, {info.model_id: info}
        self.runtime = OpenAIEngine(["dall-e-2"], api_key="sk").runtime
        self.seconds, self.call_seconds = seconds, call_seconds
        self.calls = 0

    async def render_async(self, spec: RenderSpec, on_step: Any = None) -> list[Image.Image]:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        return [Image.new("RGB", (spec.width, spec.height), "red") for _ in spec.seeds]


async def test_a_slow_image_api_is_given_its_clients_time_and_never_ends_the_process(
    db: Database, store: ImageStore
) -> None:
    """An API call shows no progress until it answers: a hang there only cancels the call
    (a coroutine), never the process; and the engine's own timeouts bound the watch."""
    api = describe_api_model("dall-e-2")
    service = GenerationService(db, api, Limits(), store=store)
    job_id = await submit(service, model="dall-e-2", count=1)
    impatient = SlowApi(seconds=3.0)
    running = worker(db, impatient, store, EventBus(), hang_seconds=1.0)
    task = asyncio.create_task(running.run())
    await until(lambda: _error_is(service, job_id), 30, "the call cut off")
    assert not task.done(), "the worker went on: no RenderHung for a coroutine"
    running.stop()
    await asyncio.wait_for(task, 30)

    db.clock_offset = dt.timedelta(minutes=5)  # past the job's backoff
    patient = SlowApi(seconds=1.5, call_seconds=10.0)
    assert await worker(db, patient, store, EventBus(), hang_seconds=1.0).run(burst=True) == 1
    assert (await service.job(job_id)).job.status == "succeeded"


async def _error_is(service: GenerationService, job_id: int) -> bool:
    job = (await service.job(job_id)).job
    return job.status == "queued" and "did not answer for 1 s" in (job.error or "")


async def test_a_fresh_worker_takes_its_hang_budget_from_the_jobs_done_before(
    db: Database, model: ModelInfo, engine: DiffusersEngine, store: ImageStore
) -> None:
    service = GenerationService(db, model, Limits())
    await submit(service, steps=4)
    assert await worker(db, engine, store, EventBus()).run(burst=True) == 1
    async with db.uow() as uow:
        per_cost = await uow.queue.seconds_per_cost()
    assert per_cost is not None
    fresh = worker(db, engine, store, EventBus(), hang_seconds=0.001)
    await fresh._measured()
    heavy = (await service.job(await submit(service, steps=40))).job
    assert fresh._budget(heavy) == pytest.approx(5 * heavy.cost * per_cost)


class HangOnFirst:
    """A safety checker whose first check never answers (a deadlocked classifier)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def scores(self, image: Image.Image) -> dict[str, float]:
        self.calls += 1
        if self.calls == 1:
            self.release.wait(30)
        return {}


async def test_with_overlap_a_hung_completion_lets_the_next_rendered_job_go(
    db: Database, model: ModelInfo, engine: DiffusersEngine, store: ImageStore
) -> None:
    service = GenerationService(db, model, Limits())
    first, second = await submit(service, steps=2), await submit(service, steps=2, user_id=2)
    checker = HangOnFirst()
    config = WorkerConfig(
        worker_id="w", poll_interval=0.05, hang_seconds=1.5, overlap_completion=True
    )
    running = Worker(db, engine, store, EventBus(), config, checker=checker)
    try:
        with pytest.raises(RenderHung):
            await asyncio.wait_for(running.run(), 60)
    finally:
        checker.release.set()
    jobs = {j: (await service.job(j)).job for j in (first, second)}
    assert jobs[first].status == "queued" and jobs[first].error
    assert (jobs[second].status, jobs[second].lease_owner) == ("queued", None), "let go"
    async with db.uow() as uow:
        assert await uow.queue.running() == []


class BlockingStore(ImageStore):
    """A store whose writes wait until ``opened`` is set (a store that stopped answering)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opened = threading.Event()

    def put(self, key: str, data: bytes) -> str:
        self.opened.wait(30)
        return super().put(key, data)


async def test_a_stop_past_its_grace_puts_the_completion_in_flight_back(
    db: Database, model: ModelInfo, engine: DiffusersEngine, tmp_path: Path
) -> None:
    """With overlapped completion, a worker cancelled (SIGTERM past its grace) once awaited the
    previous job's completion for as long as it took."""
    service = GenerationService(db, model, Limits())
    job_id = await submit(service, steps=2)
    store = BlockingStore(tmp_path / "store")
    running = worker(db, engine, store, EventBus(), overlap_completion=True)
    task = asyncio.create_task(running.run())
    try:
        await until(lambda: _running(db), what="the claim")
        await asyncio.sleep(1.0)  # rendered; its files wait on the store
        started = time.monotonic()
        running.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
        assert time.monotonic() - started < 8
    finally:
        store.opened.set()
    job = (await service.job(job_id)).job
    assert (job.status, job.attempts, job.lease_owner) == ("queued", 0, None)
