"""A detector for the embedded world: reads colour, background, shape, size and position back.

Background from the border, foreground colour from the pixels far from it (the largest
connected patch of them: a stray speck at an edge is not part of the shape), shape from which
corners of the foreground's bounding box are filled (a square fills all four, an upright
triangle the two at the bottom, a circle none) with the fill ratio as a tie-breaker, size
and position from the bounding box.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from generation.embedded.world import PALETTE, SIZE, Scene

_NAMES = list(PALETTE)
_COLOURS = np.array([PALETTE[name] for name in _NAMES], dtype=np.float32)
FOREGROUND_DISTANCE = 80.0  # RGB distance from the background that counts as foreground
CORE_DISTANCE = 0.6  # fraction of the way to the foreground colour: the shape's core pixels
CORNER = 0.2  # corner patches are this fraction of the bounding box's side


@dataclasses.dataclass(frozen=True, slots=True)
class Detection:
    background: str
    colour: str | None
    shape: str | None
    size: str | None
    position: str | None


def nearest_colour(rgb: np.ndarray) -> str:
    """The palette colour nearest to ``rgb``."""
    distances = np.linalg.norm(_COLOURS - rgb.astype(np.float32), axis=1)
    return _NAMES[int(np.argmin(distances))]


def detect(image: Image.Image) -> Detection:
    """Read a 64×64 scene back; None where no foreground stands out from the background."""
    pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE)), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = nearest_colour(background_rgb)
    distance = np.linalg.norm(pixels - background_rgb, axis=2)
    mask = _largest_component(distance > FOREGROUND_DISTANCE)
    if mask.sum() < 6:
        return Detection(background, None, None, None, None)
    core = distance >= CORE_DISTANCE * distance[mask].max()
    colour = nearest_colour(np.median(pixels[core], axis=0))
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = mask[top:bottom, left:right]
    return Detection(
        background=background,
        colour=colour,
        shape=_shape(box),
        size=_size(max(bottom - top, right - left)),
        # The box's centre, not the centroid: a triangle's centroid sits low in its box.
        position=_position((left + right) / 2, (top + bottom) / 2),
    )


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected patch of ``mask``."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    height, width = mask.shape
    best, best_size, label = 0, 0, 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        label += 1
        labels[start] = label
        stack, size = [start], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else mask


def _shape(box: np.ndarray) -> str:
    height, width = box.shape
    h, w = max(1, round(height * CORNER)), max(1, round(width * CORNER))
    corners = {
        "top_left": box[:h, :w],
        "top_right": box[:h, -w:],
        "bottom_left": box[-h:, :w],
        "bottom_right": box[-h:, -w:],
    }
    filled = {name for name, patch in corners.items() if patch.mean() > 0.5}
    if len(filled) == 4:
        return "square"
    if filled >= {"bottom_left", "bottom_right"} and not filled & {"top_left", "top_right"}:
        return "triangle"
    fill_ratio = float(box.mean())
    # Rounded squares fill more of their box than circles (π/4 ≈ 0.79), triangles far less.
    if fill_ratio > 0.88:
        return "square"
    return "circle" if fill_ratio > 0.62 else "triangle"


def _size(side: int) -> str:
    if side < 25:
        return "small"
    return "large" if side > 38 else "medium"


def _position(x: float, y: float) -> str:
    dx, dy = x - SIZE / 2, y - SIZE / 2
    if max(abs(dx), abs(dy)) < 8:
        return "centre"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "bottom" if dy > 0 else "top"


ATTRIBUTES = ("colour", "background", "shape", "size", "position")


def score(scene: Scene, detection: Detection) -> dict[str, bool]:
    """Which attributes the image got right; size and position only where the caption said."""
    result = {
        "colour": detection.colour == scene.colour,
        "background": detection.background == scene.background,
        "shape": detection.shape == scene.shape,
    }
    if scene.size is not None:
        result["size"] = detection.size == scene.size
    if scene.position is not None:
        result["position"] = detection.position == scene.position
    return result
