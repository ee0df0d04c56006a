"""Midjourney's parameters typed in a prompt: taken out, put where the options say nothing,
refused naming the list when unknown or malformed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from generation.errors import InvalidRequest
from generation.model_info import ModelInfo
from generation.parameters import apply, apply_fitting, parse, remix, strength_of
from generation.preferences import Preferences
from generation.presets import Preset
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from storage.db import Database


def test_parameters_are_taken_out_of_the_prompt() -> None:
    typed = parse("neon city at night --ar 16:9 --no text, watermark --seed 7 --cfg 4.5")
    assert typed.text == "neon city at night"
    assert typed.values == {"ar": (16, 9), "no": "text, watermark", "seed": 7, "cfg": 4.5}
    # A phone's em dash counts; a -- inside a word, or with no letter after it, does not.
    assert parse("a cat \u2014ar 2:3").values == {"ar": (2, 3)}
    assert parse("a cat \u2013ar 2:3 \u2014no dogs").values == {"ar": (2, 3), "no": "dogs"}
    assert parse("well--known faces -- and more").values == {}
    # A dash before a word that is no parameter is prose; "--" before one is refused.
    assert parse("a castle \u2014gothic style").text == "a castle \u2014gothic style"
    assert parse("a cat --sampler DPM++ 2M Karras").values == {"sampler": "DPM++ 2M Karras"}
    assert parse("A CAT --AR 1:1 --Steps 4").values == {"ar": (1, 1), "steps": 4}


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        ("a cat --chaos 50", "--chaos is not a parameter here"),
        ("a cat --ar 16x9", "--ar takes W:H"),
        ("a cat --ar 0:1", "--ar takes W:H"),
        ("a cat --ar 9:1", "past 4:1"),
        ("a cat --seed -1", "--seed takes a whole number"),
        ("a cat --seed 4294967296", "--seed takes a whole number"),
        ("a cat --seed \u00b2", "--seed takes a whole number"),  # isdigit() yet no int()
        ("a cat --seed \u0667", "--seed takes a whole number"),  # an Arabic-Indic 7
        ("a cat --steps " + "1" * 4400, "--steps takes a whole number"),  # past int()'s digits
        ("a cat --cfg \u0663", "--cfg takes a number"),
        ("a cat --seed 1 --seed 2", "--seed is given twice"),
        ("a cat --cfg high", "--cfg takes a number"),
        ("a cat --cfg nan", "--cfg takes a number from 0"),
        ("a cat --iw 4", "--iw is from 0 to 3"),
        ("a cat --no", "--no needs a value"),
        ("--ar 1:1", "has only parameters"),
    ],
)
def test_unknown_or_malformed_parameters_are_refused_with_the_list(prompt: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse(prompt)
    assert refused.value.option == "prompt" and says in refused.value.message
    if "only parameters" not in says:
        assert "--ar (aspect ratio W:H)" in refused.value.message  # the list, to pick from


def test_options_win_over_parameters_and_say_which(model: ModelInfo) -> None:
    asked = GenerationRequest(
        "neon city --ar 2:1 --no text --seed 9 --steps 3 --cfg 2",
        user_id=1,
        seed=5,
        negative_prompt="blurry",
    )
    request, overridden = apply(asked, model_of=lambda name: model, min_side=64)
    assert overridden == ["seed"]
    assert (request.prompt, request.raw_prompt) == ("neon city", asked.prompt)
    assert (request.seed, request.steps, request.guidance) == (5, 3, 2.0)
    assert request.negative_prompt == "blurry, text"  # joined, never replaced
    # 64×64's area at 2:1 grown to the smallest side the host takes, in multiples of 8.
    assert (request.width, request.height) == (128, 64)
    # The aspect option, and a width or height option, win over --ar.
    squared, said = apply(asked, aspect=(1, 1), model_of=lambda name: model)
    assert (squared.width, squared.height) == (64, 64) and said == ["seed", "ar"]
    wide, said = apply(dataclasses.replace(asked, width=96), model_of=lambda name: model)
    assert (wide.width, wide.height) == (96, None) and "ar" in said
    # The filter reads the words typed in parameters, not their numbers (read as letters,
    # a seed of 84552 would be "ass").
    assert request.filtered_text == "neon city text"
    from generation.prompt_filter import PromptFilter

    seeded, _ = apply(GenerationRequest("a cat --seed 84552", user_id=1), model_of=lambda n: model)
    assert PromptFilter(["ass"]).check(seeded.filtered_text) is None


def test_image_weight_needs_an_image_and_maps_to_strength(model: ModelInfo) -> None:
    with pytest.raises(InvalidRequest, match="attach one"):
        apply(GenerationRequest("a cat --iw 2", user_id=1), model_of=lambda name: model)
    with_image = GenerationRequest("a cat --iw 1", user_id=1, init_image=b"")
    request, _ = apply(with_image, model_of=lambda name: model)
    assert request.strength == 0.5
    assert strength_of(0) == 1.0 and strength_of(3) == 0.25  # closer to the image as it grows


def test_an_aspect_on_a_model_that_draws_one_size_is_refused(model: ModelInfo) -> None:
    fixed = dataclasses.replace(model, fixed_size=True)
    with pytest.raises(InvalidRequest, match="draws 64×64 only") as refused:
        apply(GenerationRequest("a cat --ar 16:9", user_id=1), model_of=lambda name: fixed)
    assert refused.value.option == "aspect"
    same, _ = apply(GenerationRequest("a cat --ar 1:1", user_id=1), model_of=lambda name: fixed)
    assert (same.width, same.height) == (64, 64)


async def test_the_job_records_the_prompt_as_typed(
    sqlite: Database, model: ModelInfo, tmp_path: Path
) -> None:
    service = GenerationService(sqlite, model, Limits())
    asked, _ = apply(
        GenerationRequest("a red circle --no blue --seed 3", user_id=1),
        model_of=lambda name: model,
    )
    job = (await service.submit(asked)).job
    assert (job.prompt, job.negative_prompt, job.seed) == ("a red circle", "blue", 3)
    assert job.raw_prompt == "a red circle --no blue --seed 3"


def test_settings_fill_what_neither_the_options_nor_the_prompt_say(model: ModelInfo) -> None:
    mine = Preferences(model="shapes", aspect="2:3", sampler="Euler a", steps=7, guidance=3.0)
    asked = GenerationRequest("neon city --cfg 5", user_id=1, steps=4)
    request, overridden = apply(asked, model_of=lambda name: model, min_side=64, defaults=mine)
    assert overridden == []
    # The option (steps), then the prompt (--cfg), then the settings (the rest).
    assert (request.steps, request.guidance, request.sampler) == (4, 5.0, "Euler a")
    assert (request.model, request.width, request.height) == ("shapes", 64, 96)
    # --ar and a size option win over the default aspect; an image keeps its own shape.
    typed, _ = apply(
        GenerationRequest("neon --ar 1:1", user_id=1), model_of=lambda n: model, defaults=mine
    )
    assert typed.width == typed.height == 64
    from_image, _ = apply(
        GenerationRequest("neon", user_id=1, init_image=b""),
        model_of=lambda n: model,
        defaults=mine,
    )
    assert from_image.width is None and from_image.steps == 7
    # A model that draws one size takes no default aspect (not refused: it is no one's ask).
    fixed = dataclasses.replace(model, fixed_size=True)
    plain, _ = apply(GenerationRequest("neon", user_id=1), model_of=lambda n: fixed, defaults=mine)
    assert plain.width is None
    # What a preset sets itself wins over the member's settings (the host tuned it).
    tuned = Preset(name="shapes", source="embedded", steps=2, width=64, height=64)
    on_preset, _ = apply(
        GenerationRequest("neon", user_id=1),
        model_of=lambda n: model,
        defaults=mine,
        preset_of=lambda name: tuned if name == "shapes" else None,
    )
    assert (on_preset.steps, on_preset.width, on_preset.guidance) == (None, None, 3.0)


def test_stored_settings_keep_only_what_still_makes_sense() -> None:
    stored = {
        "model": "x" * 65,
        "aspect": "5:1",
        "sampler": "Euler a",
        "steps": 500,
        "guidance": float("nan"),
        "remix": "yes",
        "chaos": 3,
    }
    assert Preferences.from_dict(stored, max_steps=50) == Preferences(sampler="Euler a")
    assert Preferences.from_dict(None) == Preferences()
    assert Preferences().to_dict() is None
    mine = Preferences(steps=3, remix=True)
    assert Preferences.from_dict(mine.to_dict()) == mine
    with pytest.raises(InvalidRequest, match="from 1 to 50") as refused:
        mine.changed(50, steps=51)
    assert refused.value.option == "steps"
    with pytest.raises(InvalidRequest, match="from 0 to 30"):
        mine.changed(50, guidance=31.0)
    with pytest.raises(InvalidRequest, match="must be one of"):
        mine.changed(50, aspect="5:4")


def test_a_remix_edits_the_texts_and_keeps_the_picture(model: ModelInfo) -> None:
    parent = GenerationRequest(
        "a red circle", user_id=1, negative_prompt="green", seed=3, steps=4, width=64, height=64
    )
    edited = remix(parent, "a blue circle --no red --steps 6", "yellow")
    assert (edited.prompt, edited.negative_prompt) == ("a blue circle", "yellow, red")
    assert (edited.steps, edited.seed, edited.width) == (6, 3, 64)
    assert edited.raw_prompt == "a blue circle --no red --steps 6"
    assert edited.filtered_text == "a blue circle red"
    plain = remix(parent, "a blue circle", "")
    assert (plain.raw_prompt, plain.negative_prompt) == (None, "")
    for fixed in ("--ar 2:1", "--model shapes", "--iw 1"):
        with pytest.raises(InvalidRequest, match="cannot change in a remix"):
            remix(parent, f"a blue circle {fixed}", "")


def test_a_setting_the_model_cannot_take_is_dropped_and_named(model: ModelInfo) -> None:
    def check(request: GenerationRequest) -> None:
        if request.sampler == "DPM++ 2M Karras":
            raise InvalidRequest("sampler", "does not suit this model")
        if request.steps is not None and request.steps > 20:
            raise InvalidRequest("steps", "must be from 1 to 20")

    mine = Preferences(sampler="DPM++ 2M Karras", steps=30, guidance=3.0)
    request, _, dropped = apply_fitting(
        GenerationRequest("neon", user_id=1), check=check, defaults=mine, model_of=lambda n: model
    )
    assert dropped == ["sampler", "steps"]
    assert (request.sampler, request.steps, request.guidance) == (None, None, 3.0)
    # What the member typed is refused as typed, never dropped.
    with pytest.raises(InvalidRequest, match="1 to 20"):
        apply_fitting(
            GenerationRequest("neon --steps 40", user_id=1),
            check=check,
            defaults=mine,
            model_of=lambda n: model,
        )
    # A refusal no setting caused is the lenient check's to judge.
    lenient_saw = []
    request, _, dropped = apply_fitting(
        GenerationRequest("neon --steps 40", user_id=1),
        check=check,
        lenient=lenient_saw.append,
        defaults=None,
        model_of=lambda n: model,
    )
    assert lenient_saw == [request] and request.steps == 40 and dropped == []


def test_a_refusal_of_the_presets_own_value_drops_no_setting(model: ModelInfo) -> None:
    tuned = Preset(name="shapes", source="embedded", steps=40)
    seen: list[GenerationRequest] = []

    def check(request: GenerationRequest) -> None:
        if request.steps is None:  # the preset's 40 steps, past this host's cap
            raise InvalidRequest("steps", "must be from 1 to 20")

    request, _, dropped = apply_fitting(
        GenerationRequest("neon", user_id=1),
        check=check,
        lenient=seen.append,
        defaults=Preferences(model="shapes", steps=10),
        model_of=lambda n: model,
        preset_of=lambda name: tuned if name == "shapes" else None,
    )
    assert dropped == [] and seen == [request], "the member's steps were never applied"


def test_a_remix_sent_back_unchanged_is_not_the_members_text() -> None:
    parent = GenerationRequest("a red circle", user_id=1, negative_prompt="green")
    assert not remix(parent, "a red circle", "green").remixed
    assert remix(parent, "a red circle", "green, blue").remixed
    assert remix(parent, "a red square", "green").remixed


def test_video_is_a_flag_that_takes_no_value(model: ModelInfo) -> None:
    assert parse("a cat --video").values == {"video": True}
    assert parse("a cat --video --seed 3").values == {"video": True, "seed": 3}
    with pytest.raises(InvalidRequest, match="--video takes no value"):
        parse("a cat --video please")
    asked, _ = apply(GenerationRequest("a cat --video", user_id=1), model_of=lambda n: model)
    assert (asked.prompt, asked.video) == ("a cat", True)
    plain, _ = apply(GenerationRequest("a cat", user_id=1), model_of=lambda n: model)
    assert not plain.video
    assert remix(plain, "a dog --video", "").video, "typed in a remix, it applies"


def test_video_is_refused_on_an_image_service_that_shows_no_steps() -> None:
    from generation.openai_engine import describe_api_model
    from generation.requests import validate

    dall_e_3 = describe_api_model("dall-e-3")
    request = GenerationRequest("a cat", user_id=1, width=1024, height=1024, video=True)
    with pytest.raises(InvalidRequest, match="--video keeps the steps"):
        validate(request, Limits(), dall_e_3)
    assert not validate(dataclasses.replace(request, video=False), Limits(), dall_e_3).video
