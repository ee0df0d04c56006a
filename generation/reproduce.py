"""Make a job's images again from its stored recipe and compare them bit for bit."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from generation.errors import JobNotFound, JobStateError
from generation.imaging import pixel_sha256
from generation.rendering import finished, load_init_image, render_plan
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobStatus
from storage.records import ImageRecord, JobRecord

if TYPE_CHECKING:
    from generation.engine import Engine

MISSING = "missing"
REMOTE_PREFIXES = ("openai:",)


@dataclasses.dataclass(frozen=True, slots=True)
class ImageComparison:
    index: int
    seed: int
    expected_sha256: str
    actual_sha256: str

    @property
    def identical(self) -> bool:
        return self.expected_sha256 == self.actual_sha256


@dataclasses.dataclass(frozen=True, slots=True)
class ReproduceReport:
    job_id: int
    images: list[ImageComparison]
    # Where this engine differs from the one that ran the job: reasons the bits may differ.
    differences: list[str]

    @property
    def identical(self) -> bool:
        return bool(self.images) and all(image.identical for image in self.images)


def _differences(
    job: JobRecord,
    revision: str | None,
    device_kind: str | None,
    dtype: str | None,
    versions: dict[str, str],
) -> list[str]:
    """Where a job ran differently from ``job``: reasons the bits may differ."""
    recorded = {
        "model revision": (job.model_revision, revision),
        "device kind": (job.device_kind, device_kind),
        "dtype": (job.dtype, dtype),
    }
    notes = [
        f"{name}: ran with {was}, now {now}" for name, (was, now) in recorded.items() if was != now
    ]
    for library, version in sorted(job.library_versions.items()):
        current = versions.get(library)
        if current != version:
            notes.append(f"{library}: ran with {version}, now {current}")
    return notes


def _runtime_differences(engine: Engine, job: JobRecord) -> list[str]:
    runtime = engine.runtime
    model = engine.models.get(job.model_id)
    revision = model.revision if model else "not loaded"
    return _differences(job, revision, runtime.device_kind, runtime.dtype, runtime.library_versions)


def compare(
    original: JobRecord,
    stored: list[ImageRecord],
    again: JobRecord,
    made: list[ImageRecord],
) -> ReproduceReport:
    """A job made to make ``original``'s images again (a queued /reproduce), compared with it
    image by image, and where it ran differently."""
    by_index = {image.index: image.sha256 for image in made}
    comparisons = [
        ImageComparison(i.index, i.seed, i.sha256, by_index.get(i.index, MISSING)) for i in stored
    ]
    differences = _differences(
        original, again.model_revision, again.device_kind, again.dtype, again.library_versions
    )
    if again.scheduler != original.scheduler:
        differences.insert(0, f"scheduler: ran with {original.scheduler}, now {again.scheduler}")
    return ReproduceReport(original.id, comparisons, differences)


async def reproduce(
    db: Database, engine: Engine, store: ImageStore, job_id: int
) -> ReproduceReport:
    """Re-run a finished job exactly as it ran (same batch, seeds, settings) and compare pixels."""
    async with db.uow() as uow:
        job = await uow.jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        stored = await uow.images.for_job(job_id)
    if job.status != JobStatus.SUCCEEDED or not stored:
        raise JobStateError(f"job {job_id} has no finished images to compare ({job.status})")
    if job.model_id.startswith(REMOTE_PREFIXES):
        # An image API keeps no seed we can give back: say so, and point at what is stored.
        note = (
            f"made by a remote image API ({job.model_id}): it cannot be made again; the "
            f"stored images are the record: {', '.join(image.path for image in stored)}"
        )
        return ReproduceReport(
            job_id,
            [ImageComparison(i.index, i.seed, i.sha256, MISSING) for i in stored],
            [note],
        )
    init_image = await load_init_image(db, store, job)
    specs, edit = render_plan(job, init_image)
    images = []
    for spec in specs:
        images += await engine.render_async(spec)
    images = finished(images, edit)
    comparisons = [
        ImageComparison(
            record.index,
            record.seed,
            record.sha256,
            pixel_sha256(images[record.index]) if record.index < len(images) else MISSING,
        )
        for record in stored
    ]
    return ReproduceReport(job_id, comparisons, _runtime_differences(engine, job))
