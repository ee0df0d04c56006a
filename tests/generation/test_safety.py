"""The image safety check: the real classifier offline, and the policy around it."""

from __future__ import annotations

import importlib.util
import time

import pytest

from generation.engine import DiffusersEngine, RenderSpec
from generation.model_info import ModelInfo
from generation.safety import NUDENET_UNSAFE, NudeNetChecker, SafetyPolicy, load_checker
from tests.ci import in_ci


@pytest.fixture(scope="module")
def nudenet() -> NudeNetChecker:
    if importlib.util.find_spec("nudenet") is None and not in_ci():
        pytest.skip("the nudenet extra is not installed (CI installs it)")
    return NudeNetChecker()


def test_the_classifier_loads_offline_and_scores_generated_images(
    nudenet: NudeNetChecker, trained_engine: DiffusersEngine, trained_model: ModelInfo
) -> None:
    images = trained_engine.render(
        RenderSpec(
            prompt="a purple square on a white background",
            negative_prompt="",
            seeds=(1, 2),
            steps=10,
            guidance=3.0,
            width=64,
            height=64,
            scheduler=trained_model.scheduler,
        )
    )
    started = time.perf_counter()
    scores = [nudenet.scores(image) for image in images]
    assert time.perf_counter() - started < 10
    for found in scores:
        assert set(found) <= NUDENET_UNSAFE
        assert all(0.0 <= value <= 1.0 for value in found.values())
    assert not any(SafetyPolicy().flagged(found) for found in scores), "shapes are not nudity"


def test_load_checker_names_and_a_hosts_own_checker() -> None:
    assert load_checker("off") is None
    own = load_checker("tests.bot.test_moderation:FixedScoresZero")
    assert own is not None and own.name == "fixed"
    with pytest.raises(ValueError, match="module:Class"):
        load_checker("nonsense")


def test_the_policy_per_guild_and_its_threshold() -> None:
    policy = SafetyPolicy("spoiler", {5: "withhold", 6: "off"}, threshold=0.6)
    assert [policy.for_guild(g) for g in (None, 4, 5, 6)] == [
        "spoiler",
        "spoiler",
        "withhold",
        "off",
    ]
    assert policy.flagged({"BUTTOCKS_EXPOSED": 0.6})
    assert not policy.flagged({"BUTTOCKS_EXPOSED": 0.59})
    assert not policy.flagged({})
    with pytest.raises(ValueError, match="spoiler, withhold, off"):
        SafetyPolicy("blur")
