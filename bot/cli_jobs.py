"""Commands that make images: generate, upscale, vary, reroll, and cancel."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from typing import Any

import click

from bot.cli_support import CLI_USER_ID, Submit, job_json, run_async, wait_options
from bot.runtime import Runtime, open_runtime
from bot.settings import Settings
from generation import parameters
from generation.comparing import Comparison
from generation.editing import AREAS, DIRECTIONS, Edit
from generation.errors import InvalidRequest
from generation.events import JobEvent, JobProgress
from generation.loras import parse_choice
from generation.model_info import ModelInfo
from generation.presets import Preset
from generation.requests import GenerationRequest
from generation.samplers import SAMPLER_NAMES
from generation.service import GenerationService, JobView, Submission
from generation.wording import describe_place, place_text
from storage.models import JobKind


@click.command()
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
@click.option(
    "--model", default=None, help="One of the host's models (default: the first), e.g. dall-e-3."
)
@click.option(
    "--sampler",
    default=None,
    help=f"A sampler by its usual name (default: the model's own): {', '.join(SAMPLER_NAMES)}.",
)
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="NAME[:WEIGHT]",
    help="A LoRA from IMAGINE_LORA_DIR and its weight (default 1); repeat for more.",
)
@wait_options
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
    model: str | None,
    sampler: str | None,
    loras: tuple[str, ...],
    user_id: int,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Make images from PROMPT: queue a job, run it here, print where the images are.
    <lora:NAME:WEIGHT> in PROMPT adds a LoRA too."""
    try:
        choices = tuple(parse_choice(text) for text in loras)
    except InvalidRequest as error:
        raise click.BadParameter(error.message, param_hint="--lora") from None
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
        model=model,
        sampler=sampler,
        loras=choices,
    )

    async def submit(service: GenerationService) -> Submission:
        snapshot = await service.presets.current()

        def model_of(name: str | None) -> ModelInfo:
            return service.model_of(name, snapshot, None)

        def preset_of(name: str | None) -> Preset | None:
            return service.preset_of(name, snapshot, None)

        # The user's /settings, where neither an option nor the prompt says otherwise.
        prefs = await service.preferences(user_id)
        if prefs.model is not None and not service.offered(prefs.model, snapshot, None):
            click.echo(
                f"user {user_id}'s default model {prefs.model} is not offered outside its "
                "servers: the host's default is used",
                err=True,
            )
            prefs = dataclasses.replace(prefs, model=None)
        # --ar, --no, --seed, ... typed in the prompt: where no option says otherwise.
        asked, overridden, dropped = await asyncio.to_thread(
            parameters.apply_fitting,
            request,
            check=lambda checked: service.check(checked, snapshot, strict=True),
            lenient=lambda checked: service.check(checked, snapshot),
            defaults=prefs,
            model_of=model_of,
            min_side=service.limits.min_size,
            preset_of=preset_of,
        )
        for name in overridden:
            click.echo(f"--{name} in the prompt: the command's option is used instead", err=True)
        for name in dropped:
            click.echo(
                f"user {user_id}'s default {name} does not fit this model: its own is used",
                err=True,
            )
        return await service.submit(asked)

    _submit_and_report(settings, submit, no_wait, as_json)


def _submit_and_report(settings: Settings, submit: Submit, no_wait: bool, as_json: bool) -> None:
    result = run_async(_generate(settings, submit, wait=not no_wait, show_progress=not as_json))
    if as_json:
        click.echo(json.dumps(result))
        return
    line = f"job {result['job_id']}: {result['status']} (seed {result['seed']})"
    if result["status"] == "queued":
        line += f", {place_text(result['position'], result['eta_seconds'], result['capped'])}"
    click.echo(line)
    for image in result.get("images", []):
        click.echo(f"  image {image['index']}  seed {image['seed']}  {image['path']}")
    if result.get("grid"):
        click.echo(f"  grid     {result['grid']}")
    if result.get("video_file"):
        click.echo(f"  video    {result['video_file']}")
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
                "eta_seconds": submission.eta_seconds,
                "capped": submission.capped,
            }
        if show_progress:
            click.echo(f"job {job_id} queued: {describe_place(submission)}", err=True)
        worker = await runtime.start_engine()
        worker_task = asyncio.create_task(worker.run(), name="cli-worker")
        try:
            view = await _wait_for(runtime, job_id, worker_task, show_progress)
        finally:
            worker.stop()
            await worker_task
        return job_json(runtime, view)


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


@click.command()
@click.argument("job_id", type=int)
@click.argument("index", type=int)
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@wait_options
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


@click.command()
@click.argument("job_id", type=int)
@click.argument("index", type=int)
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@click.option("--strength", type=float, default=None, help="How far to depart, 0..1.")
@wait_options
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


