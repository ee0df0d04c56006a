"""What the command line's commands share: running coroutines, job JSON, common options."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import click

from bot.runtime import Runtime
from generation.errors import GenerationError
from generation.imaging import recipe_dict
from generation.rendering import grid_key, video_key
from generation.service import GenerationService, JobView, Submission
from storage.records import DeliveryRecord

T = TypeVar("T")
Submit = Callable[[GenerationService], Awaitable[Submission]]
CLI_USER_ID = 0  # the host at the terminal, unless --user says otherwise


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a user-facing error becomes a one-line ``Error: ...``."""
    try:
        return asyncio.run(coroutine)
    except GenerationError as error:
        raise click.ClickException(str(error)) from error


def job_json(runtime: Runtime, view: JobView) -> dict[str, Any]:
    """A job, its recipe, timestamps and image files, as the ``--json`` options print it."""
    job = view.job
    store = runtime.store
    return {
        **recipe_dict(job),
        "user_id": job.user_id,
        "status": job.status,
        "cost": job.cost,
        "attempts": job.attempts,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "images": [
            {
                "index": image.index,
                "seed": image.seed,
                "path": store.location(image.path),
                "sha256": image.sha256,
            }
            for image in view.images
        ],
        "grid": store.location(grid_key(job.id, job.attempts)) if view.images else None,
        "video_file": store.location(video_key(job.id, job.attempts))
        if view.images and job.video and store.exists(video_key(job.id, job.attempts))
        else None,
        "delivery": _delivery_json(view.delivery),
    }


def _delivery_json(delivery: DeliveryRecord | None) -> dict[str, Any] | None:
    """Where the bot's result went (None for the command line's own jobs)."""
    if delivery is None:
        return None
    return {
        "state": delivery.state,
        "via": delivery.delivered_via,
        "attempts": delivery.attempts,
        "last_error": delivery.last_error,
        "next_try_at": delivery.next_try_at.isoformat() if delivery.next_try_at else None,
        "delivered_at": delivery.delivered_at.isoformat() if delivery.delivered_at else None,
        "message_id": delivery.result_message_id,
    }


WAIT_OPTIONS = [
    click.option(
        "--user", "user_id", type=int, default=CLI_USER_ID, help="Whose job it is (a Discord id)."
    ),
    click.option("--no-wait", is_flag=True, help="Only queue the job; a worker makes it later."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
]


def wait_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(WAIT_OPTIONS):
        command = option(command)
    return command
