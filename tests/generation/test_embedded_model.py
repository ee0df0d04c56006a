"""The trained embedded model shipped in the package: it loads offline and obeys prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from generation.embedded import SHIPPED_WEIGHTS
from generation.embedded.adherence import measure, prompts
from generation.embedded.detector import Detection, detect
from generation.events import EventBus
from generation.model_info import ModelInfo
from generation.rendering import grid_key
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind


def test_the_shipped_model_is_a_local_pipeline_with_its_own_defaults(
    trained_model: ModelInfo,
) -> None:
    assert Path(trained_model.path) == SHIPPED_WEIGHTS and trained_model.local
    assert (trained_model.native_width, trained_model.native_height) == (64, 64)
    assert trained_model.default_steps <= 20
    assert trained_model.fixed_size  # text-to-image at 64×64 only; larger comes from upscaling
    assert trained_model.scheduler == "DPMSolverMultistepScheduler"
    weights = sum(path.stat().st_size for path in SHIPPED_WEIGHTS.rglob("*.safetensors"))
    assert weights < 6_000_000  # a few MB inside the package (float16)


def test_held_out_captions_come_out_right(trained_engine: Any, trained_model: ModelInfo) -> None:
    # Colour/shape/background triples the model never saw in training, default steps/guidance.
    result = measure(trained_engine, trained_model, prompts(12, seed=11), seed=11)
    assert result.accuracy["colour"] == 1.0, result.failures
    assert result.accuracy["background"] == 1.0, result.failures
    assert result.accuracy["shape"] >= 11 / 12, result.failures


async def _run(
    sqlite_url: str, tmp_path: Path, engine: Any, model: ModelInfo, requests: list[Any]
) -> tuple[GenerationService, ImageStore, list[Any]]:
    db = Database(sqlite_url)
    await db.upgrade()
    store = ImageStore(tmp_path / "store")
    service = GenerationService(db, model, Limits(max_width=256, max_height=256))
    worker = Worker(db, engine, store, EventBus(), WorkerConfig(worker_id="w"))
    jobs = []
    try:
        for request in requests:
            submission = await (
                request(service, jobs) if callable(request) else service.submit(request)
            )
            assert await worker.run(burst=True) == 1
            jobs.append(await service.job(submission.job.id))
    finally:
        await db.close()
    return service, store, jobs


def _looks(store: ImageStore, key: str) -> Detection:
    with Image.open(store.path(key)) as image:
        return detect(image.convert("RGB").resize((64, 64), Image.Resampling.BOX))


async def test_a_grid_then_a_variation_and_an_upscale_keep_red_on_blue(
    sqlite_url: str, tmp_path: Path, trained_engine: Any, trained_model: ModelInfo
) -> None:
    first = GenerationRequest("a red circle on a blue background", user_id=1, seed=7)

    def vary(service: GenerationService, jobs: list[Any]) -> Any:
        return service.derive(JobKind.VARIATION, jobs[0].job.id, 0, user_id=1, seed=3)

    def upscale(service: GenerationService, jobs: list[Any]) -> Any:
        return service.derive(JobKind.UPSCALE, jobs[0].job.id, 0, user_id=1, seed=4)

    _, store, jobs = await _run(
        sqlite_url, tmp_path, trained_engine, trained_model, [first, vary, upscale]
    )
    grid, variation, upscaled = jobs
    assert [job.job.status for job in jobs] == ["succeeded"] * 3
    with Image.open(store.path(grid_key(grid.job.id, grid.job.attempts))) as picture:
        assert picture.size == (128, 128)
    for image in grid.images + variation.images:
        found = _looks(store, image.path)
        assert (found.colour, found.background, found.shape) == ("red", "blue", "circle"), found
    (big,) = upscaled.images
    with Image.open(store.path(big.path)) as picture:
        assert picture.size == (128, 128)
    found = _looks(store, big.path)
    assert (found.colour, found.background, found.shape) == ("red", "blue", "circle"), found


async def test_vary_region_paints_the_new_prompt_inside_the_region_and_nothing_outside(
    sqlite_url: str, tmp_path: Path, trained_engine: Any, trained_model: ModelInfo
) -> None:
    import numpy as np

    from generation.editing import Edit, region_boxes
    from generation.embedded.detector import nearest_colour

    first = GenerationRequest("a red circle on a blue background", user_id=1, seed=7)
    left = Edit.region(area="left")

    def repaint(index: int) -> Any:
        def call(service: GenerationService, jobs: list[Any]) -> Any:
            return service.derive(
                JobKind.EDIT,
                jobs[0].job.id,
                index,
                user_id=1,
                seed=20 + index,
                edit=left,
                prompt="a red circle on a green background",
            )

        return call

    _, store, jobs = await _run(
        sqlite_url, tmp_path, trained_engine, trained_model, [first, repaint(0), repaint(1)]
    )
    grid, *edits = jobs
    assert [job.job.status for job in jobs] == ["succeeded"] * 3
    ((x0, y0, x1, y1),) = region_boxes(left, 64, 64, 8)
    inside = np.zeros((64, 64), dtype=bool)
    inside[y0:y1, x0:x1] = True
    core = np.zeros((64, 64), dtype=bool)
    core[y0:y1, x0 : x1 - 4] = True  # clear of the band where the new blends into the old
    greens = 0
    for edit in edits:
        with Image.open(store.path(grid.images[edit.job.parent_image_index].path)) as old:
            before = np.asarray(old.convert("RGB"), dtype=np.int16)
        for image in edit.images:
            with Image.open(store.path(image.path)) as made:
                after = np.asarray(made.convert("RGB"), dtype=np.int16)
            assert (after[~inside] == before[~inside]).all(), "outside: the parent's pixels"
            greens += nearest_colour(np.median(after[core], axis=0)) == "green"
    samples = sum(len(edit.images) for edit in edits)
    print(f"Vary (Region): green inside the left half on {greens} of {samples} images")
    assert samples == 8 and greens >= 6
