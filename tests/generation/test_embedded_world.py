"""The embedded model's world: scenes, captions, held-out combinations, and the detector."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import numpy as np
from PIL import Image

from generation.embedded.detector import detect, nearest_colour, score
from generation.embedded.world import (
    COLOURS,
    HELD_OUT,
    PALETTE,
    SHAPES,
    Scene,
    caption,
    draw,
    random_scene,
)


def test_the_detector_reads_every_attribute_of_drawn_scenes() -> None:
    rng = random.Random(7)
    right: Counter[str] = Counter()
    asked: Counter[str] = Counter()
    for index in range(400):
        scene = random_scene(rng, held_out=index % 4 == 0)
        for attribute, correct in score(scene, detect(draw(scene, rng))).items():
            asked[attribute] += 1
            right[attribute] += correct
    assert set(asked) == {"colour", "background", "shape", "size", "position"}
    assert right == asked, {name: right[name] / asked[name] for name in asked}


def test_the_detector_is_not_fooled_by_a_wrong_scene() -> None:
    rng = random.Random(1)
    drawn = draw(Scene("red", "circle", "blue", "small", "left"), rng)
    verdict = score(Scene("green", "square", "white", "large", "centre"), detect(drawn))
    assert not any(verdict.values())


def test_a_plain_image_has_no_foreground() -> None:
    detection = detect(Image.new("RGB", (64, 64), PALETTE["purple"]))
    assert detection.background == "purple"
    assert (detection.colour, detection.shape) == (None, None)
    assert nearest_colour(np.array([250, 250, 240])) == "white"


def test_held_out_triples_never_appear_in_training_and_every_word_still_does() -> None:
    assert len(HELD_OUT) == 16
    rng = random.Random(3)
    training = {random_scene(rng).triple for _ in range(3000)}
    assert not training & HELD_OUT
    every = {t for t in itertools.product(COLOURS, SHAPES, COLOURS) if t[0] != t[2]}
    assert training == every - HELD_OUT  # all 152 other triples are drawn
    assert {
        held.triple for held in (random_scene(rng, held_out=True) for _ in range(200))
    } <= HELD_OUT


def test_captions_name_what_the_scene_fixes_in_several_phrasings() -> None:
    rng = random.Random(5)
    phrasings = set()
    for _ in range(300):
        scene = random_scene(rng)
        text = caption(scene, rng)
        words = text.replace(",", "").split()
        assert {scene.colour, scene.shape, scene.background} <= set(words), text
        if scene.size:
            assert scene.size in words, text
        if scene.position:
            assert scene.position in words or ("middle" in words and scene.position == "centre")
        phrasings.add(("background" in words, "," in text, text.startswith(("a ", "an "))))
    assert len(phrasings) >= 3
    for seed in range(40):
        text = caption(Scene("orange", "circle", "orange"), random.Random(seed))
        assert " a orange" not in f" {text}", text


def test_a_stray_speck_at_an_edge_does_not_change_the_shape() -> None:
    rng = random.Random(3)
    image = draw(Scene("red", "circle", "blue"), rng)
    image.putpixel((0, 62), PALETTE["yellow"])  # a decoder's speck in a corner
    image.putpixel((1, 20), PALETTE["white"])
    found = detect(image)
    assert (found.colour, found.shape, found.size, found.position) == (
        "red",
        "circle",
        "medium",
        "centre",
    )
