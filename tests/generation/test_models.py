"""Several models on one engine: loaded when a job needs them, kept to a budget of parameter
bytes (least recently used first; to CPU RAM while there is room), sharing their weights
between text-to-image, image-to-image and inpainting."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.engine import DiffusersEngine, RenderSpec
from generation.errors import ModelLoadFailed
from generation.model_info import ModelInfo, describe_model


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


def test_a_model_whose_files_went_away_fails_its_job_and_the_others_run(
    trained_model: ModelInfo, tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(trained_model.path, folder)
    copy = describe_model(str(folder), tmp_path)
    engine = DiffusersEngine(trained_model, device="cpu", dtype="float32", memory_budget=0)
    engine.offer([copy])
    shutil.rmtree(folder)
    with pytest.raises(ModelLoadFailed, match="copy"):
        engine.render(spec(copy))
    assert engine.render(spec(trained_model))  # the host's model still runs
    with pytest.raises(ValueError, match="this worker has"):
        engine.render(spec(trained_model, model_id="not-offered"))
