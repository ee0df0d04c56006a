"""Words every front door uses (the command line, Discord, later the web console): places in
line, durations, what a job is, its recipe, and what a user is told when it failed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from generation.comparing import Comparison
from generation.editing import Edit
from generation.errors import InvalidRequest
from generation.openai_engine import CONTENT_REFUSED
from generation.samplers import familiar_name
from storage.models import DeliveryState, JobKind
from storage.queue import LEASE_EXPIRED_ERROR
from storage.records import DeliveryRecord, ImageRecord, JobRecord

if TYPE_CHECKING:
    from generation.service import JobView, Submission


def ordinal(number: int) -> str:
    suffix = (
        "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"


def duration(seconds: float) -> str:
    """ "40 s", "12 min", "3 h 5 min"."""
    seconds = max(1, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60} min"


def place_text(position: int, eta_seconds: float | None, capped: bool = False) -> str:
    """ "3rd in line, about 40 s"; past the counted places, "1,000+ in line, over 2 h"."""
    if capped:
        where = f"{position - 1:,}+ in line"
        return where if eta_seconds is None else f"{where}, over {duration(eta_seconds)}"
    if eta_seconds is None:
        return f"{ordinal(position)} in line"
    return f"{ordinal(position)} in line, about {duration(eta_seconds)}"


def describe_place(submission: Submission) -> str:
    """A waiting job's place in line; its status once it is not waiting."""
    if submission.position == 0:
        return submission.job.status
    place = place_text(submission.position, submission.eta_seconds, submission.capped)
    if submission.unserved is not None:
        place += (
            f"; no GPU host runs {submission.unserved} right now: it waits until one does, "
            "or cancel it and pick another model"
        )
    return place


def what(job: JobRecord) -> str:
    """ "job 12", or what it was made from: "upscale of image 2 of job 11"."""
    if job.kind == JobKind.REROLL:
        return f"reroll of job {job.parent_job_id}"
    if job.kind == JobKind.COMPARE and job.parent_image_index is None:  # rerolled
        return f"{_described(job)}, again, from job {job.parent_job_id}"
    if job.kind in (JobKind.UPSCALE, JobKind.VARIATION, JobKind.EDIT, JobKind.COMPARE):
        index = (job.parent_image_index or 0) + 1
        return f"{_described(job)} of image {index} of job {job.parent_job_id}"
    return f"job {job.id}"


def _described(job: JobRecord) -> str:
    """What a derived job did to its image, in a few words."""
    try:
        if job.kind == JobKind.EDIT:
            return Edit.from_dict(job.edit or {}).describe()
        if job.kind == JobKind.COMPARE:
            return Comparison.from_dict(job.compare or {}).describe()
    except InvalidRequest:  # a row is data, not a promise
        return str(job.kind)
    return "upscale" if job.kind == JobKind.UPSCALE else "variation"


def public_failure(job: JobRecord) -> str:
    """Why a job failed, as its requester is told it: short, classified, never the raw error
    (that stays in the log and in what moderators and the host see)."""
    error = job.error or ""
    if error.startswith(CONTENT_REFUSED):
        return "the image service refused the prompt"
    if "out of memory" in error.lower() or error.startswith("OutOfMemoryError"):
        return "the GPU ran out of memory; try a smaller size or fewer images"
    if error == LEASE_EXPIRED_ERROR:
        return f"the worker making it stopped answering, too many times (job {job.id})"
    if error.startswith("it hung"):
        return f"it made no progress, too many times (job {job.id})"
    return f"something went wrong on our side (job {job.id})"


def recipe_fields(view: JobView) -> list[tuple[str, str]]:
    """Everything needed to make a job's images again, as (label, value) lines."""
    job = view.job
    fields = [
        ("prompt", job.prompt),
        ("negative", job.negative_prompt or "(none)"),
        ("seed", f"{job.seed} (image i uses seed + i)"),
        ("steps", f"{job.steps}   guidance: {job.guidance:g}"),
        ("size", f"{job.width}×{job.height}   images: {job.count}"),
        (
            "model",
            f"{job.model_id} @ {job.model_revision}"
            + (f" (preset {job.preset})" if job.preset else ""),
        ),
        ("sampler", _sampler(job)),
    ]
    if job.compare:
        try:
            comparison = Comparison.from_dict(job.compare)
        except InvalidRequest:
            pass
        else:  # each cell is its own recipe: the knob's value and its seed
            seeds = ", ".join(str(cell["seed"]) for cell in job.compare.get("cells") or [])
            fields[2] = ("seed", f"{job.seed}; each image's: {seeds}")
            fields.append(("compare", comparison.describe()))
    for lora in job.loras:
        weight, sha256 = float(lora["weight"]), lora["sha256"]
        fields.append(("LoRA", f"{lora['name']} at {weight:g} (sha256 {sha256})"))
    if job.strength is not None:
        fields.append(("strength", f"{job.strength:g}"))
    if job.parent_job_id is not None:
        index = "" if job.parent_image_index is None else f" image {job.parent_image_index + 1}"
        fields.append(("from", f"job {job.parent_job_id}{index}"))
    if job.init_image_sha256:
        fields.append(("start image sha256", job.init_image_sha256))
    fields.extend(_image_field(image) for image in view.images)
    return fields


def _image_field(image: ImageRecord) -> tuple[str, str]:
    return f"image {image.index + 1}", f"seed {image.seed}, sha256 {image.sha256}"


DELIVERED_VIA = {
    "response": "as the answer to the command",
    "channel": "in the channel",
    "dm": "by direct message",
}


def delivery(
    record: DeliveryRecord | None,
    job: JobRecord,
    moment: Callable[[dt.datetime], str] = lambda at: at.isoformat(timespec="seconds"),
    text: Callable[[str], str] = str,
) -> str | None:
    """Where a job's result went, or why it has not (None: nobody delivers it, or its job has
    not ended). ``moment`` writes a time for the reader, ``text`` the errors recorded."""
    if record is None:
        return None
    if record.state == DeliveryState.DELIVERED:
        via = DELIVERED_VIA.get(record.delivered_via or "", "")
        at = f" {moment(record.delivered_at)}" if record.delivered_at else ""
        return f"delivered {via}{at}".replace("  ", " ")
    ended = {
        DeliveryState.UNDELIVERABLE: "could not be delivered: "
        + text(record.last_error or "no reason recorded"),
        DeliveryState.WITHDRAW: "deleted: its messages being removed",
        DeliveryState.WITHDRAWN: "deleted: its messages removed",
    }
    if record.state in ended:
        return ended[DeliveryState(record.state)]
    if not job.is_terminal:
        return None
    if record.attempts == 0:
        return "on its way"
    tries = "once" if record.attempts == 1 else f"{record.attempts} times"
    later = f"; next try {moment(record.next_try_at)}" if record.next_try_at else ""
    return f"not delivered yet: tried {tries} (last: {text(record.last_error or '')}){later}"


def _sampler(job: JobRecord) -> str:
    """The sampler's familiar name, with the scheduler and options it stands for."""
    options = ", ".join(f"{key}={value}" for key, value in sorted(job.scheduler_options.items()))
    detail = f"{job.scheduler}; {options}" if options else job.scheduler
    return f"{familiar_name(job.sampler, job.scheduler)} ({detail})"
