"""Moderation for hosts: ``imagine-bot admin logs|job|ban|unban|quota|delete|flagged|settings``."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

from bot.cli_queue import quota
from bot.cli_support import job_json, run_async
from bot.runtime import open_runtime
from bot.settings import Settings
from generation.access import HOST
from generation.errors import GenerationError
from generation.loras import parse_choice
from generation.moderation import parse_duration
from generation.presets import Preset
from generation.quotas import SERVER_QUOTAS
from generation.samplers import SAMPLER_NAMES
from generation.server_settings import POLICY_CHOICES, PRIVATE_MODES
from storage.models import utcnow

ACTOR = click.option(
    "--actor", type=int, default=None, help="Your Discord id, for the record (default: the host)."
)


@click.group()
def admin() -> None:
    """Moderation: what was asked for, bans, quotas, deletions; every action is recorded."""


def _run(coroutine: Any) -> Any:
    try:
        return run_async(coroutine)
    except GenerationError as error:
        raise click.ClickException(str(error)) from error


@admin.command()
@click.option("--user", "user_id", type=int, default=None)
@click.option("--since", default=None, help="Only this recent: 30m, 12h, 7d, 2w.")
@click.option("--flagged", is_flag=True, help="Only jobs with a flagged image.")
@click.option("--guild", "guild_id", type=int, default=None)
@click.option(
    "--before", type=int, default=None, help="Older than this job: the next page after one."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def logs(
    settings: Settings,
    user_id: int | None,
    since: str | None,
    flagged: bool,
    guild_id: int | None,
    before: int | None,
    as_json: bool,
) -> None:
    """Recent jobs, newest first: time, user, status, flags, prompt; 20 a page (the next with
    ``--before`` the last id shown)."""

    async def _logs() -> list[dict[str, Any]]:
        async with open_runtime(settings) as runtime:
            result = await runtime.moderation.logs(
                user_id=user_id,
                since=utcnow() - parse_duration(since, "--since") if since else None,
                flagged=flagged,
                guild_id=guild_id,
                per_page=20,
                before=before,
            )
        return [
            {
                "job_id": v.job.id,
                "created_at": v.job.created_at.isoformat(),
                "user_id": v.job.user_id,
                "guild_id": v.job.guild_id,
                "status": v.job.status,
                "flagged": sum(image.review is not None for image in v.images),
                "prompt": v.job.prompt,
            }
            for v in result.jobs
        ]

    rows = _run(_logs())
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        flag = f"  flagged {row['flagged']}" if row["flagged"] else ""
        click.echo(
            f"{row['job_id']:>6}  {row['created_at'][:19]}  user {row['user_id']:<20}  "
            f"{row['status']:<9}{flag}  {row['prompt'][:60]!r}"
        )
    if not rows:
        click.echo("no jobs match")
    elif len(rows) == 20:
        click.echo(f"older: --before {rows[-1]['job_id']}")


@admin.command()
@click.argument("job_id", type=int)
@click.pass_obj
def job(settings: Settings, job_id: int) -> None:
    """A job's recipe, lineage, moderation events and images, as JSON."""

    async def _job() -> dict[str, Any]:
        async with open_runtime(settings) as runtime:
            report = await runtime.moderation.report(job_id)
            return {
                **job_json(runtime, report.view),
                "parent_job_id": report.view.job.parent_job_id,
                "children": [child.id for child in report.children],
                "events": [
                    {
                        "kind": e.kind,
                        "actor_id": e.actor_id,
                        "reason": e.reason,
                        "details": e.details,
                        "at": e.created_at.isoformat(),
                    }
                    for e in report.events
                ],
                "flags": {
                    image.index: {"review": image.review, "scores": image.flags.get("safety")}
                    for image in report.view.images
                    if image.review is not None
                },
            }

    click.echo(json.dumps(_run(_job()), indent=2))


