"""The embedded model's world: one shape in one colour on a plain background, and its captions.

Scenes are drawn at 4× and box-downsampled to 64×64, so edges are anti-aliased like the
images a diffusion model makes. A fixed set of colour/shape/background triples is held out of
training, so adherence can be measured on combinations the model never saw.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Literal

from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "orange": (245, 135, 20),
    "purple": (135, 50, 175),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")

Shape = Literal["circle", "square", "triangle"]

# Half the shape's side in pixels at 64×64, by size word (None: no size in the caption).
HALF_SIZES: dict[str | None, tuple[int, int]] = {
    "small": (8, 11),
    None: (13, 18),
    "large": (21, 25),
}
OFFSET = 15  # how far a position word moves the shape from the centre
JITTER = 3  # random shift of every shape, in pixels


def _held_out_triples(count: int = 16, seed: int = 2024) -> frozenset[tuple[str, str, str]]:
    """Colour/shape/background triples never shown in training; every colour stays seen."""
    rng = random.Random(seed)
    triples = [t for t in itertools.product(COLOURS, SHAPES, COLOURS) if t[0] != t[2]]
    rng.shuffle(triples)
    return frozenset(triples[:count])


HELD_OUT = _held_out_triples()


@dataclasses.dataclass(frozen=True, slots=True)
class Scene:
    """What a caption asks for; ``size`` and ``position`` are None when the caption is silent."""

    colour: str
    shape: str
    background: str
    size: str | None = None
    position: str | None = None

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.background)


def random_scene(rng: random.Random, *, held_out: bool = False) -> Scene:
    """A scene from the training triples, or (``held_out``) from the held-out ones."""
    while True:
        colour, background = rng.sample(COLOURS, 2)
        shape = rng.choice(SHAPES)
        if ((colour, shape, background) in HELD_OUT) == held_out:
            break
    size = rng.choice((None, None, *SIZES))
    # A large shape fills the frame: "on the left" would not move it far enough to see.
    position = rng.choice(
        (None, None, None, "centre" if size == "large" else rng.choice(POSITIONS))
    )
    return Scene(colour, shape, background, size, position)


def caption(scene: Scene, rng: random.Random) -> str:
    """One of several phrasings that say everything the scene fixes."""
    size = f"{scene.size} " if scene.size else ""
    where = ""
    if scene.position == "centre":
        where = rng.choice((" in the centre", " in the middle"))
    elif scene.position in ("left", "right"):
        where = rng.choice((f" on the {scene.position}", f" at the {scene.position}"))
    elif scene.position:
        where = f" at the {scene.position}"
    c, s, b = scene.colour, scene.shape, scene.background
    thing = f"{size}{c} {s}"
    phrasings = (
        f"{_a(thing)} {thing}{where} on {_a(b)} {b} background",
        f"{thing}{where}, {b} background",
        f"{_a(thing)} {thing}{where} on {b}",
        f"{thing} on {b}{',' if where else ''}{where}",
    )
    return rng.choice(phrasings)


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def draw(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene as a 64×64 RGB image, anti-aliased by drawing at 4× and downsampling."""
    low, high = HALF_SIZES[scene.size]
    half = rng.uniform(low, high)
    dx, dy = {
        None: (0, 0),
        "centre": (0, 0),
        "left": (-OFFSET, 0),
        "right": (OFFSET, 0),
        "top": (0, -OFFSET),
        "bottom": (0, OFFSET),
    }[scene.position]
    margin = 1.0
    cx = min(max(SIZE / 2 + dx + rng.uniform(-JITTER, JITTER), half + margin), SIZE - half - margin)
    cy = min(max(SIZE / 2 + dy + rng.uniform(-JITTER, JITTER), half + margin), SIZE - half - margin)
    k = SUPERSAMPLE
    image = Image.new("RGB", (SIZE * k, SIZE * k), PALETTE[scene.background])
    pen = ImageDraw.Draw(image)
    box = [(cx - half) * k, (cy - half) * k, (cx + half) * k, (cy + half) * k]
    fill = PALETTE[scene.colour]
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon(
            [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill
        )
    return image.resize((SIZE, SIZE), Image.Resampling.BOX)
