"""Comparison grids: one knob, its values, a cell per value, each cell its own recipe."""

from __future__ import annotations

import dataclasses

import pytest

from generation.comparing import Comparison, cell
from generation.errors import InvalidRequest
from generation.imaging import image_seed
from generation.loras import LoraChoice
from generation.requests import GenerationRequest, validate
from generation.service import GenerationService
from storage.models import JobKind
from tests.generation.test_imaging import JOB
from tests.generation.test_requests import LIMITS, MODEL


def asked(comparison: Comparison, **changes: object) -> GenerationRequest:
    base = GenerationRequest(
        "a red circle on red", user_id=1, seed=7, steps=10, kind=JobKind.COMPARE, parent_job_id=3
    )
    return dataclasses.replace(base, compare=comparison.to_dict(), **changes)


@pytest.mark.parametrize(
    ("knob", "values", "says"),
    [
        ("hue", "1,2", "knob: must be one of guidance, steps"),
        ("word", "a,b", "word:WORD"),
        ("steps:x", "1,2", "steps takes no word"),
        ("guidance", "3", "2 to 4 values, not 1"),
        ("guidance", "1,2,3,4,5", "2 to 4 values, not 5"),
        ("guidance", "3,three", "guidance takes numbers, such as 3, 5, 7, 9, not 'three'"),
        ("steps", "10,10", "must differ"),
        ("word:two words", "a,b", "not one word"),
    ],
)
def test_a_comparison_is_refused_naming_what_to_change(knob: str, values: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        Comparison.parse(knob, values)


def test_each_knob_turns_only_its_own_setting() -> None:
    base = GenerationRequest(
        "A red circle, red-ish", user_id=1, seed=7, steps=10, loras=(LoraChoice("ink", 1.0),)
    )
    word = Comparison.parse("word:red", "blue, green")
    assert word.request_for(base, 0).prompt == "A blue circle, red-ish", "whole words only"
    assert word.labels() == ["blue", "green"]
    assert Comparison.parse("guidance", "2.5,4").request_for(base, 0).guidance == 2.5
    assert Comparison.parse("steps", "5,9").request_for(base, 1).steps == 9
    assert Comparison.parse("seed", "1,2").request_for(base, 1).seed == 2
    assert Comparison.parse("sampler", "Euler,DDIM").request_for(base, 1).sampler == "DDIM"
    lora = Comparison.parse("lora", "0.25,0.5").request_for(base, 0).loras
    assert lora == (LoraChoice("ink", 0.25),)
    with pytest.raises(InvalidRequest, match="has none"):
        Comparison.parse("lora", "0.25,0.5").request_for(dataclasses.replace(base, loras=()), 0)
    with pytest.raises(InvalidRequest, match="no word 'purple'"):
        Comparison.parse("word:purple", "a,b").request_for(base, 0)
    assert Comparison.parse("guidance", "1,2.5").labels() == ["cfg 1", "cfg 2.5"]
    # Rerolled, a comparison of seeds takes new ones (the others keep their values).
    seeds = Comparison.parse("seed", "1,2,3")
    assert seeds.again().knob == "seed" and set(seeds.again().values).isdisjoint({1, 2, 3})
    assert word.again() == word


def test_a_comparison_records_each_cell_as_validated_and_its_image_seeds() -> None:
    recipe = validate(asked(Comparison.parse("steps", "5, 20")), LIMITS, MODEL)
    assert (recipe.kind, recipe.count, recipe.seed) == (JobKind.COMPARE, 2, 7)
    assert recipe.steps == 10, "the image it remakes; each cell has its own"
    cells = recipe.compare["cells"]  # type: ignore[index]
    assert [(c["steps"], c["seed"]) for c in cells] == [(5, 7), (20, 7)]
    job = dataclasses.replace(
        JOB, kind=JobKind.COMPARE, seed=7, count=2, steps=20, compare=recipe.compare
    )
    first = cell(job, 0)
    assert (first.kind, first.count, first.steps, first.seed) == (JobKind.TXT2IMG, 1, 5, 7)
    assert [image_seed(job, index) for index in (0, 1)] == [7, 7], "not seed + i"
    assert image_seed(JOB, 2) == JOB.seed + 2
    with pytest.raises(InvalidRequest, match="image: must be one of 0 to 1"):
        cell(job, 2)
    seeds = validate(asked(Comparison.parse("seed", "11,12,13")), LIMITS, MODEL)
    assert [c["seed"] for c in seeds.compare["cells"]] == [11, 12, 13]  # type: ignore[index]
    with pytest.raises(InvalidRequest, match="at most 2 images a job"):
        validate(
            asked(Comparison.parse("seed", "1,2,3")),
            dataclasses.replace(LIMITS, max_count=2),
            MODEL,
        )
    with pytest.raises(InvalidRequest, match="steps: must be from 1 to 40, not 50"):
        validate(asked(Comparison.parse("steps", "5, 50")), LIMITS, MODEL)


def test_a_comparison_costs_what_its_cells_cost(service: GenerationService) -> None:
    recipe = service.check(asked(Comparison.parse("steps", "5, 20")))
    cells = [
        service.check(
            dataclasses.replace(
                GenerationRequest("a red circle on red", user_id=1), seed=7, steps=steps, count=1
            )
        )
        for steps in (5, 20)
    ]
    assert service._cost(recipe, False) == pytest.approx(
        sum(service._cost(cell, False) for cell in cells)
    )
    # A sampler that calls the model twice a step costs its cell twice as much.
    samplers = service.check(asked(Comparison.parse("sampler", "Euler, Heun")))
    euler, heun = (
        service.check(
            dataclasses.replace(
                GenerationRequest("a red circle on red", user_id=1),
                seed=7,
                steps=10,
                count=1,
                sampler=name,
            )
        )
        for name in ("Euler", "Heun")
    )
    assert service._cost(samplers, False) == pytest.approx(
        service._cost(euler, False) + service._cost(heun, False)
    )
    assert service._cost(heun, False) > service._cost(euler, False)
