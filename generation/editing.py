"""Editing a finished image as Midjourney does under an upscale: Zoom Out, Make Square, Pan and
Vary (Region). Each is the parent image on a canvas, a mask of what the model paints anew, and,
after the render, the parent composited back outside the mask.

The job keeps the edit's description (``Edit.to_dict``), never the mask: ``plan`` makes the same
canvas and mask from the same parent image every time, so ``reproduce`` makes the same job.
Every box is snapped to the model's latent grid (its size multiple), so the mask's edges fall
on latent cells; every pixel outside the mask is the parent's, exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageStat

from generation.errors import InvalidRequest

ZOOM_FACTORS = (1.5, 2.0)
DIRECTIONS = ("left", "right", "up", "down")
GRID = 3  # Vary (Region) picks cells of a 3×3 grid, numbered 1-9 by rows from the top left
# Regions by name: the halves, the centre cell and the border around it.
AREAS = ("left", "right", "top", "bottom", "centre", "border")
OPS = ("zoom", "square", "pan", "region")
# How a member is shown the cells and areas (Discord's picker, the guide drawn on the image).
CELL_NAMES = (
    "top left",
    "top centre",
    "top right",
    "middle left",
    "centre",
    "middle right",
    "bottom left",
    "bottom centre",
    "bottom right",
)
AREA_NAMES = {
    "left": "Left half",
    "right": "Right half",
    "top": "Top half",
    "bottom": "Bottom half",
    "centre": "Centre",
    "border": "Border (all but the centre)",
}

Box = tuple[int, int, int, int]  # left, top, right, bottom: pixels, right and bottom exclusive


@dataclasses.dataclass(frozen=True, slots=True)
class Edit:
    """What to do to the parent image (its description, as the job records it)."""

    op: str  # one of OPS
    factor: float = 1.0  # zoom: how much smaller the parent becomes in the same frame
    direction: str = ""  # pan: the side that grows
    cells: tuple[int, ...] = ()  # region: the grid's cells, 1-9
    area: str = ""  # region: a named area instead of cells
    multiple: int = 8  # the model's latent grid, in pixels: every box is on it

    @classmethod
    def zoom(cls, factor: float) -> Edit:
        if factor not in ZOOM_FACTORS:
            listed = ", ".join(f"{f:g}" for f in ZOOM_FACTORS)
            raise InvalidRequest("factor", f"must be one of {listed}, not {factor:g}")
        return cls("zoom", factor=factor)

    @classmethod
    def square(cls) -> Edit:
        return cls("square")

    @classmethod
    def pan(cls, direction: str) -> Edit:
        if direction not in DIRECTIONS:
            raise InvalidRequest(
                "direction", f"must be one of {', '.join(DIRECTIONS)}, not {direction!r}"
            )
        return cls("pan", direction=direction)

    @classmethod
    def region(cls, cells: tuple[int, ...] = (), area: str = "") -> Edit:
        if bool(cells) == bool(area):
            raise InvalidRequest("cells", "name the cells (1-9) or an area, one of the two")
        if area and area not in AREAS:
            raise InvalidRequest("area", f"must be one of {', '.join(AREAS)}, not {area!r}")
        if any(not 1 <= cell <= GRID * GRID for cell in cells):
            raise InvalidRequest("cells", f"must be from 1 to {GRID * GRID}")
        if len(set(cells)) == GRID * GRID:
            raise InvalidRequest("cells", "all nine is the whole image: ask for a variation")
        return cls("region", cells=tuple(sorted(set(cells))), area=area)

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"op": self.op, "multiple": self.multiple}
        if self.op == "zoom":
            values["factor"] = self.factor
        elif self.op == "pan":
            values["direction"] = self.direction
        elif self.op == "region":
            values.update({"cells": list(self.cells)} if self.cells else {"area": self.area})
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Edit:
        """The recorded description, checked again (a row is data, not a promise): any
        flaw in it is refused as an ``InvalidRequest`` naming the edit."""
        try:
            return cls._read(values)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidRequest("edit", f"is not a description this bot reads: {error}") from None

    @classmethod
    def _read(cls, values: Mapping[str, Any]) -> Edit:
        op = values.get("op")
        if op == "zoom":
            edit = cls.zoom(float(values["factor"]))
        elif op == "square":
            edit = cls.square()
        elif op == "pan":
            edit = cls.pan(str(values["direction"]))
        elif op == "region":
            cells = tuple(int(cell) for cell in values.get("cells") or ())
            edit = cls.region(cells, str(values.get("area") or ""))
        else:
            raise InvalidRequest("edit", f"is not an edit this bot makes: {op!r}")
        multiple = int(values.get("multiple", 8))
        if multiple not in (8, 16, 32, 64):
            raise InvalidRequest("edit", f"has no latent grid of {multiple} pixels")
        return dataclasses.replace(edit, multiple=multiple)

    def describe(self) -> str:
        if self.op == "zoom":
            return f"Zoom Out {self.factor:g}×"
        if self.op == "square":
            return "Make Square"
        if self.op == "pan":
            return f"Pan {self.direction}"
        where = self.area or "cells " + ", ".join(map(str, self.cells))
        return f"Vary (Region): {where}"


def region_of(where: str) -> Edit:
    """The region written as cells ("1,2,5") or an area ("left"), as Discord's region form
    names it in its custom id."""
    if where[:1].isdigit():
        try:
            cells = tuple(int(cell) for cell in where.split(","))
        except ValueError:
            raise InvalidRequest("cells", f"must be numbers 1-9, not {where!r}") from None
        return Edit.region(cells=cells)
    return Edit.region(area=where)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What the model is given: the canvas (the output's size) and the mask (255: paint)."""

    canvas: Image.Image
    mask: Image.Image
    feather: int  # pixels inside the mask's edge over which the new blends into the old

    @property
    def size(self) -> tuple[int, int]:
        return self.canvas.size


