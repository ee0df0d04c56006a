"""Several models on one engine: loaded when a job needs them, kept to a budget of parameter
bytes (least recently used first; to CPU RAM while there is room), sharing their weights
between text-to-image, image-to-image and inpainting."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.engine import DiffusersEngine, RenderSpec
from generation.errors import ModelLoadFailed, TooLargeForDevice
from generation.events import EventBus
from generation.model_info import ModelInfo, describe_model
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore


def spec(model: ModelInfo, prompt: str = "a red circle", **overrides: object) -> RenderSpec:
    values: dict[str, object] = {
        "prompt": prompt,
        "negative_prompt": "",
        "seeds": (7,),
        "steps": 2,
        "guidance": 5.0,
        "width": model.native_width,
        "height": model.native_height,
        "scheduler": model.scheduler,
        "model_id": model.model_id,
    }
    values.update(overrides)
    return RenderSpec(**values)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def two_models(trained: ModelInfo, random: ModelInfo, **budgets: int) -> DiffusersEngine:
    engine = DiffusersEngine(trained, device="cpu", dtype="float32", torch_threads=1, **budgets)
    engine.offer([random])
    return engine


def test_a_model_past_the_budget_is_let_go_and_loads_again_the_same(
    trained_model: ModelInfo, model: ModelInfo
) -> None:
    engine = two_models(trained_model, model, memory_budget=0)
    first = pixels(engine.render(spec(trained_model))[0])
    other = pixels(engine.render(spec(model))[0])
    assert engine.loaded == [model.model_id]  # one at a time: the first was freed
    again = pixels(engine.render(spec(trained_model))[0])
    assert np.array_equal(first, again)  # loaded again from its files: the same pixels
    assert not np.array_equal(first, other)  # two models, two sets of weights
    assert (engine.counts.cold, engine.counts.dropped, engine.counts.from_cpu) == (3, 2, 0)


def test_models_within_the_budget_stay_loaded_and_cost_no_load(
    trained_model: ModelInfo, model: ModelInfo
) -> None:
    engine = two_models(trained_model, model, memory_budget=0)
    nbytes = engine._loaded[trained_model.model_id].nbytes
    engine.memory_budget = 2 * nbytes
    for info in (model, trained_model, model, trained_model):
        engine.render(spec(info))
    assert engine.counts.cold == 2 and engine.counts.dropped == 0
    assert engine.loaded == [trained_model.model_id, model.model_id]  # most recent first


def test_a_model_moved_off_is_kept_in_cpu_ram_while_it_fits_and_freed_past_it(
    trained_model: ModelInfo, model: ModelInfo
) -> None:
    engine = two_models(trained_model, model, memory_budget=0)
    nbytes = engine._loaded[trained_model.model_id].nbytes
    engine.cpu_budget = nbytes  # room for one kept model
    first = pixels(engine.render(spec(trained_model))[0])
    engine.render(spec(model))
    assert pixels(engine.render(spec(trained_model))[0]).tolist() == first.tolist()
    counts = engine.counts
    assert (counts.cold, counts.offloaded, counts.from_cpu, counts.dropped) == (2, 2, 1, 0)
    engine.cpu_budget = nbytes - 1  # smaller than a model: the next one moved off is freed
    engine.render(spec(model))
    assert (counts.from_cpu, counts.dropped) == (2, 1)
    assert list(engine._loaded) == [model.model_id]


def offered_copy(trained_model: ModelInfo, tmp_path: Path) -> tuple[ModelInfo, DiffusersEngine]:
    """A copy of the trained model in its own folder, offered to an engine of the original."""
    shutil.copytree(trained_model.path, tmp_path / "copy")
    copy = describe_model(str(tmp_path / "copy"), tmp_path)
    engine = DiffusersEngine(trained_model, device="cpu", dtype="float32", memory_budget=0)
    engine.offer([copy])
    return copy, engine


def test_a_model_whose_files_went_away_fails_its_job_and_the_others_run(
    trained_model: ModelInfo, tmp_path: Path
) -> None:
    copy, engine = offered_copy(trained_model, tmp_path)
    shutil.rmtree(tmp_path / "copy")
    with pytest.raises(ModelLoadFailed, match="copy"):
        engine.render(spec(copy))
    assert engine.render(spec(trained_model))  # the host's model still runs
    with pytest.raises(ValueError, match="this worker has"):
        engine.render(spec(trained_model, model_id="not-offered"))


def out_of_memory() -> RuntimeError:
    return RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_next_to_another_model_moves_it_off_and_runs_the_job(
    trained_model: ModelInfo, model: ModelInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = two_models(trained_model, model, memory_budget=10**12)  # both fit, by the budget
    engine.render(spec(model))
    assert sorted(engine.loaded) == sorted([model.model_id, trained_model.model_id])
    run = engine._run_base
    failures = [out_of_memory()]

    def short_of_memory(*args: object) -> object:
        if failures:  # the device is full: the other model's weights took it
            raise failures.pop()
        return run(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_run_base", short_of_memory)
    assert engine.render(spec(trained_model))
    assert engine.loaded == [trained_model.model_id]  # the other was let go, the job ran
    failures.append(out_of_memory())  # alone on the device and still too large: refused
    with pytest.raises(TooLargeForDevice):
        engine.render(spec(trained_model))


def test_a_model_that_cannot_be_moved_to_cpu_ram_is_freed_not_left_half_moved(
    trained_model: ModelInfo, model: ModelInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = two_models(trained_model, model, memory_budget=0, cpu_budget=10**12)
    host = engine._loaded[trained_model.model_id]

    def no_room(device: str) -> None:
        raise out_of_memory()

    monkeypatch.setattr(host, "to", no_room)
    engine.render(spec(model))
    assert list(engine._loaded) == [model.model_id] and engine.counts.dropped == 1


def test_a_model_whose_files_changed_is_loaded_again_and_a_load_is_timed_apart(
    trained_model: ModelInfo, model: ModelInfo, tmp_path: Path
) -> None:
    import dataclasses

    engine = two_models(trained_model, model, memory_budget=10**12)
    engine.render(spec(model))
    assert engine.last_load_seconds > 0 and engine.loading_since is None
    engine.render(spec(model))
    assert engine.last_load_seconds == 0  # already loaded: nothing to time
    changed = dataclasses.replace(model, revision="0" * 12)  # re-described with new files
    engine.offer([changed])
    engine.render(spec(changed))
    assert engine.counts.cold == 3 and engine._loaded[model.model_id].model.revision == "0" * 12


async def test_a_slow_load_is_no_hang_and_is_not_the_jobs_measured_time(
    sqlite: Database,
    trained_model: ModelInfo,
    model: ModelInfo,
    store: ImageStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = two_models(trained_model, model, memory_budget=0)
    load = engine._load

    def slow_load(*args: object, **kwargs: object) -> object:
        time.sleep(3)  # a large model from a slow disk
        return load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_load", slow_load)
    service = GenerationService(sqlite, trained_model, Limits(), more_models=[model])
    asked = GenerationRequest("a red circle", user_id=1, model="embedded-random", steps=2)
    job_id = (await service.submit(asked)).job.id
    config = WorkerConfig(poll_interval=0.05, heartbeat_interval=0.2, hang_seconds=1.0)
    assert await Worker(sqlite, engine, store, EventBus(), config).run(burst=True) == 1
    job = (await service.job(job_id)).job
    assert job.status == "succeeded" and job.attempts == 1
    assert job.gpu_seconds is not None and job.gpu_seconds < 3


async def test_a_model_that_does_not_load_goes_back_and_waits_on_this_worker_alone(
    sqlite: Database, trained_model: ModelInfo, store: ImageStore, tmp_path: Path
) -> None:
    copy, engine = offered_copy(trained_model, tmp_path)
    service = GenerationService(sqlite, trained_model, Limits(), more_models=[copy])
    job_id = (await service.submit(GenerationRequest("a cat", user_id=1, model="copy"))).job.id
    shutil.rmtree(tmp_path / "copy")  # gone from this host since it was offered
    worker = Worker(sqlite, engine, store, EventBus(), WorkerConfig(poll_interval=0.05))
    assert await worker.run_once()
    job = (await service.job(job_id)).job
    assert (job.status, job.attempts) == ("queued", 1)  # another worker may have the files
    assert job.error is not None and "copy" in job.error
    assert worker._claimable() == [trained_model.model_id]  # only that model waits here
