"""Editing a finished image (Zoom Out, Make Square, Pan, Vary (Region)): the canvas and mask on
the latent grid, the parent's pixels kept exactly outside the mask, and the engine painting
into the canvas on the model's own weights."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from PIL import Image

from generation.editing import (
    Edit,
    cell_guide,
    composite,
    output_size,
    plan,
    region_boxes,
    region_of,
)
from generation.engine import RenderSpec
from generation.errors import InvalidRequest


def _parent(width: int = 64, height: int = 64, seed: int = 1) -> Image.Image:
    """An image whose every pixel differs from its neighbours: any shift or blend shows."""
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(width * height * 3))
    return Image.frombytes("RGB", (width, height), data)


def _painted(size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size, (0, 255, 0))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_zoom_out_2x_keeps_the_size_with_the_old_image_half_size_in_the_middle() -> None:
    parent = _parent()
    made = plan(Edit.zoom(2.0), parent)
    assert made.size == (64, 64)
    result = _pixels(composite(made, _painted(made.size)))
    half = _pixels(parent.resize((32, 32), Image.Resampling.LANCZOS))
    assert (result[16:48, 16:48] == half).all(), "the old image, half-size, in the middle"
    assert (result[:16] == (0, 255, 0)).all() and (result[:, 48:] == (0, 255, 0)).all()
    # 1.5× on a wider image: the box on the 8-pixel latent grid, the size unchanged.
    wide = plan(Edit.zoom(1.5), _parent(96, 64))
    assert wide.size == (96, 64)
    box = wide.mask.point(lambda v: 255 - v).getbbox()
    assert box is not None and all(edge % 8 == 0 for edge in box)
    assert (box[2] - box[0], box[3] - box[1]) == (64, 40)


def test_pan_widens_by_half_and_keeps_the_old_pixels_on_the_far_side() -> None:
    parent = _parent()
    right = plan(Edit.pan("right"), parent)
    assert right.size == (96, 64)
    result = _pixels(composite(right, _painted(right.size)))
    assert (result[:, :64] == _pixels(parent)).all(), "the old pixels on the left, exactly"
    assert (result[:, 64:] == (0, 255, 0)).all()
    up = plan(Edit.pan("up"), parent)
    assert up.size == (64, 96)
    result = _pixels(composite(up, _painted(up.size)))
    assert (result[32:] == _pixels(parent)).all() and (result[:32] == (0, 255, 0)).all()
    assert output_size(Edit.pan("left"), 64, 64, 8) == (96, 64)


def test_make_square_pads_to_the_long_side() -> None:
    parent = _parent(96, 64)
    made = plan(Edit.square(), parent)
    assert made.size == (96, 96)
    result = _pixels(composite(made, _painted(made.size)))
    assert (result[16:80] == _pixels(parent)).all()
    with pytest.raises(InvalidRequest, match="square already"):
        plan(Edit.square(), _parent(64, 64))


def test_a_region_changes_only_its_cells_and_blends_inside_their_edge() -> None:
    parent = _parent()
    edit = Edit.region(cells=(1, 2, 5))
    made = plan(edit, parent)
    boxes = region_boxes(edit, 64, 64, 8)
    assert all(edge % 8 == 0 for box in boxes for edge in box)
    result = _pixels(composite(made, _painted(made.size)))
    inside = np.asarray(made.mask) > 0
    old = _pixels(parent)
    assert (result[~inside] == old[~inside]).all(), "outside the cells: the parent's, exactly"
    new = (result == (0, 255, 0)).all(axis=-1)
    for left, top, right, bottom in boxes:  # inside, past the blend at its edge: all new
        assert new[top + 5 : bottom - 5, left + 5 : right - 5].all()
    assert not new[~inside].any()
    # The blend is a thin band inside the edge: most of the region is the new image alone.
    assert new[inside].mean() > 0.4
    blended = inside & ~new & (result != old).any(axis=-1)
    assert blended.any() and not blended[~inside].any()
    # Every named area is a region; the whole image is not.
    for area in ("left", "right", "top", "bottom", "centre", "border"):
        assert np.asarray(plan(Edit.region(area=area), parent).mask).any()
    with pytest.raises(InvalidRequest, match="whole image"):
        Edit.region(cells=tuple(range(1, 10)))


def test_an_edit_is_recorded_as_its_description_and_read_back_checked() -> None:
    for edit in (
        Edit.zoom(1.5),
        Edit.square(),
        Edit.pan("down"),
        Edit.region(cells=(5, 2)),
        Edit.region(area="border"),
    ):
        assert Edit.from_dict(edit.to_dict()) == edit
    assert Edit.region(cells=(5, 2)).to_dict() == {"op": "region", "multiple": 8, "cells": [2, 5]}
    assert Edit.zoom(2.0).describe() == "Zoom Out 2×"
    for bad, option in (
        ({"op": "zoom", "factor": 3}, "factor"),
        ({"op": "pan", "direction": "north"}, "direction"),
        ({"op": "region", "cells": [0]}, "cells"),
        ({"op": "melt"}, "edit"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            Edit.from_dict(bad)
        assert refused.value.option == option


def test_the_engine_paints_the_mask_on_the_models_own_weights(engine: Any) -> None:
    parent = _parent()
    made = plan(Edit.pan("right"), parent)
    spec = RenderSpec(
        prompt="a red circle",
        negative_prompt="",
        seeds=(3,),
        steps=4,
        guidance=5.0,
        width=made.size[0],
        height=made.size[1],
        scheduler=engine.model.scheduler,
        init_image=made.canvas,
        mask_image=made.mask,
        kind="pan",
    )
    painted = engine.render(spec)
    assert [image.size for image in painted] == [(96, 64)]
    inpaint = engine._ensure(engine.model).inpaint
    assert inpaint.unet is engine.txt2img.unet and inpaint.vae is engine.txt2img.vae, (
        "the same weights, no second copy"
    )
    result = _pixels(composite(made, painted[0]))
    assert (result[:, :64] == _pixels(parent)).all()
    assert np.abs(result[:, 64:] - _pixels(made.canvas)[:, 64:]).mean() > 5, "painted anew"
    # The same call again is the same image: the edit is reproducible from its description.
    again = engine.render(spec)
    assert (_pixels(again[0]) == _pixels(painted[0])).all()


def test_an_edit_request_is_refused_clearly_before_its_size(model: Any) -> None:
    import dataclasses

    from generation.requests import GenerationRequest, Limits, validate
    from storage.models import JobKind

    def edit_request(edit: dict[str, Any], width: int = 64) -> GenerationRequest:
        return GenerationRequest(
            "a red circle",
            user_id=1,
            kind=JobKind.EDIT,
            parent_job_id=1,
            parent_image_index=0,
            width=width,
            height=64,
            edit=edit,
        )

    fixed = dataclasses.replace(model, fixed_size=True)
    with pytest.raises(InvalidRequest, match="Pan and Make Square do not") as refused:
        validate(edit_request(Edit.pan("right").to_dict(), width=96), Limits(), fixed)
    assert refused.value.option == "edit"
    assert validate(edit_request(Edit.zoom(2.0).to_dict()), Limits(), fixed).edit is not None
    no_inpainting = dataclasses.replace(model, inpainting=False)
    with pytest.raises(InvalidRequest, match="cannot paint into an image"):
        validate(edit_request(Edit.zoom(2.0).to_dict()), Limits(), no_inpainting)
    for broken in ({"op": "pan"}, {"op": "zoom", "factor": "lots"}, {"op": "region", "cells": 5}):
        with pytest.raises(InvalidRequest) as refused:
            validate(edit_request(broken), Limits(), model)
        assert refused.value.option == "edit"


def test_the_cell_guide_draws_the_cells_where_the_edit_puts_them_and_numbers_each() -> None:
    black = Image.new("RGB", (768, 512))
    guide = cell_guide(black, 8)
    assert guide.size == (384, 256)  # at most 384 on the long side
    pixels = np.asarray(guide)
    for left, top, right, bottom in region_boxes(Edit.region(area="border"), 768, 512, 8):
        # each cell's edges are drawn white, at half the edit's own boxes
        assert (pixels[top // 2 : bottom // 2, left // 2] == 255).all()
        assert (pixels[top // 2, left // 2 : right // 2] == 255).all()
    centre = pixels[96:160, 160:224]  # cell 5's middle: its number, white on black
    assert (centre == 255).any() and (centre == 0).any()
    small = cell_guide(Image.new("RGB", (64, 64)), 8)
    assert small.size == (64, 64), "a small image is not enlarged"


def test_a_region_form_names_its_cells_or_area_and_nothing_else() -> None:
    assert region_of("1,2,5") == Edit.region(cells=(1, 2, 5))
    assert region_of("left") == Edit.region(area="left")
    for bad in ("nowhere", "1,2,3,4,5,6,7,8,9"):
        with pytest.raises(InvalidRequest):
            region_of(bad)
