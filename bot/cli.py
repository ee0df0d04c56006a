"""The ``imagine-bot`` command line: the same service, queue and worker as the Discord bot."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from pydantic_settings import SettingsError

from bot.cli_admin import admin
from bot.cli_jobs import cancel, compare, generate, pan, region, reroll, upscale, vary, zoom
from bot.cli_queue import queue_command, quota
from bot.cli_support import job_json, run_async
from bot.cli_web import web
from bot.runtime import open_runtime
from bot.settings import Settings
from generation.reproduce import reproduce


@click.group()
@click.option(
    "--log-level", default=None, help="DEBUG, INFO, WARNING (default: IMAGINE_LOG_LEVEL)."
)
@click.pass_context
def main(context: click.Context, log_level: str | None) -> None:
    """imagine-bot: images from prompts, fairly shared, every recipe on record."""
    try:
        # IMAGINE_ENV_FILE names the settings file (.env by default); empty reads none.
        settings = Settings(_env_file=os.environ.get("IMAGINE_ENV_FILE", ".env") or None)  # type: ignore[call-arg]
    except ValidationError as error:
        problems = "; ".join(
            f"IMAGINE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
        )
        raise click.ClickException(f"bad setting: {problems}") from error
    except SettingsError as error:  # a JSON setting that is not JSON
        raise click.ClickException(f"bad setting: {error}") from error
    logging.basicConfig(
        level=(log_level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _quiet_libraries()
    context.obj = settings


def _quiet_libraries() -> None:
    """Keep the terminal for our progress bar: the libraries' chatter goes below WARNING."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@main.command()
@click.option("--burst", is_flag=True, help="Drain the queue, then exit.")
@click.pass_obj
def worker(settings: Settings, burst: bool) -> None:
    """Run a worker: claim queued jobs and make their images. Exits non-zero (for its
    supervisor) whenever it ends without being asked: 3 after a hung render."""
    from bot.service_runner import run_worker, serve

    serve(run_worker(settings, burst=burst))


@main.command()
@click.option("--no-worker", is_flag=True, help="The bot alone; workers run elsewhere.")
@click.pass_obj
def run(settings: Settings, no_worker: bool) -> None:
    """Run the Discord bot, with a worker in the same process unless --no-worker. Exits
    non-zero (for its supervisor) whenever the bot or its worker ends without being asked."""
    if settings.discord_token is None:
        raise click.ClickException(
            "IMAGINE_DISCORD_TOKEN is not set: put the bot token of your Discord application "
            "in the environment or in .env (see the README's Discord section)"
        )
    if not settings.guild_ids and not settings.open_to_all_servers:
        raise click.ClickException(
            "the bot serves no server: set IMAGINE_GUILD_IDS to your servers' ids, or "
            "IMAGINE_OPEN_TO_ALL_SERVERS=true to serve every server that adds it (then turn "
            "Public Bot off in the developer portal)"
        )
    from bot.service_runner import run_bot, serve

    serve(run_bot(settings, with_worker=not no_worker))


@main.command(name="workers")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def workers_command(settings: Settings, as_json: bool) -> None:
    """Workers that announced themselves: device, models, state, current job, last heartbeat.

    A worker that has not been heard from for IMAGINE_LEASE_SECONDS is shown as lost.
    """

    async def _workers() -> list[dict[str, Any]]:
        async with open_runtime(settings) as runtime, runtime.db.uow() as uow:
            rows = await uow.workers.all()
            now = await uow.now()  # heartbeats are on the database's clock
        return [
            {
                "id": row.id,
                "host": row.host,
                "pid": row.pid,
                "device": row.device,
                "models": row.models.get("ids", []),
                "state": "lost"
                if row.state != "stopped"
                and (now - row.heartbeat_at).total_seconds() > settings.lease_seconds
                else row.state,
                "current_job_id": row.current_job_id,
                "heartbeat_seconds_ago": round((now - row.heartbeat_at).total_seconds(), 1),
            }
            for row in rows
        ]

    rows = run_async(_workers())
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no worker has announced itself")
    for row in rows:
        job = f"job {row['current_job_id']}" if row["current_job_id"] else ""
        click.echo(
            f"{row['id']:<20} {row['host']}:{row['pid']:<8} {row['device']:<8} {row['state']:<8} "
            f"{job:<10} heard {row['heartbeat_seconds_ago']} s ago  {', '.join(row['models'])}"
        )


