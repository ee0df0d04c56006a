"""The embedded model's trainer: a tiny run saves a loadable pipeline; a resumed run is exact."""

from __future__ import annotations

from pathlib import Path

from generation.embedded.train import TrainConfig, Trainer
from generation.engine import DiffusersEngine, RenderSpec
from generation.model_info import content_hash, describe_model

TINY = {
    "images": 48,
    "batch": 8,
    "vae_steps": 4,
    "unet_steps": 6,
    "decoder_steps": 3,
    "checkpoint_every": 2,
}


def test_a_tiny_run_saves_a_pipeline_that_loads_and_renders(tmp_path: Path) -> None:
    out = tmp_path / "model"
    assert Trainer(TrainConfig(out=out, **TINY)).run(progress=False)
    model = describe_model(str(out), tmp_path / "models")
    assert (model.native_width, model.default_steps, model.scheduler) == (
        64,
        10,
        "DPMSolverMultistepScheduler",
    )
    engine = DiffusersEngine(model, device="cpu", dtype="float32", torch_threads=1)
    assert engine.txt2img.tokenizer.tokenize("green triangle") == ["green</w>", "triangle</w>"]
    assert engine.txt2img.vae.config.scaling_factor != 0.18215  # measured from the latents
    spec = RenderSpec(
        "a red circle on a blue background", "", (1,), 4, 3.0, 64, 64, model.scheduler
    )
    assert engine.render(spec)[0].size == (64, 64)


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    assert Trainer(TrainConfig(out=straight, **TINY)).run(progress=False)
    resumed = tmp_path / "resumed"
    # Stopped inside the VAE phase, inside the UNet phase and inside the decoder phase.
    assert not Trainer(TrainConfig(out=resumed, **TINY)).run(stop_after=3, progress=False)
    assert not Trainer(TrainConfig(out=resumed, **TINY)).run(stop_after=4, progress=False)
    assert not Trainer(TrainConfig(out=resumed, **TINY)).run(stop_after=4, progress=False)
    assert Trainer(TrainConfig(out=resumed, **TINY)).run(progress=False)
    assert content_hash(resumed) == content_hash(straight)
