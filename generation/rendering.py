"""From a stored job to a pipeline call, and where a job's files live."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from generation.comparing import cell
from generation.editing import Edit, Plan, composite, plan
from storage.db import Database
from storage.image_store import ImageStore
from storage.records import JobRecord

if TYPE_CHECKING:
    from generation.engine import RenderSpec


def image_key(job_id: int, attempt: int, index: int) -> str:
    """Each attempt writes its own files, so a worker that lost its lease overwrites nothing."""
    return f"images/{job_id}/{attempt}/{job_id}-{index}.png"


def grid_key(job_id: int, attempt: int) -> str:
    return f"images/{job_id}/{attempt}/{job_id}-grid.png"


def video_key(job_id: int, attempt: int) -> str:
    """--video's animated WebP: a frame per step, then the grid as made."""
    return f"images/{job_id}/{attempt}/{job_id}-video.webp"


def thumbs_prefix(job_id: int) -> str:
    """The web console's thumbnails of a job's images (made once, removed with its images)."""
    return f"thumbs/{job_id}"


def attempt_prefix(job_id: int, attempt: int) -> str:
    return f"images/{job_id}/{attempt}"


def edit_plan(job: JobRecord, init_image: Image.Image | None) -> Plan | None:
    """An edit's canvas and mask, made from its parent image and its description."""
    if job.edit is None:
        return None
    if init_image is None:
        raise LookupError(f"job {job.id} edits an image that is not there")
    return plan(Edit.from_dict(job.edit), init_image)


def finished(images: list[Image.Image], edit: Plan | None) -> list[Image.Image]:
    """What the model made, with an edit's parent composited back outside its mask."""
    return images if edit is None else [composite(edit, image) for image in images]


def render_plan(
    job: JobRecord, init_image: Image.Image | None
) -> tuple[list[RenderSpec], Plan | None]:
    """Every pipeline call a job stands for, in order (one; a comparison's, one per cell,
    as their settings differ), and an edit's plan, for ``finished``."""
    if job.compare:
        return [spec_for_job(cell(job, index), None) for index in range(job.count)], None
    edit = edit_plan(job, init_image)
    return [spec_for_job(job, init_image, edit)], edit


def spec_for_job(
    job: JobRecord, init_image: Image.Image | None, edit: Plan | None = None
) -> RenderSpec:
    """The exact pipeline call a job stands for: the same batch, seeds and settings (an
    edit paints its canvas where its mask says)."""
    from generation.engine import RenderSpec

    return RenderSpec(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        seeds=tuple(job.seed + i for i in range(job.count)),
        steps=job.steps,
        guidance=job.guidance,
        width=job.width,
        height=job.height,
        scheduler=job.scheduler,
        scheduler_options=dict(job.scheduler_options),
        vae_tiling=bool(job.vae_tiling),
        loras=tuple((lora["name"], lora["sha256"], float(lora["weight"])) for lora in job.loras),
        strength=job.strength,
        init_image=init_image if edit is None else edit.canvas,
        mask_image=None if edit is None else edit.mask,
        model_id=job.model_id,
        torch_threads=job.torch_threads,
        kind=job.kind,
    )


async def load_init_image(db: Database, store: ImageStore, job: JobRecord) -> Image.Image | None:
    """The image a variation, upscale or img2img job starts from; None for text-to-image.

    An uploaded start image is cropped to the job's aspect ratio and scaled to its size.
    """
    if job.init_image_path is not None:
        return await asyncio.to_thread(_fitted, store, job.init_image_path, job)
    if job.parent_job_id is None or job.parent_image_index is None or job.strength is None:
        return None
    async with db.uow() as uow:
        images = await uow.images.for_job(job.parent_job_id)
    for image in images:
        if image.index == job.parent_image_index:
            return await asyncio.to_thread(_fitted, store, image.path, None)
    raise LookupError(
        f"job {job.id} starts from image {job.parent_image_index} of job {job.parent_job_id}, "
        "which has no stored image"
    )


def _fitted(store: ImageStore, key: str, job: JobRecord | None) -> Image.Image:
    """A stored image as RGB (cropped to the job's aspect and scaled to its size, if given);
    off the event loop: the store may be remote, and decoding takes a while."""
    with Image.open(io.BytesIO(store.get(key))) as loaded:
        rgb = loaded.convert("RGB")
    if job is None:
        return rgb
    return ImageOps.fit(rgb, (job.width, job.height), Image.Resampling.LANCZOS)
