"""What the bot says: queue places, progress, results and recipes, as plain strings."""

from __future__ import annotations

import datetime as dt

from bot.cli_support import describe_place, place_text
from generation.service import JobView, Submission
from storage.models import JobKind, JobStatus
from storage.records import ImageRecord, JobRecord

__all__ = ["describe_place", "place_text"]


def _prompt(job: JobRecord) -> str:
    prompt = job.prompt if len(job.prompt) <= 200 else job.prompt[:199] + "…"
    return f"**{prompt}**"


def _what(job: JobRecord) -> str:
    if job.kind == JobKind.UPSCALE:
        return f"upscale of image {(job.parent_image_index or 0) + 1} of job {job.parent_job_id}"
    if job.kind == JobKind.VARIATION:
        return f"variation of image {(job.parent_image_index or 0) + 1} of job {job.parent_job_id}"
    if job.kind == JobKind.REROLL:
        return f"reroll of job {job.parent_job_id}"
    return f"job {job.id}"


def queued(submission: Submission) -> str:
    job = submission.job
    if submission.position == 0:
        return f"{_prompt(job)} — {_what(job)}: starting"
    return (
        f"{_prompt(job)} — {_what(job)}: queued, "
        f"{place_text(submission.position, submission.eta_seconds)}"
    )


def progress(job: JobRecord, step: int, total: int) -> str:
    percent = round(100 * step / max(1, total))
    return f"{_prompt(job)} — {_what(job)}: step {step}/{total} ({percent} %)"


def result(job: JobRecord, mention: str | None = None) -> str:
    """The text above a finished job's images (or its failure)."""
    who = f"{mention} " if mention else ""
    if job.status == JobStatus.SUCCEEDED:
        return f"{who}{_prompt(job)} — seed {job.seed}, {job.width}×{job.height} (job {job.id})"
    if job.status == JobStatus.CANCELLED:
        return f"{who}{_prompt(job)} — job {job.id} was cancelled"
    return (
        f"{who}{_prompt(job)} — job {job.id} failed: {job.error or 'unknown error'}. "
        "Sorry; the host's log has the details."
    )


def safety_note(action: str | None) -> str:
    if action == "spoiler":
        return "\n⚠ The safety check flagged this image, so it is behind a spoiler."
    if action == "withhold":
        return (
            "\n⚠ The safety check flagged this image, so it is held back for the moderators "
            "to review."
        )
    return ""


def recipe(view: JobView) -> str:
    """Everything needed to make a job's images again."""
    job = view.job
    lines = [
        f"**Job {job.id}** ({job.kind}, {job.status})",
        f"prompt: {job.prompt}",
        f"negative: {job.negative_prompt or '(none)'}",
        f"seed: {job.seed} (image i uses seed + i)",
        f"steps: {job.steps}   guidance: {job.guidance:g}",
        f"size: {job.width}×{job.height}   images: {job.count}",
        f"model: {job.model_id} @ {job.model_revision}   scheduler: {job.scheduler}",
    ]
    if job.strength is not None:
        lines.append(f"strength: {job.strength:g}")
    if job.parent_job_id is not None:
        index = "" if job.parent_image_index is None else f" image {job.parent_image_index + 1}"
        lines.append(f"from: job {job.parent_job_id}{index}")
    if job.init_image_sha256:
        lines.append(f"start image sha256: {job.init_image_sha256}")
    lines.extend(_image_line(image) for image in view.images)
    return "\n".join(lines)


def _image_line(image: ImageRecord) -> str:
    return f"image {image.index + 1}: seed {image.seed}, sha256 {image.sha256[:16]}…"


def lineage(job: JobRecord, parent: JobRecord | None, children: list[JobRecord]) -> str:
    lines = []
    if parent is not None:
        lines.append(f"parent: job {parent.id} ({parent.kind}) by <@{parent.user_id}>")
    lines.extend(f"child: job {c.id} ({c.kind}, {c.status})" for c in children)
    return "\n".join(lines)


def when(moment: dt.datetime) -> str:
    """A Discord timestamp: each reader sees it in their own time zone."""
    return f"<t:{int(moment.timestamp())}:R>"
