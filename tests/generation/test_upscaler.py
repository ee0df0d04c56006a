"""U1–U4 with a diffusion upscaler the host configured: its own weights, recorded in the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.engine import DiffusersEngine, RenderSpec
from generation.events import EventBus, JobProgress
from generation.model_info import ModelInfo, describe_model
from generation.reproduce import reproduce
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind
from tests.generation.tiny_upscaler import build_tiny_upscaler


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> ModelInfo:
    folder = build_tiny_upscaler(tmp_path_factory.mktemp("upscaler") / "tiny-x4")
    return describe_model(str(folder), models_dir)


@pytest.fixture(scope="module")
def engine_with_upscaler(model: ModelInfo, upscaler: ModelInfo) -> DiffusersEngine:
    return DiffusersEngine(model, device="cpu", dtype="float32", torch_threads=1, upscaler=upscaler)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_upscale_runs_the_configured_upscaler_and_reproduces(
    db: Database,
    model: ModelInfo,
    upscaler: ModelInfo,
    engine_with_upscaler: DiffusersEngine,
    store: ImageStore,
    limits: Limits,
) -> None:
    engine = engine_with_upscaler
    service = GenerationService(db, model, limits, upscaler=upscaler)
    worker = Worker(db, engine, store, EventBus(), WorkerConfig())
    parent = await service.submit(GenerationRequest("a red circle", user_id=1, seed=5, steps=3))
    await worker.run(burst=True)
    submission = await service.derive(JobKind.UPSCALE, parent.job.id, 1, user_id=1, seed=9)
    job = submission.job
    assert (job.model_id, job.model_revision) == (upscaler.model_id, upscaler.revision)
    assert (job.scheduler, job.steps, job.width, job.height) == ("DDIMScheduler", 25, 128, 128)

    async with worker.events.subscribe() as queue:
        await worker.run(burst=True)
        events = [queue.get_nowait() for _ in range(queue.qsize())]
        steps = [event.step for event in events if isinstance(event, JobProgress)]
    view = await service.job(job.id)
    assert view.job.status == "succeeded", view.job.error
    assert [(image.width, image.height) for image in view.images] == [(128, 128)]
    assert steps == list(range(1, 26))
    assert engine.upscaler.unet is not engine.txt2img.unet
    report = await reproduce(db, engine, store, job.id)
    assert report.identical
    assert report.differences == []


async def test_a_worker_without_the_jobs_model_fails_it_with_a_clear_reason(
    engine: DiffusersEngine,
) -> None:
    spec = RenderSpec("x", "", (1,), 2, 3.0, 64, 64, "DDIMScheduler", model_id="some/other-model")
    with pytest.raises(
        ValueError, match="needs model 'some/other-model'; this worker has embedded"
    ):
        engine.render(spec)
