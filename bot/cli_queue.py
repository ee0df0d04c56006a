"""The queue and quotas from the command line: ``imagine-bot queue`` and ``quota show|set``."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

from bot.cli_support import CLI_USER_ID, run_async
from bot.runtime import open_runtime
from bot.settings import Settings
from generation.quotas import USER_QUOTAS
from generation.wording import place_text


@click.command(name="queue")
@click.option("--user", "user_id", type=int, default=None, help="Only this user's jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def queue_command(settings: Settings, user_id: int | None, as_json: bool) -> None:
    """Waiting jobs in the order they will run (fair share), with their ETAs: one user's, or
    the first 100 of every model's."""

    async def _queue() -> list[dict[str, Any]]:
        async with open_runtime(settings) as runtime:
            waiting = await runtime.service.waiting(user_id)
        return [
            {
                "job_id": item.job.id,
                "user_id": item.job.user_id,
                "model": item.job.model_id,
                "position": item.position,
                "eta_seconds": item.eta_seconds,
                "capped": item.capped,
                "cost": item.job.cost,
                "weight": item.job.weight,
                "prompt": item.job.prompt,
            }
            for item in waiting
        ]

    rows = run_async(_queue())
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("nothing is waiting")
    for row in rows:
        click.echo(
            f"{row['job_id']:>6}  user {row['user_id']:<20}  "
            f"{place_text(row['position'], row['eta_seconds'], row['capped']):<28}  "
            f"{row['prompt'][:50]!r}"
        )


@click.group()
def quota() -> None:
    """Show or set a user's quotas and fair-share weight."""


@quota.command()
@click.option("--user", "user_id", type=int, default=CLI_USER_ID, help="A Discord user id.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def show(settings: Settings, user_id: int, as_json: bool) -> None:
    """A user's limits (with their overrides), usage today and weight."""

    async def _show() -> dict[str, Any]:
        async with open_runtime(settings) as runtime:
            usage = await runtime.service.usage(user_id)
        user = usage.user
        return {
            "user_id": user_id,
            "limits": dataclasses.asdict(usage.limits),
            "overrides": user.quota_overrides,
            "weight": user.weight,
            "queued": usage.queued,
            "images_today": usage.images_today,
            "bucket_tokens": round(usage.bucket_tokens, 2),
            "day_resets_at": usage.day_resets_at.isoformat(),
        }

    report = run_async(_show())
    if as_json:
        click.echo(json.dumps(report))
        return
    limits = report["limits"]
    weight = report["weight"]
    click.echo(f"user {user_id}")
    click.echo(f"  weight             {'from roles' if weight is None else weight}")
    click.echo(f"  waiting or running {report['queued']} of {limits['queued_per_user']}")
    click.echo(
        f"  images today       {report['images_today']} of {limits['images_per_user_day']}"
        f" (resets {report['day_resets_at']})"
    )
    click.echo(
        f"  button presses     {report['bucket_tokens']} of {limits['bucket_size']} left, "
        f"one back every {limits['bucket_refill_seconds']:g} s"
    )
    if report["overrides"]:
        overridden = ", ".join(f"{k}={v}" for k, v in sorted(report["overrides"].items()))
        click.echo(f"  overrides          {overridden}")


@quota.command(name="set")
@click.argument("user_id", type=int)
@click.option("--weight", type=float, default=None, help="Fair-share weight (above 0).")
@click.option("--clear-weight", is_flag=True, help="Take the weight from roles again.")
@click.option(
    "--limit",
    "limits",
    multiple=True,
    metavar="NAME=VALUE",
    help=f"A per-user quota: {', '.join(USER_QUOTAS)}.",
)
@click.option("--clear", multiple=True, metavar="NAME", help="Back to the host's default.")
@click.pass_obj
def set_quota(
    settings: Settings,
    user_id: int,
    weight: float | None,
    clear_weight: bool,
    limits: tuple[str, ...],
    clear: tuple[str, ...],
) -> None:
    """Override USER_ID's quotas or weight (stored; the host's defaults apply otherwise)."""
    overrides: dict[str, Any] = {}
    for item in limits:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--limit")
        overrides[name.strip()] = value.strip()

    async def _set() -> None:
        async with open_runtime(settings) as runtime:
            await runtime.service.set_limits(
                user_id,
                weight=weight,
                clear_weight=clear_weight,
                overrides=overrides,
                clear=clear,
            )

    run_async(_set())
    click.echo(f"user {user_id} updated")
