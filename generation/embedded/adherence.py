"""Adherence: generate for captions of the embedded world and score each image's attributes.

Used by ``benchmarks/adherence.py`` (many captions, printed figures) and by the test suite (a
small set with thresholds). Scenes come from a seeded generator, so a set is the same on
every run; ``held_out`` draws only colour/shape/background triples never seen in training.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from typing import Any

from generation.embedded.detector import ATTRIBUTES, detect, score
from generation.embedded.world import Scene, caption, random_scene
from generation.engine import RenderSpec
from generation.model_info import ModelInfo


def prompts(count: int, seed: int, *, held_out: bool = True) -> list[tuple[Scene, str]]:
    """``count`` scenes and one caption each, the same for the same seed."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, held_out=held_out) for _ in range(count)]
    return [(scene, caption(scene, rng)) for scene in scenes]


@dataclasses.dataclass(frozen=True, slots=True)
class Adherence:
    """Fractions right per attribute (over the captions that ask for it) and all together."""

    accuracy: dict[str, float]
    asked: dict[str, int]
    all_correct: float
    seconds_per_image: float
    failures: list[str]  # "caption: what came out", for messages


def measure(
    engine: Any,
    model: ModelInfo,
    cases: list[tuple[Scene, str]],
    *,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 7,
) -> Adherence:
    """Render one image per caption at the model's native size and score it."""
    steps = model.default_steps if steps is None else steps
    guidance = model.default_guidance if guidance is None else guidance
    right: Counter[str] = Counter()
    asked: Counter[str] = Counter()
    all_right = 0
    failures = []
    started = time.perf_counter()
    for index, (scene, text) in enumerate(cases):
        spec = RenderSpec(
            text,
            "",
            (seed + index,),
            steps,
            guidance,
            model.native_width,
            model.native_height,
            model.scheduler,
        )
        found = detect(engine.render(spec)[0])
        verdict = score(scene, found)
        for attribute, correct in verdict.items():
            asked[attribute] += 1
            right[attribute] += correct
        if all(verdict.values()):
            all_right += 1
        else:
            failures.append(f"{text!r}: {found}")
    seconds = time.perf_counter() - started
    return Adherence(
        accuracy={name: right[name] / asked[name] for name in ATTRIBUTES if asked[name]},
        asked={name: asked[name] for name in ATTRIBUTES if asked[name]},
        all_correct=all_right / len(cases),
        seconds_per_image=seconds / len(cases),
        failures=failures,
    )
