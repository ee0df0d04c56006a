"""Image post-processing: grids, pixel hashes, and PNGs that carry their recipe."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from generation.loras import tag
from generation.samplers import familiar_name
from storage.records import JobRecord

RECIPE_CHUNK = "imagine-bot"
# Where a WebP (or JPEG) keeps the same: EXIF's ImageDescription holds the JSON recipe (ASCII),
# UserComment the infotext, as AUTOMATIC1111 writes it for JPEG and WebP.
IMAGE_DESCRIPTION = 0x010E
EXIF_IFD = 0x8769
USER_COMMENT = 0x9286


def pixel_sha256(image: Image.Image) -> str:
    """sha256 of the RGB pixels and size, so PNG metadata or compression never changes it."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def make_grid(images: Sequence[Image.Image], labels: Sequence[str] = ()) -> Image.Image:
    """Tile images two to a row (a 2×2 grid for four), in index order; ``labels`` (a
    comparison's values) written on a dark band along each image's foot."""
    columns = 1 if len(images) == 1 else 2
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    if labels:
        _label(grid, labels, columns, (width, height))
    return grid


def _label(grid: Image.Image, labels: Sequence[str], columns: int, size: tuple[int, int]) -> None:
    width, height = size
    band = max(12, height // 8)
    font = ImageFont.load_default(size=max(9, band * 3 // 4))
    draw = ImageDraw.Draw(grid, "RGBA")
    for index, label in enumerate(labels):
        left, top = (index % columns) * width, (index // columns) * height
        draw.rectangle(
            (left, top + height - band, left + width - 1, top + height - 1), (0, 0, 0, 170)
        )
        draw.text(
            (left + width / 2, top + height - band / 2),
            label,
            fill=(255, 255, 255),
            font=font,
            anchor="mm",
        )


def image_seed(job: JobRecord, index: int) -> int:
    """The seed image ``index`` was made with: its cell's, in a comparison (each cell is its
    own recipe); else the grid's seed + i."""
    cells = (job.compare or {}).get("cells")
    if cells:
        return int(cells[index]["seed"])
    return job.seed + index


def _format_number(value: float) -> str:
    return f"{value:g}"


def infotext(job: JobRecord, seed: int, model_name: str) -> str:
    """The ``parameters`` text that AUTOMATIC1111-compatible tools read and show."""
    # A1111 keeps a LoRA's <lora:NAME:WEIGHT> in the prompt, and its short hash in a field.
    tags = [tag(lora["name"], float(lora["weight"])) for lora in job.loras]
    lines = [" ".join([job.prompt, *tags])]
    if job.negative_prompt:
        lines.append(f"Negative prompt: {job.negative_prompt}")
    fields = [
        ("Steps", str(job.steps)),
        ("Sampler", familiar_name(job.sampler, job.scheduler)),
        ("CFG scale", _format_number(job.guidance)),
        ("Seed", str(seed)),
        ("Size", f"{job.width}x{job.height}"),
        ("Model hash", job.model_revision[:10]),
        ("Model", model_name),
    ]
    if job.strength is not None:
        fields.append(("Denoising strength", _format_number(job.strength)))
    if job.loras:
        hashes = ", ".join(f"{lora['name']}: {lora['short_hash']}" for lora in job.loras)
        fields.append(("Lora hashes", f'"{hashes}"'))
    fields.append(("Version", "imagine-bot"))
    lines.append(", ".join(f"{key}: {value}" for key, value in fields))
    return "\n".join(lines)


def recipe_dict(job: JobRecord) -> dict[str, Any]:
    """A job's full recipe and id: the PNG's JSON chunk and the CLI's ``--json`` build on it."""
    return {
        "job_id": job.id,
        "kind": job.kind,
        "parent_job_id": job.parent_job_id,
        "parent_image_index": job.parent_image_index,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "steps": job.steps,
        "guidance": job.guidance,
        "width": job.width,
        "height": job.height,
        "count": job.count,
        "strength": job.strength,
        "init_image_sha256": job.init_image_sha256,
        "scheduler": job.scheduler,
        "scheduler_options": job.scheduler_options,
        "sampler": job.sampler,
        "vae_tiling": job.vae_tiling,
        "loras": job.loras,
        "edit": job.edit,  # an edit's description: the canvas and mask, made again from it
        "video": job.video,
        "compare": job.compare,
        "preset": job.preset,
        "model_id": job.model_id,
        "model_revision": job.model_revision,
        "dtype": job.dtype,
        "device_kind": job.device_kind,
        "torch_threads": job.torch_threads,
        "library_versions": job.library_versions,
        "engine_details": job.engine_details,
    }


def encode_png(
    image: Image.Image, job: JobRecord, image_index: int | None, model_name: str
) -> bytes:
    """PNG bytes with a ``parameters`` infotext chunk and a JSON recipe chunk."""
    info = PngInfo()
    seed = job.seed if image_index is None else image_seed(job, image_index)
    info.add_text("parameters", infotext(job, seed, model_name))
    recipe = {
        **recipe_dict(job),
        "image_index": image_index,
        "image_seed": None if image_index is None else seed,
    }
    info.add_itxt(RECIPE_CHUNK, json.dumps(recipe, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# --video: frames at most this on their long side, each shown this long, the last held; the
# file kept under Discord's smallest upload limit (10 MiB), with room for the message.
VIDEO_SIDE = 512
FRAME_MS = 120
LAST_FRAME_MS = 2000
VIDEO_BYTES = 8 * 2**20


def encode_video(frames: Sequence[Image.Image], limit: int = VIDEO_BYTES) -> bytes:
    """An animated WebP that loops: every frame at the last one's size (the finished grid,
    at most ``VIDEO_SIDE`` on its long side; the earlier ones, the steps' small previews,
    enlarged to it), made smaller until it fits in ``limit`` bytes. Every frame is kept."""
    if not frames:
        raise ValueError("a video needs a frame")
    width, height = frames[-1].size
    scale = min(1.0, VIDEO_SIDE / max(width, height))
    durations = [FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS]
    while True:
        size = (max(16, round(width * scale)), max(16, round(height * scale)))
        shown = [frame.convert("RGB").resize(size, Image.Resampling.BILINEAR) for frame in frames]
        buffer = io.BytesIO()
        shown[0].save(
            buffer,
            format="WEBP",
            save_all=True,
            append_images=shown[1:],
            duration=durations,
            loop=0,
            quality=80,
            method=4,
        )
        data = buffer.getvalue()
        if len(data) <= limit or max(size) <= 64:
            return data
        scale *= 0.75


def read_recipe(data: bytes) -> dict[str, Any]:
    """The JSON recipe in a PNG written by ``encode_png``, or in a file ``fit_file`` reduced."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            text = image.text[RECIPE_CHUNK]  # type: ignore[attr-defined]
        else:
            text = image.getexif()[IMAGE_DESCRIPTION]
    recipe: dict[str, Any] = json.loads(text)
    return recipe


@dataclasses.dataclass(frozen=True, slots=True)
class FittedFile:
    """An image file within a size limit: the PNG as it was, or a reduced WebP."""

    data: bytes
    extension: str  # "png" or "webp"
    size: tuple[int, int]
    original_size: tuple[int, int]
    original_bytes: int

    @property
    def reduced(self) -> bool:
        return self.extension != "png"


class TooLargeToFit(ValueError):
    """Not even a thumbnail of the image fits the limit."""


def fit_file(png: bytes, limit: int) -> FittedFile:
    """``png`` if it weighs at most ``limit`` bytes; else a high-quality WebP carrying the same
    recipe and infotext, then smaller ones, until it fits."""
    with Image.open(io.BytesIO(png)) as opened:
        opened.load()
        image, texts = opened.convert("RGB"), dict(getattr(opened, "text", {}))
    original = image.size
    if len(png) <= limit:
        return FittedFile(png, "png", original, original, len(png))
    exif = _exif(texts)
    data = b""
    for quality in (90, 80):
        data = _webp(image, quality, exif)
        if len(data) <= limit:
            return FittedFile(data, "webp", original, original, len(png))
    if len(exif.tobytes()) * 2 > limit:
        exif = Image.Exif()  # the recipe would crowd out the picture: the store keeps it
    current = image
    while current.width > 16 and current.height > 16:
        # Bytes go roughly with the area: aim a little under, and never shrink below half.
        scale = min(0.9, max(0.5, math.sqrt(limit / len(data)) * 0.95))
        size = (max(16, round(current.width * scale)), max(16, round(current.height * scale)))
        current = image.resize(size, Image.Resampling.LANCZOS)
        data = _webp(current, 80, exif)
        if len(data) <= limit:
            return FittedFile(data, "webp", current.size, original, len(png))
    raise TooLargeToFit(f"a {original[0]}×{original[1]} image does not fit in {limit} bytes")


def _exif(texts: dict[str, str]) -> Image.Exif:
    exif = Image.Exif()
    if RECIPE_CHUNK in texts:
        recipe = json.loads(texts[RECIPE_CHUNK])
        exif[IMAGE_DESCRIPTION] = json.dumps(recipe, sort_keys=True, ensure_ascii=True)
    if "parameters" in texts:
        comment = b"UNICODE\0" + texts["parameters"].encode("utf-16-be")
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = comment
    return exif


def _webp(image: Image.Image, quality: int, exif: Image.Exif) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=quality, method=4, exif=exif)
    return buffer.getvalue()