@main.command(name="loras")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def loras_command(settings: Settings, as_json: bool) -> None:
    """The LoRAs in IMAGINE_LORA_DIR: what each was made for, its hashes, or why it is
    refused."""
    from generation.errors import InvalidRequest

    catalogue = settings.lora_catalogue()
    rows: list[dict[str, Any]] = []
    for name in catalogue.names():
        try:
            lora = catalogue.find(name)
        except InvalidRequest as error:
            rows.append({"name": name, "refused": error.message})
            continue
        rows.append(
            {
                "name": name,
                "family": lora.family,
                "text_width": lora.text_width,
                "sha256": lora.sha256,
                "short_hash": lora.short_hash,
                "base_model": lora.base_model,
            }
        )
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no LoRA in {catalogue.folder} (*.safetensors)")
    for row in rows:
        if "refused" in row:
            click.echo(f"{row['name']:<24} refused: {row['refused']}")
        else:
            made_for = f"{row['family'] or '?'} (text width {row['text_width'] or '?'})"
            click.echo(f"{row['name']:<24} {made_for:<24} {row['short_hash']}")


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

    result = run_async(_reproduce())
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
            return [job_json(runtime, view) for view in views]

    rows = run_async(_jobs())
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        delivery = row["delivery"]
        result = f"  result {delivery['state']}" if delivery else ""
        click.echo(
            f"{row['job_id']:>6}  {row['status']:<9}  user {row['user_id']}  "
            f"created {row['created_at']}  seed {row['seed']}  {row['prompt'][:60]!r}{result}"
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

    run_async(_upgrade())
    click.echo("database is up to date", err=True)


@main.group()
def embedded() -> None:
    """The embedded model: train it on drawn scenes."""


@embedded.command()
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Model folder to write."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--images", type=int, default=16000, show_default=True, help="Drawn scenes.")
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--vae-steps", type=int, default=2000, show_default=True)
@click.option("--unet-steps", type=int, default=6500, show_default=True)
@click.option("--decoder-steps", type=int, default=1500, show_default=True)
@click.option(
    "--vae-attention/--no-vae-attention",
    default=True,
    show_default=True,
    help="Self-attention in the VAE's middle block.",
)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for torch.")
def train(
    out: Path,
    seed: int,
    images: int,
    batch: int,
    vae_steps: int,
    unet_steps: int,
    decoder_steps: int,
    vae_attention: bool,
    threads: int,
) -> None:
    """Train the embedded model; resumes from OUT's checkpoint if one is there."""
    import torch

    from generation.embedded.train import TrainConfig, Trainer

    torch.set_num_threads(threads)
    config = TrainConfig(
        out=out,
        seed=seed,
        images=images,
        batch=batch,
        vae_steps=vae_steps,
        unet_steps=unet_steps,
        decoder_steps=decoder_steps,
        vae_attention=vae_attention,
    )
    Trainer(config).run()
    click.echo(f"saved the trained model to {out}; use it with IMAGINE_MODEL={out}")


@embedded.command("train-lora")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="LoRA file to write.")
@click.option(
    "--model",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="The embedded model folder to train on (default: the shipped one).",
)
@click.option("--shape", type=click.Choice(["circle", "square", "triangle"]), default="triangle")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--images", type=int, default=4000, show_default=True, help="Drawn scenes.")
@click.option("--steps", type=int, default=400, show_default=True)
@click.option("--rank", type=int, default=4, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for torch.")
def train_lora_command(
    out: Path,
    model: Path | None,
    shape: str,
    seed: int,
    images: int,
    steps: int,
    rank: int,
    threads: int,
) -> None:
    """Train a LoRA on the embedded model that draws every shape as SHAPE."""
    import torch

    from generation.embedded.lora_train import LoraTrainConfig, train_lora
    from generation.embedded.model import SHIPPED_WEIGHTS

    torch.set_num_threads(threads)
    config = LoraTrainConfig(
        model=model or SHIPPED_WEIGHTS,
        out=out,
        shape=shape,
        seed=seed,
        images=images,
        steps=steps,
        rank=rank,
    )
    losses = train_lora(config)
    click.echo(
        f"saved the LoRA to {out} (loss {losses[0]:.4f} -> {losses[-1]:.4f}); put it in "
        "IMAGINE_LORA_DIR and ask for it by its file name"
    )


for command in (
    generate,
    upscale,
    vary,
    reroll,
    zoom,
    pan,
    region,
    compare,
    cancel,
    queue_command,
    quota,
    admin,
    web,
):
    main.add_command(command)