@click.command()
@click.argument("job_id", type=int)
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@wait_options
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


def _edit_and_report(
    settings: Settings,
    job_id: int,
    index: int,
    edit: Edit,
    user_id: int,
    seed: int | None,
    no_wait: bool,
    as_json: bool,
    prompt: str | None = None,
) -> None:
    _submit_and_report(
        settings,
        lambda service: service.derive(
            JobKind.EDIT, job_id, index, user_id, seed=seed, edit=edit, prompt=prompt
        ),
        no_wait,
        as_json,
    )


@click.command()
@click.argument("job_id", type=int)
@click.argument("index", type=int)
@click.option(
    "--factor",
    type=click.Choice(["1.5", "2", "square"]),
    default="2",
    show_default=True,
    help="Zoom Out 1.5× or 2× (the same size, the image shrunk into the middle and painted "
    "around), or Make Square (padded to its long side).",
)
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@wait_options
@click.pass_obj
def zoom(
    settings: Settings,
    job_id: int,
    index: int,
    factor: str,
    seed: int | None,
    user_id: int,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Zoom out of image INDEX (0-3) of JOB_ID, or make it square."""
    try:
        edit = Edit.square() if factor == "square" else Edit.zoom(float(factor))
    except InvalidRequest as error:
        raise click.BadParameter(error.message, param_hint="--factor") from None
    _edit_and_report(settings, job_id, index, edit, user_id, seed, no_wait, as_json)


@click.command()
@click.argument("job_id", type=int)
@click.argument("index", type=int)
@click.option(
    "--direction",
    type=click.Choice(list(DIRECTIONS)),
    required=True,
    help="The side that grows by half the image.",
)
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@wait_options
@click.pass_obj
def pan(
    settings: Settings,
    job_id: int,
    index: int,
    direction: str,
    seed: int | None,
    user_id: int,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Pan image INDEX (0-3) of JOB_ID: the image grows by half on one side, painted on."""
    edit = Edit.pan(direction)
    _edit_and_report(settings, job_id, index, edit, user_id, seed, no_wait, as_json)


@click.command()
@click.argument("job_id", type=int)
@click.argument("index", type=int)
@click.option("--cells", default="", help="Cells of a 3×3 grid to paint anew, 1-9, e.g. 1,2,5.")
@click.option(
    "--area", type=click.Choice(list(AREAS)), default=None, help="Or a named area instead."
)
@click.option("--prompt", default=None, help="What to paint there (default: the job's prompt).")
@click.option("--seed", type=int, default=None, help="0..4294967295; random when left out.")
@wait_options
@click.pass_obj
def region(
    settings: Settings,
    job_id: int,
    index: int,
    cells: str,
    area: str | None,
    prompt: str | None,
    seed: int | None,
    user_id: int,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Vary (Region): paint the chosen cells of image INDEX (0-3) of JOB_ID anew; every
    pixel outside them stays the image's own."""
    try:
        numbers = tuple(int(part) for part in cells.split(",") if part.strip())
        edit = Edit.region(numbers, area or "")
    except ValueError:
        raise click.BadParameter(f"{cells!r} is not numbers 1-9", param_hint="--cells") from None
    except InvalidRequest as error:
        raise click.BadParameter(error.message, param_hint=f"--{error.option}") from None
    _edit_and_report(settings, job_id, index, edit, user_id, seed, no_wait, as_json, prompt)


@click.command()
@click.argument("job_id", type=int)
@click.argument("index", type=int)
@click.option(
    "--knob",
    required=True,
    help="What to turn: guidance, steps, sampler, seed, lora (its weight), or word:WORD "
    "(a word of the prompt, swapped for each value).",
)
@click.option("--values", required=True, help="2 to 4 values, comma-separated, e.g. 3,5,7,9.")
@wait_options
@click.pass_obj
def compare(
    settings: Settings,
    job_id: int,
    index: int,
    knob: str,
    values: str,
    user_id: int,
    no_wait: bool,
    as_json: bool,
) -> None:
    """A comparison grid: image INDEX (0-3) of JOB_ID (an upscale: the image it was made
    from) made again at its seed, once per value of one knob, everything else equal. Each
    image is its own recipe: upscale, vary or reproduce any of them."""
    try:
        comparison = Comparison.parse(knob, values)
    except InvalidRequest as error:
        raise click.BadParameter(error.message, param_hint=f"--{error.option}") from None
    _submit_and_report(
        settings,
        lambda service: service.derive(JobKind.COMPARE, job_id, index, user_id, compare=comparison),
        no_wait,
        as_json,
    )


@click.command()
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

    click.echo(f"job {job_id}: {run_async(_cancel())}")
