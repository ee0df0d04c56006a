"""The ``imagine-bot`` command line: the same service, queue and worker as the Discord bot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from bot.runtime import Runtime, open_runtime
from bot.settings import Settings
from generation.errors import GenerationError
from generation.events import JobEvent, JobProgress
from generation.rendering import grid_key
from generation.reproduce import reproduce
from generation.requests import GenerationRequest
from generation.service import GenerationService, JobView, Submission
from storage.models import JobKind

T = TypeVar("T")
Submit = Callable[[GenerationService], Awaitable[Submission]]
CLI_USER_ID = 0  # the host at the terminal, unless --user says otherwise


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except GenerationError as error:
        raise click.ClickException(str(error)) from error


def _job_json(runtime: Runtime, view: JobView) -> dict[str, Any]:
    job = view.job
    store = runtime.store
    return {
        "job_id": job.id,
        "kind": job.kind,
        "user_id": job.user_id,
        "status": job.status,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "steps": job.steps,
        "guidance": job.guidance,
        "width": job.width,
        "height": job.height,
        "count": job.count,
        "strength": job.strength,
        "scheduler": job.scheduler,
        "model_id": job.model_id,
        "model_revision": job.model_revision,
        "parent_job_id": job.parent_job_id,
        "parent_image_index": job.parent_image_index,
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
                "path": str(store.path(image.path)),
                "sha256": image.sha256,
            }
            for image in view.images
        ],
        "grid": str(store.path(grid_key(job.id, job.attempts))) if view.images else None,
    }


_WAIT_OPTIONS = [
    click.option(
        "--user", "user_id", type=int, default=CLI_USER_ID, help="Whose job it is (a Discord id)."
    ),
    click.option("--no-wait", is_flag=True, help="Only queue the job; a worker makes it later."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
]


def _wait_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_WAIT_OPTIONS):
        command = option(command)
    return command


@click.group()
@click.option(
    "--log-level", default=None, help="DEBUG, INFO, WARNING (default: IMAGINE_LOG_LEVEL)."
)
@click.pass_context
def main(context: click.Context, log_level: str | None) -> None:
    """imagine-bot: images from prompts, fairly shared, every recipe on record."""
    try:
        settings = Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"IMAGINE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
        )
        raise click.ClickException(f"bad setting: {problems}") from error
    logging.basicConfig(
        level=(log_level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _quiet_libraries()
    context.obj = settings


def _quiet_libraries() -> None:
    """Keep the terminal for our progress bar: the libraries' chatter goes below WARNING."""
    import os

    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@main.command()
