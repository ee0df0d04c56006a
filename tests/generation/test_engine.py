"""The diffusers engine on the embedded model: batching, shared weights, progress and cancel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine import DiffusersEngine, RenderSpec, StepProgress
from generation.errors import RenderCancelled

SPEC = RenderSpec(
    prompt="a red circle on a blue background",
    negative_prompt="",
    seeds=(7, 8, 9, 10),
    steps=6,
    guidance=3.0,
    width=64,
    height=64,
    scheduler="DPMSolverMultistepScheduler",
)


def _with(spec: RenderSpec, **changes: object) -> RenderSpec:
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_image_i_of_a_grid_is_made_again_alone_from_seed_plus_i(engine: DiffusersEngine) -> None:
    grid = engine.render(SPEC)
    alone = engine.render(_with(SPEC, seeds=(9,)))
    difference = np.abs(pixels(grid[2]) - pixels(alone[0]))
    # Batched and single calls may differ by a level or two on a few values, never more.
    assert difference.max() <= 2
    assert (difference > 0).mean() < 0.01
    # And the other images of the grid really are different images.
    assert np.abs(pixels(grid[1]) - pixels(alone[0])).mean() > 1


def test_the_same_call_twice_is_bit_identical(engine: DiffusersEngine) -> None:
    first = engine.render(SPEC)
    second = engine.render(SPEC)
    assert [image.tobytes() for image in first] == [image.tobytes() for image in second]


def test_img2img_and_upscale_reuse_the_txt2img_weights(engine: DiffusersEngine) -> None:
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(engine.img2img, name) is getattr(engine.txt2img, name), name
    source = engine.render(_with(SPEC, seeds=(3,)))[0]
    upscaled = engine.render(
        _with(SPEC, seeds=(4,), width=128, height=128, strength=0.3, init_image=source)
    )
    assert upscaled[0].size == (128, 128)
    varied = engine.render(_with(SPEC, seeds=(4, 5), strength=0.6, init_image=source))
    assert [image.size for image in varied] == [(64, 64), (64, 64)]


def test_progress_reports_every_step_with_a_preview(engine: DiffusersEngine) -> None:
    seen: list[tuple[int, int]] = []
    previews: list[Image.Image] = []

    def on_step(progress: StepProgress) -> None:
        seen.append((progress.step, progress.total))
        previews.append(progress.preview())

    engine.render(_with(SPEC, seeds=(1,)), on_step)
    assert seen == [(step, SPEC.steps) for step in range(1, SPEC.steps + 1)]
    assert previews[-1].size == (16, 16)  # the latent grid: 64 px / VAE factor 4
    assert previews[-1].mode == "RGB"


def test_img2img_progress_counts_the_steps_that_strength_runs(engine: DiffusersEngine) -> None:
    source = engine.render(_with(SPEC, seeds=(3,)))[0]
    totals: set[int] = set()
    engine.render(
        _with(SPEC, seeds=(3,), strength=0.5, init_image=source),
        lambda progress: totals.add(progress.total),
    )
    assert totals == {3}  # int(6 steps × 0.5)


def test_raising_from_the_step_callback_stops_and_leaves_the_engine_usable(
    engine: DiffusersEngine,
) -> None:
    steps: list[int] = []

    def stop_at_two(progress: StepProgress) -> None:
        steps.append(progress.step)
        if progress.step == 2:
            raise RenderCancelled

    with pytest.raises(RenderCancelled):
        engine.render(SPEC, stop_at_two)
    assert steps == [1, 2]
    again = engine.render(_with(SPEC, seeds=(7,)))
    assert pixels(again[0]).shape == (64, 64, 3)


def test_runtime_is_recorded(engine: DiffusersEngine) -> None:
    runtime = engine.runtime
    assert (runtime.device_kind, runtime.dtype, runtime.torch_threads) == ("cpu", "float32", 1)
    assert {"torch", "diffusers", "transformers", "python"} <= set(runtime.library_versions)


def test_a_render_runs_with_the_thread_count_it_asks_for(engine: DiffusersEngine) -> None:
    # Thread count changes the bits on the CPU, so reproduce runs a job with the recorded one.
    seen: list[int] = []
    engine.render(
        _with(SPEC, seeds=(1,), steps=2, torch_threads=2),
        lambda _: seen.append(torch.get_num_threads()),
    )
    assert seen == [2, 2]
    assert torch.get_num_threads() == engine.runtime.torch_threads == 1
