"""PNGs carry their recipe where Stable Diffusion tools look for it."""

from __future__ import annotations

import dataclasses
import io
import random

import pytest
from PIL import Image

from generation.imaging import (
    TooLargeToFit,
    encode_png,
    encode_video,
    fit_file,
    infotext,
    make_grid,
    pixel_sha256,
    read_recipe,
)
from storage.models import utcnow
from storage.records import JobRecord

JOB = JobRecord(
    id=12,
    kind="variation",
    parent_job_id=3,
    parent_image_index=1,
    user_id=1,
    guild_id=None,
    channel_id=None,
    channel_nsfw=None,
    reproduces_job_id=None,
    channel_public=None,
    interaction_id=None,
    prompt="a red circle on a blue background",
    negative_prompt="blurry, text",
    seed=123,
    steps=20,
    guidance=7.5,
    width=512,
    height=768,
    count=4,
    strength=0.6,
    init_image_path=None,
    init_image_sha256=None,
    scheduler="EulerAncestralDiscreteScheduler",
    scheduler_options={"timestep_spacing": "linspace"},
    sampler="Euler a",
    vae_tiling=None,
    loras=[],
    preset=None,
    raw_prompt=None,
    model_id="stabilityai/sd-turbo",
    model_revision="b261bac6fd2cf515557d5d0707481eafa0485ec2",
    dtype="float16",
    device_kind="cuda",
    torch_threads=1,
    library_versions={"torch": "2.4.0"},
    engine_details={},
    cost=1.0,
    weight=1.0,
    start_tag=None,
    virtual_start=None,
    gpu_seconds=None,
    status="succeeded",
    attempts=1,
    max_attempts=3,
    runs=1,
    not_before=None,
    deferred_since=None,
    lease_owner=None,
    lease_expires_at=None,
    cancel_requested=False,
    created_at=utcnow(),
    started_at=None,
    finished_at=None,
    error=None,
)


def test_infotext_follows_the_automatic1111_format() -> None:
    assert infotext(JOB, 125, "stabilityai/sd-turbo") == (
        "a red circle on a blue background\n"
        "Negative prompt: blurry, text\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 125, Size: 512x768, "
        "Model hash: b261bac6fd, Model: stabilityai/sd-turbo, Denoising strength: 0.6, "
        "Version: imagine-bot"
    )


def test_infotext_leaves_out_an_empty_negative_prompt() -> None:
    text = infotext(dataclasses.replace(JOB, negative_prompt="", strength=None), 1, "m")
    assert text.splitlines()[1].startswith("Steps: 20, Sampler: Euler a")
    assert "Denoising strength" not in text


def test_png_carries_parameters_and_the_full_recipe() -> None:
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    png = encode_png(image, JOB, 2, "sd-turbo")
    with Image.open(io.BytesIO(png)) as loaded:
        assert loaded.text["parameters"].splitlines()[0] == JOB.prompt  # type: ignore[attr-defined]
        assert "Seed: 125" in loaded.text["parameters"]  # type: ignore[attr-defined]
        assert pixel_sha256(loaded) == pixel_sha256(image)
    recipe = read_recipe(png)
    assert (recipe["job_id"], recipe["image_index"], recipe["image_seed"]) == (12, 2, 125)
    assert recipe["model_revision"] == JOB.model_revision and recipe["strength"] == 0.6


def test_pixel_hash_ignores_metadata_but_not_pixels() -> None:
    image = Image.new("RGB", (8, 8), (0, 0, 255))
    other = image.copy()
    other.putpixel((3, 3), (0, 0, 254))
    assert pixel_sha256(image) != pixel_sha256(other)
    assert pixel_sha256(Image.new("RGB", (4, 16))) != pixel_sha256(Image.new("RGB", (16, 4)))


def test_grid_places_images_two_to_a_row_in_index_order() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    grid = make_grid([Image.new("RGB", (4, 4), colour) for colour in colours])
    assert grid.size == (8, 8)
    assert [grid.getpixel(point) for point in [(0, 0), (4, 0), (0, 4), (4, 4)]] == colours
    assert make_grid([Image.new("RGB", (4, 4))] * 3).size == (8, 8)
    assert make_grid([Image.new("RGB", (4, 4))]).size == (4, 4)


def _detailed_png(size: int) -> bytes:
    rng = random.Random(size)
    texture = Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3))
    picture = texture.resize((size, size), Image.Resampling.BICUBIC)
    return encode_png(picture, dataclasses.replace(JOB, prompt="ü😀 " * 300), 0, "sd-turbo")


def test_a_file_within_the_limit_goes_as_the_png_it_is() -> None:
    png = _detailed_png(256)
    fitted = fit_file(png, len(png))
    assert (fitted.data, fitted.extension, fitted.reduced) == (png, "png", False)


@pytest.mark.parametrize("limit", [10 * 2**20 // 16, 64 * 1024, 20 * 1024])
def test_a_file_over_the_limit_becomes_a_webp_within_it_carrying_the_recipe(limit: int) -> None:
    png = _detailed_png(1024)
    assert len(png) > limit
    fitted = fit_file(png, limit)
    assert fitted.reduced and fitted.extension == "webp"
    assert len(fitted.data) <= limit
    assert fitted.original_size == (1024, 1024) and fitted.original_bytes == len(png)
    with Image.open(io.BytesIO(fitted.data)) as image:
        image.load()
        assert image.format == "WEBP" and image.size == fitted.size
        comment = image.getexif().get_ifd(0x8769)[0x9286]
    assert comment.startswith(b"UNICODE\0")
    assert comment[8:].decode("utf-16-be") == infotext(
        dataclasses.replace(JOB, prompt="ü😀 " * 300), JOB.seed, "sd-turbo"
    )
    assert read_recipe(fitted.data) == read_recipe(png)


def test_a_limit_not_even_a_thumbnail_fits_is_said_so() -> None:
    with pytest.raises(TooLargeToFit):
        fit_file(_detailed_png(256), 50)


def test_a_video_keeps_every_frame_and_shrinks_to_fit_its_limit() -> None:
    rng = random.Random(4)
    frames = [Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3)) for _ in range(5)] + [
        Image.frombytes("RGB", (1024, 512), rng.randbytes(1024 * 512 * 3))
    ]
    video = Image.open(io.BytesIO(encode_video(frames)))
    assert (video.format, video.n_frames, video.size) == ("WEBP", 6, (512, 256))
    durations = []
    for index in range(video.n_frames):
        video.seek(index)
        video.load()
        durations.append(video.info["duration"])
    assert durations == [120] * 5 + [2000], "steps shown briefly, the result held"
    small = encode_video(frames, limit=60_000)  # noise: the worst case to compress
    assert len(small) <= 60_000
    shrunk = Image.open(io.BytesIO(small))
    assert shrunk.n_frames == 6 and shrunk.size[0] < 512
