"""Every invalid option is refused with a message naming the option and what is allowed."""

from __future__ import annotations

import dataclasses

import pytest

from generation.errors import InvalidRequest
from generation.model_info import ModelInfo
from generation.requests import MAX_SEED, GenerationRequest, Limits, validate
from storage.models import JobKind

LIMITS = Limits(max_steps=40, min_size=64, max_width=512, max_height=384, max_count=4)
MODEL = ModelInfo(
    model_id="embedded",
    path="/nowhere",
    revision="abc",
    native_width=64,
    native_height=64,
    default_steps=10,
    default_guidance=3.0,
    scheduler="DPMSolverMultistepScheduler",
    local=True,
)


def request(**changes: object) -> GenerationRequest:
    return dataclasses.replace(GenerationRequest(prompt="a red circle", user_id=1), **changes)


@pytest.mark.parametrize(
    ("changes", "option", "expected"),
    [
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": "x" * 1001}, "prompt", "at most 1000 characters, not 1001"),
        ({"negative_prompt": "y" * 1001}, "negative", "at most 1000 characters"),
        ({"seed": -1}, "seed", f"from 0 to {MAX_SEED}, not -1"),
        ({"seed": MAX_SEED + 1}, "seed", f"from 0 to {MAX_SEED}"),
        ({"steps": 0}, "steps", "from 1 to 40, not 0"),
        ({"steps": 41}, "steps", "from 1 to 40, not 41"),
        ({"guidance": -0.5}, "guidance", "from 0 to 30, not -0.5"),
        ({"guidance": 30.5}, "guidance", "from 0 to 30"),
        ({"guidance": float("nan")}, "guidance", "must be a number"),
        ({"width": 100}, "width", "multiple of 8 pixels, not 100 (try 96)"),
        ({"width": 520}, "width", "from 64 to 512 pixels, not 520"),
        ({"height": 392}, "height", "from 64 to 384 pixels, not 392"),
        ({"height": 32}, "height", "from 64 to 384 pixels, not 32"),
        ({"count": 0}, "count", "from 1 to 4, not 0"),
        ({"count": 5}, "count", "from 1 to 4, not 5"),
        ({"strength": 0.5}, "strength", "only applies when starting from an image"),
        ({"kind": JobKind.VARIATION, "strength": 1.5}, "strength", "from 0 to 1, not 1.5"),
        ({"kind": JobKind.VARIATION, "strength": 0.05}, "strength", "runs no step"),
    ],
)
def test_invalid_option_names_the_option_and_the_allowed_range(
    changes: dict[str, object], option: str, expected: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(request(**changes), LIMITS, MODEL)
    assert caught.value.option == option
    assert expected in caught.value.message
    assert str(caught.value).startswith(f"{option}: ")


def test_defaults_come_from_the_model_and_the_limits() -> None:
    recipe = validate(request(seed=5), LIMITS, MODEL)
    assert (recipe.width, recipe.height) == (64, 64)
    assert (recipe.steps, recipe.guidance, recipe.count) == (10, 3.0, 4)
    assert recipe.scheduler == "DPMSolverMultistepScheduler"
    assert recipe.seeds == (5, 6, 7, 8)
    assert recipe.strength is None


def test_a_missing_seed_is_drawn_at_random_in_range() -> None:
    seeds = {validate(request(), LIMITS, MODEL).seed for _ in range(20)}
    assert len(seeds) > 1
    assert all(0 <= seed <= MAX_SEED for seed in seeds)


def test_variations_get_the_default_strength() -> None:
    recipe = validate(
        request(kind=JobKind.VARIATION, parent_job_id=1, parent_image_index=0), LIMITS, MODEL
    )
    assert recipe.strength == LIMITS.default_strength


def test_prompt_is_trimmed_and_edges_of_ranges_are_accepted() -> None:
    recipe = validate(
        request(
            prompt="  a cat  ", seed=MAX_SEED, steps=40, guidance=0, width=512, height=384, count=1
        ),
        LIMITS,
        MODEL,
    )
    assert (recipe.prompt, recipe.seed, recipe.steps, recipe.guidance) == (
        "a cat",
        MAX_SEED,
        40,
        0.0,
    )


def test_a_fixed_size_model_refuses_other_sizes_for_text_to_image_only() -> None:
    fixed = dataclasses.replace(MODEL, fixed_size=True)
    with pytest.raises(InvalidRequest, match=r"width: embedded draws 64×64 only, not 128×64"):
        validate(GenerationRequest("a red circle", user_id=1, width=128), LIMITS, fixed)
    assert validate(GenerationRequest("a red circle", user_id=1), LIMITS, fixed).width == 64
    upscale = GenerationRequest(
        "a red circle", user_id=1, width=128, height=128, kind=JobKind.UPSCALE, strength=0.3
    )
    assert validate(upscale, LIMITS, fixed).width == 128  # upscales are img2img at 2×


def test_an_api_models_sizes_and_a_bounded_local_upscale(model: ModelInfo) -> None:
    from generation.openai_engine import describe_api_model

    dall_e_3 = describe_api_model("dall-e-3")
    limits = Limits()
    assert validate(GenerationRequest("x", user_id=1, width=1792, height=1024), limits, dall_e_3)
    upscale = GenerationRequest(
        "x", user_id=1, width=3584, height=2048, kind=JobKind.UPSCALE, strength=0.3
    )
    assert validate(upscale, limits, dall_e_3).width == 3584
    with pytest.raises(InvalidRequest, match="width: must be from 1 to 4096"):
        validate(dataclasses.replace(upscale, width=7168, height=4096), limits, dall_e_3)


def test_a_fixed_size_model_starts_from_an_image_at_its_own_size_only(
    model: ModelInfo,
) -> None:
    fixed = dataclasses.replace(model, fixed_size=True)
    request = GenerationRequest(
        "x", user_id=1, width=128, height=64, kind=JobKind.IMG2IMG, init_image=b"png"
    )
    with pytest.raises(InvalidRequest, match="draws 64×64 only"):
        validate(request, Limits(), fixed)