@click.argument("prompt")
@click.option("--negative", default="", help="What the image should not show.")
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@click.option("--steps", type=int, default=None, help="Denoising steps (default: the model's).")
@click.option(
    "--guidance", type=float, default=None, help="CFG scale 0..30 (default: the model's)."
)
@click.option(
    "--width", type=int, default=None, help="Pixels, a multiple of 8 (default: the model's)."
)
@click.option(
    "--height", type=int, default=None, help="Pixels, a multiple of 8 (default: the model's)."
)
@click.option("--count", type=int, default=None, help="Images in the grid, 1..4.")
@_wait_options
@click.pass_obj
def generate(
    settings: Settings,
    prompt: str,
    negative: str,
    seed: int | None,
    steps: int | None,
    guidance: float | None,
    width: int | None,
    height: int | None,
    count: int | None,
    user_id: int,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Make images from PROMPT: queue a job, run it here, print where the images are."""
    request = GenerationRequest(
        prompt=prompt,
        user_id=user_id,
        negative_prompt=negative,
        seed=seed,
        steps=steps,
        guidance=guidance,
        width=width,
        height=height,
        count=count,
    )
    _submit_and_report(settings, lambda service: service.submit(request), no_wait, as_json)


def _submit_and_report(settings: Settings, submit: Submit, no_wait: bool, as_json: bool) -> None:
    result = _run(_generate(settings, submit, wait=not no_wait, show_progress=not as_json))
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"job {result['job_id']}: {result['status']} (seed {result['seed']})")
    for image in result.get("images", []):
        click.echo(f"  image {image['index']}  seed {image['seed']}  {image['path']}")
    if result.get("grid"):
        click.echo(f"  grid     {result['grid']}")
    if result.get("error"):
        click.echo(f"  error: {result['error']}")
    if result["status"] not in ("queued", "succeeded"):
        sys.exit(1)


async def _generate(
    settings: Settings, submit: Submit, *, wait: bool, show_progress: bool
) -> dict[str, Any]:
    async with open_runtime(settings) as runtime:
        submission = await submit(runtime.service)  # bad input stops here, before torch
        job_id = submission.job.id
        if not wait:
            return {
                "job_id": job_id,
                "seed": submission.job.seed,
                "status": submission.job.status,
                "position": submission.position,
            }
        if show_progress:
            click.echo(f"job {job_id} queued, position {submission.position}", err=True)
        worker = await runtime.start_engine()
        worker_task = asyncio.create_task(worker.run(), name="cli-worker")
        try:
            view = await _wait_for(runtime, job_id, worker_task, show_progress)
        finally:
            worker.stop()
            await worker_task
        return _job_json(runtime, view)


async def _wait_for(
    runtime: Runtime, job_id: int, worker_task: asyncio.Task[int], show_progress: bool
) -> JobView:
    """Wait until the job ends (run here or by another worker process), with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(
        total=None, desc=f"job {job_id}", unit="step", disable=not show_progress, file=sys.stderr
    )
    with bar:
        async with runtime.events.subscribe() as events:
            while True:
                view = await runtime.service.job(job_id)
                if view.job.is_terminal:
                    return view
                if worker_task.done():
                    worker_task.result()  # the worker died: raise its error, do not wait forever
                with contextlib.suppress(TimeoutError):
                    event: JobEvent = await asyncio.wait_for(events.get(), 0.5)
                    if isinstance(event, JobProgress) and event.job_id == job_id:
                        bar.total = event.total
                        bar.n = event.step
                        bar.refresh()


@main.command()
@click.argument("job_id", type=int)
@click.argument("index", type=int)
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@_wait_options
@click.pass_obj
def upscale(
    settings: Settings,
    job_id: int,
    index: int,
    seed: int | None,
    user_id: int,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Make image INDEX (0-3) of JOB_ID twice as large (U1-U4)."""
    _submit_and_report(
        settings,
        lambda service: service.derive(JobKind.UPSCALE, job_id, index, user_id, seed=seed),
        no_wait,
        as_json,
    )


@main.command()
@click.argument("job_id", type=int)
@click.argument("index", type=int)
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@click.option("--strength", type=float, default=None, help="How far to depart, 0..1.")
@_wait_options
@click.pass_obj
def vary(
    settings: Settings,
    job_id: int,
    index: int,
    seed: int | None,
    strength: float | None,
    user_id: int,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Make a grid of variations of image INDEX (0-3) of JOB_ID (V1-V4)."""
    _submit_and_report(
        settings,
        lambda service: service.derive(
            JobKind.VARIATION, job_id, index, user_id, seed=seed, strength=strength
        ),
        no_wait,
        as_json,
    )


@main.command()
@click.argument("job_id", type=int)
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@_wait_options
@click.pass_obj
def reroll(
    settings: Settings, job_id: int, seed: int | None, user_id: int, no_wait: bool, as_json: bool
) -> None:
    """Run JOB_ID's recipe again with a new seed."""
    _submit_and_report(
        settings,
        lambda service: service.derive(JobKind.REROLL, job_id, None, user_id, seed=seed),
        no_wait,
        as_json,
    )


@main.command()
@click.argument("job_id", type=int)
@click.option("--user", "user_id", type=int, default=CLI_USER_ID, help="Who asks.")
@click.option("--admin", is_flag=True, help="Cancel someone else's job.")
@click.pass_obj
def cancel(settings: Settings, job_id: int, user_id: int, admin: bool) -> None:
    """Cancel a waiting job, or stop a running one at its next step."""

    async def _cancel() -> str:
        async with open_runtime(settings) as runtime:
            job = await runtime.service.cancel(job_id, user_id, is_admin=admin)
        return "cancelled" if job.status == "cancelled" else "asked to stop at its next step"

    click.echo(f"job {job_id}: {_run(_cancel())}")


@main.command()
@click.option("--burst", is_flag=True, help="Drain the queue, then exit.")
@click.pass_obj
def worker(settings: Settings, burst: bool) -> None:
    """Run a worker: claim queued jobs and make their images."""

    async def _worker() -> int:
        import signal

        async with open_runtime(settings) as runtime:
            worker = await runtime.start_engine()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, worker.stop)
            return await worker.run(burst=burst)

    done = _run(_worker())
    click.echo(f"worker ran {done} jobs", err=True)


@main.command(name="reproduce")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def reproduce_command(settings: Settings, job_id: int, as_json: bool) -> None:
    """Make JOB_ID's images again from its recipe; exit 0 when the bytes match, 1 when not."""

    async def _reproduce() -> dict[str, Any]:
        async with open_runtime(settings) as runtime:
            await runtime.start_engine()
            assert runtime.engine is not None
            report = await reproduce(runtime.db, runtime.engine, runtime.store, job_id)
        return {
            "job_id": report.job_id,
            "identical": report.identical,
            "images": [
                {
                    "index": image.index,
                    "seed": image.seed,
                    "identical": image.identical,
                    "expected_sha256": image.expected_sha256,
                    "actual_sha256": image.actual_sha256,
                }
                for image in report.images
            ],
            "differences": report.differences,
        }

    result = _run(_reproduce())
    if as_json:
        click.echo(json.dumps(result))
    else:
        verdict = "identical" if result["identical"] else "DIFFERENT"
        click.echo(f"job {job_id}: {verdict}")
        for image in result["images"]:
            mark = "same" if image["identical"] else "differs"
            click.echo(f"  image {image['index']} (seed {image['seed']}): {mark}")
        for note in result["differences"]:
            click.echo(f"  note: {note}")
    sys.exit(0 if result["identical"] else 1)


@main.command()
@click.option("--user", "user_id", type=int, default=None, help="Only this user's jobs.")
@click.option("--status", default=None, help="queued, running, succeeded, failed, cancelled.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def jobs(
    settings: Settings, user_id: int | None, status: str | None, limit: int, as_json: bool
) -> None:
    """Recent jobs with their recipe and timestamps."""

    async def _jobs() -> list[dict[str, Any]]:
        async with open_runtime(settings) as runtime:
            views = await runtime.service.recent(user_id=user_id, status=status, limit=limit)
            return [_job_json(runtime, view) for view in views]

    rows = _run(_jobs())
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(
            f"{row['job_id']:>6}  {row['status']:<9}  user {row['user_id']}  "
            f"created {row['created_at']}  seed {row['seed']}  {row['prompt'][:60]!r}"
        )


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@click.pass_obj
def upgrade(settings: Settings) -> None:
    """Run the migrations up to the newest schema."""
    from storage.db import Database

    async def _upgrade() -> None:
        database = Database(settings.database_url)
        try:
            await database.upgrade()
        finally:
            await database.close()

    _run(_upgrade())
    click.echo("database is up to date", err=True)