@admin.command()
@click.argument("user_id", type=int)
@click.option("--reason", default="")
@click.option("--duration", default=None, help="30m, 12h, 7d, 2w; default: until unbanned.")
@ACTOR
@click.pass_obj
def ban(
    settings: Settings, user_id: int, reason: str, duration: str | None, actor: int | None
) -> None:
    """Stop USER_ID from generating."""

    async def _ban() -> str:
        length = parse_duration(duration) if duration else None
        async with open_runtime(settings) as runtime:
            user = await runtime.moderation.ban(actor, user_id, reason=reason, duration=length)
        end = (
            f"until {user.banned_until:%Y-%m-%d %H:%M} UTC"
            if user.banned_until
            else "until unbanned"
        )
        return f"user {user_id} is banned {end}"

    click.echo(_run(_ban()))


@admin.command()
@click.argument("user_id", type=int)
@click.option("--reason", default="")
@ACTOR
@click.pass_obj
def unban(settings: Settings, user_id: int, reason: str, actor: int | None) -> None:
    """Let USER_ID generate again."""

    async def _unban() -> None:
        async with open_runtime(settings) as runtime:
            await runtime.moderation.unban(actor, user_id, reason=reason)

    _run(_unban())
    click.echo(f"user {user_id} may generate again")


@admin.command()
@click.argument("job_id", type=int)
@click.option("--reason", default="")
@ACTOR
@click.pass_obj
def delete(settings: Settings, job_id: int, reason: str, actor: int | None) -> None:
    """Mark JOB_ID deleted and remove its image files; the record stays. The message in
    Discord goes with `/admin delete` (this command has no connection to Discord)."""

    async def _delete() -> None:
        async with open_runtime(settings) as runtime:
            await runtime.moderation.delete_job(actor, job_id, is_admin=True, reason=reason)

    _run(_delete())
    click.echo(f"job {job_id} deleted; its record stays")


admin.add_command(quota)


@admin.command(name="settings")
@click.argument("guild_id", type=int)
@click.option(
    "--safety",
    type=click.Choice(POLICY_CHOICES),
    default=None,
    help="What a flagged image gets in this server (host: the host's policy).",
)
@click.option("--block", multiple=True, help="A term to block in this server (repeatable).")
@click.option("--unblock", multiple=True, help="A term of its own to block no more.")
@click.option(
    "--age-restricted-only/--any-channel",
    default=None,
    help="Allow /imagine only in channels marked age-restricted.",
)
@click.option(
    "--private-mode",
    type=click.Choice(PRIVATE_MODES),
    default=None,
    help="Members choose private mode (allow), never (forbid), or always (force).",
)
@click.option("--quota", "quotas", multiple=True, help="NAME=VALUE: a limit for this server.")
@click.option("--clear-quota", multiple=True, help="NAME: take the host's limit again.")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@ACTOR
@click.pass_obj
def server_settings(
    settings: Settings,
    guild_id: int,
    safety: str | None,
    block: tuple[str, ...],
    unblock: tuple[str, ...],
    age_restricted_only: bool | None,
    private_mode: str | None,
    quotas: tuple[str, ...],
    clear_quota: tuple[str, ...],
    as_json: bool,
    actor: int | None,
) -> None:
    """Show or change GUILD_ID's own settings, which only tighten the host's (a looser safety
    policy for one server is IMAGINE_GUILD_SAFETY_POLICIES); every change is recorded."""
    limits: dict[str, str] = {}
    for item in quotas:
        name, equals, value = item.partition("=")
        if not equals:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--quota")
        limits[name.strip()] = value.strip()

    async def _settings() -> dict[str, Any]:
        async with open_runtime(settings) as runtime:
            servers = runtime.service.servers
            changing = safety or block or unblock or limits or clear_quota or private_mode
            if changing or age_restricted_only is not None:
                rules = await servers.update(
                    guild_id,
                    dataclasses.replace(HOST, user_id=actor),
                    safety_policy=safety,
                    block=block,
                    unblock=unblock,
                    age_restricted_only=age_restricted_only,
                    quotas=limits,
                    clear_quotas=clear_quota,
                    private_mode=private_mode,
                )
            else:
                rules = await servers.rules(guild_id)
        return {
            "guild_id": guild_id,
            "safety_policy": rules.safety_policy,
            "safety_policy_is_servers": bool(rules.stored and rules.stored.safety_policy),
            "age_restricted_only": rules.age_restricted_only,
            "private_mode": rules.private_mode,
            "blocked_terms": list(rules.blocked_terms),
            "quotas": dict(rules.quotas),
            "limits": {name: getattr(rules.limits, name) for name in SERVER_QUOTAS},
        }

    shown = _run(_settings())
    if as_json:
        click.echo(json.dumps(shown))
        return
    for key, value in shown.items():
        click.echo(f"{key}: {value}")


