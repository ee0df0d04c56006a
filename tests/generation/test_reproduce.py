"""reproduce re-runs a stored recipe and says whether the bytes match."""

from __future__ import annotations

from generation.engine import DiffusersEngine
from generation.events import EventBus
from generation.reproduce import reproduce
from generation.requests import GenerationRequest
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind


async def finished_job(service: GenerationService, worker: Worker) -> int:
    submission = await service.submit(
        GenerationRequest(
            "a green triangle on black", user_id=1, seed=123, steps=5, negative_prompt="blurry"
        )
    )
    await worker.run(burst=True)
    return submission.job.id


async def test_reproduce_of_a_finished_job_is_bit_identical(
    db: Database, service: GenerationService, engine: DiffusersEngine, store: ImageStore
) -> None:
    worker = Worker(db, engine, store, EventBus(), WorkerConfig())
    job_id = await finished_job(service, worker)
    report = await reproduce(db, engine, store, job_id)
    assert report.identical
    assert [image.seed for image in report.images] == [123, 124, 125, 126]
    assert report.differences == []


async def test_a_tampered_recipe_is_reported_as_different(
    db: Database, service: GenerationService, engine: DiffusersEngine, store: ImageStore
) -> None:
    worker = Worker(db, engine, store, EventBus(), WorkerConfig())
    job_id = await finished_job(service, worker)
    async with db.uow() as uow:
        await uow.jobs.update_recipe(job_id, prompt="a purple square on white")
        await uow.commit()
    report = await reproduce(db, engine, store, job_id)
    assert not report.identical
    assert not any(image.identical for image in report.images)


async def test_derived_jobs_reproduce_from_their_parent_image(
    db: Database, service: GenerationService, engine: DiffusersEngine, store: ImageStore
) -> None:
    worker = Worker(db, engine, store, EventBus(), WorkerConfig())
    parent = await finished_job(service, worker)
    upscale = await service.derive(JobKind.UPSCALE, parent, 3, user_id=1)
    variation = await service.derive(JobKind.VARIATION, parent, 0, user_id=1)
    await worker.run(burst=True)
    for job_id in (upscale.job.id, variation.job.id):
        report = await reproduce(db, engine, store, job_id)
        assert report.identical, job_id


async def test_reproduce_names_what_differs_from_the_run_it_repeats(
    db: Database, service: GenerationService, engine: DiffusersEngine, store: ImageStore
) -> None:
    worker = Worker(db, engine, store, EventBus(), WorkerConfig())
    job_id = await finished_job(service, worker)
    async with db.uow() as uow:
        await uow.jobs.update_recipe(
            job_id, torch_threads=2, library_versions={"torch": "2.4.0", "diffusers": "0.30.0"}
        )
        await uow.commit()
    report = await reproduce(db, engine, store, job_id)
    assert not any(note.startswith("torch threads") for note in report.differences)
    assert any(note.startswith("torch: ran with 2.4.0") for note in report.differences)