def _snap(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def output_size(edit: Edit, width: int, height: int, multiple: int) -> tuple[int, int]:
    """The size the edit makes from a ``width`` × ``height`` parent (before any image is read:
    for the request's checks and its price)."""
    if edit.op == "square":
        if width == height:
            raise InvalidRequest("edit", "the image is square already")
        side = max(width, height)
        return side, side
    if edit.op == "pan":
        if edit.direction in ("left", "right"):
            return width + _snap(width / 2, multiple), height
        return width, height + _snap(height / 2, multiple)
    return width, height


def _inner_box(edit: Edit, parent: tuple[int, int], size: tuple[int, int], multiple: int) -> Box:
    """Where the parent (shrunk, for a zoom) goes on the canvas."""
    width, height = parent
    out_w, out_h = size
    if edit.op == "zoom":
        width = _snap(out_w / edit.factor, multiple)
        height = _snap(out_h / edit.factor, multiple)
    if edit.op in ("zoom", "square"):
        left = min(out_w - width, _snap((out_w - width) / 2, multiple))
        top = min(out_h - height, _snap((out_h - height) / 2, multiple))
    else:  # pan: the old image on the side that does not grow
        left = out_w - width if edit.direction == "left" else 0
        top = out_h - height if edit.direction == "up" else 0
    return left, top, left + width, top + height


def region_boxes(edit: Edit, width: int, height: int, multiple: int) -> list[Box]:
    """The boxes of a region edit, on the latent grid."""
    xs = [0, *(_snap(width * i / GRID, multiple) for i in range(1, GRID)), width]
    ys = [0, *(_snap(height * i / GRID, multiple) for i in range(1, GRID)), height]

    def cell(number: int) -> Box:
        column, row = (number - 1) % GRID, (number - 1) // GRID
        return xs[column], ys[row], xs[column + 1], ys[row + 1]

    half_w, half_h = _snap(width / 2, multiple), _snap(height / 2, multiple)
    areas: dict[str, list[Box]] = {
        "left": [(0, 0, half_w, height)],
        "right": [(half_w, 0, width, height)],
        "top": [(0, 0, width, half_h)],
        "bottom": [(0, half_h, width, height)],
        "centre": [cell(5)],
        "border": [cell(n) for n in range(1, GRID * GRID + 1) if n != 5],
    }
    return areas[edit.area] if edit.area else [cell(n) for n in edit.cells]


def plan(edit: Edit, parent: Image.Image) -> Plan:
    """The canvas and mask ``edit`` makes from ``parent`` (its size on the edit's latent
    grid, as every image the bot makes is)."""
    multiple = edit.multiple
    parent = parent.convert("RGB")
    width, height = parent.size
    if edit.op == "region":
        mask = Image.new("L", parent.size, 0)
        for box in region_boxes(edit, width, height, multiple):
            mask.paste(255, box)
        return Plan(parent.copy(), mask, feather=max(1, multiple // 4))
    size = output_size(edit, width, height, multiple)
    box = _inner_box(edit, parent.size, size, multiple)
    # What the painted area starts as: the image's mean colour (the model paints it over).
    fill = tuple(round(value) for value in ImageStat.Stat(parent).mean)
    canvas = Image.new("RGB", size, fill)
    placed = parent.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS)
    canvas.paste(placed, box[:2])
    mask = Image.new("L", size, 255)
    mask.paste(0, box)
    return Plan(canvas, mask, feather=0)


def composite(plan: Plan, painted: Image.Image) -> Image.Image:
    """The model's image inside the mask, the canvas (the parent) outside it, exactly; a
    region's new pixels blend into the old over ``feather`` pixels inside its edge."""
    painted = painted.convert("RGB")
    if painted.size != plan.size:
        painted = painted.resize(plan.size, Image.Resampling.LANCZOS)
    alpha = _feathered(plan.mask, plan.feather) if plan.feather else plan.mask
    return Image.composite(painted, plan.canvas, alpha)


def _feathered(mask: Image.Image, feather: int) -> Image.Image:
    """The mask shrunk, then blurred, then cut to itself: soft inside its edges where they
    meet the old image, 0 outside it. The image's own border is no edge (the mask is
    extended past it first, so a cell in a corner is new right to the corner)."""
    margin = 2 * feather
    extended = Image.fromarray(np.pad(np.asarray(mask), margin, mode="edge"))
    shrunk = extended.filter(ImageFilter.MinFilter(2 * feather + 1))
    blurred = shrunk.filter(ImageFilter.BoxBlur(feather))
    width, height = mask.size
    soft = blurred.crop((margin, margin, margin + width, margin + height))
    return ImageChops.multiply(soft, mask)


def cell_guide(image: Image.Image, multiple: int, side: int = 384) -> Image.Image:
    """The image, at most ``side`` pixels on its long side, with the 3×3 grid of Vary
    (Region) drawn over it (the cells' lines where the edit puts them) and each cell's
    number in its middle: what the member picks from."""
    image = image.convert("RGB")
    width, height = image.size
    scale = min(1.0, side / max(width, height))
    shown = image.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS
    )
    draw = ImageDraw.Draw(shown)
    font = ImageFont.load_default(size=max(12, round(min(shown.size) / 8)))
    for number in range(1, GRID * GRID + 1):
        left, top, right, bottom = (
            round(value * scale)
            for value in region_boxes(Edit("region", cells=(number,)), width, height, multiple)[0]
        )
        draw.rectangle((left, top, right - 1, bottom - 1), outline=(255, 255, 255), width=2)
        draw.text(
            ((left + right) / 2, (top + bottom) / 2),
            str(number),
            fill=(255, 255, 255),
            font=font,
            anchor="mm",
            stroke_width=3,
            stroke_fill=(0, 0, 0),
        )
    return shown