@admin.group(name="model")
def model_group() -> None:
    """Model presets: the models members pick by name, with their defaults."""


def _preset_json(preset: Preset, defaults: dict[int, str]) -> dict[str, Any]:
    values = preset.row()
    values["default_in"] = sorted(g for g, name in defaults.items() if name == preset.name)
    return values


@model_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def model_list(settings: Settings, as_json: bool) -> None:
    """Every preset, with its defaults and where it is a server's default."""

    async def _list() -> list[dict[str, Any]]:
        async with open_runtime(settings) as runtime:
            snapshot = await runtime.service.presets.current()
        return [_preset_json(p, snapshot.defaults) for p in snapshot.presets.values()]

    rows = _run(_list())
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no model presets: members use the host's models")
    for row in rows:
        where = ", ".join(map(str, row["guild_ids"])) or "every server"
        click.echo(f"{row['name']:<20} {row['source']:<40} {where}")


@model_group.command(name="add")
@click.argument("name")
@click.argument("source")
@click.option("--sampler", default=None, help=f"Its default sampler: {', '.join(SAMPLER_NAMES)}.")
@click.option("--steps", type=int, default=None)
@click.option("--guidance", type=float, default=None)
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--negative", default="", help="Put before every negative prompt.")
@click.option("--lora", "loras", multiple=True, metavar="NAME[:WEIGHT]", help="Repeatable.")
@click.option("--cost", type=float, default=1.0, show_default=True, help="Cost factor.")
@click.option("--guild", "guild_ids", type=int, multiple=True, help="A server that may use it.")
@ACTOR
@click.pass_obj
def model_add(
    settings: Settings,
    name: str,
    source: str,
    sampler: str | None,
    steps: int | None,
    guidance: float | None,
    width: int | None,
    height: int | None,
    negative: str,
    loras: tuple[str, ...],
    cost: float,
    guild_ids: tuple[int, ...],
    actor: int | None,
) -> None:
    """Offer SOURCE (one of the host's models) as NAME, with these defaults; replaces a
    preset of that name. Without --guild, every server may use it."""

    async def _add() -> None:
        preset = Preset(
            name=name,
            source=source,
            sampler=sampler,
            steps=steps,
            guidance=guidance,
            width=width,
            height=height,
            negative_prefix=negative.strip(),
            loras=tuple(parse_choice(text) for text in loras),
            cost_factor=cost,
            guild_ids=guild_ids,
        )
        async with open_runtime(settings) as runtime:
            await runtime.service.put_preset(dataclasses.replace(HOST, user_id=actor), preset)

    _run(_add())
    click.echo(f"model {name} is offered ({source})")


@model_group.command(name="remove")
@click.argument("name")
@ACTOR
@click.pass_obj
def model_remove(settings: Settings, name: str, actor: int | None) -> None:
    """Stop offering NAME; servers whose default it was use the host's model again."""

    async def _remove() -> None:
        async with open_runtime(settings) as runtime:
            await runtime.service.presets.remove(dataclasses.replace(HOST, user_id=actor), name)

    _run(_remove())
    click.echo(f"model {name} is no longer offered")


@model_group.command(name="default")
@click.argument("guild_id", type=int)
@click.argument("name", required=False)
@ACTOR
@click.pass_obj
def model_default(settings: Settings, guild_id: int, name: str | None, actor: int | None) -> None:
    """GUILD_ID's default model: NAME, or the host's when NAME is left out."""

    async def _default() -> None:
        async with open_runtime(settings) as runtime:
            await runtime.service.presets.set_default(
                dataclasses.replace(HOST, user_id=actor), guild_id, name
            )

    _run(_default())
    click.echo(f"server {guild_id} uses {name or 'the host model'} when none is named")
