"""/admin: logs, job, ban, unban, quota, settings, model, delete and flagged, with their
buttons.

Discord's ``default_member_permissions`` only hides commands; a server can change that, so
every command and every button here checks the member itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.commands import answer, refuse
from bot.limits import Message, Upload
from generation.access import Actor, may_manage_users, may_moderate_job
from generation.errors import GenerationError, InvalidRequest, JobNotFound
from generation.imaging import fit_file
from generation.loras import parse_choice
from generation.moderation import Flagged, parse_duration
from generation.presets import Preset, PresetBook
from generation.quotas import SERVER_QUOTAS
from generation.samplers import SAMPLER_NAMES
from generation.server_settings import POLICY_CHOICES, PRIVATE_MODES
from storage.models import utcnow
from storage.records import JobRecord

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)

# What the images of one review may weigh together: well under Discord's 25 MiB request.
REVIEW_BYTES = 8 * 1024 * 1024
NOT_ALLOWED = (
    "Only this server's moderators may do that (a role in IMAGINE_ADMIN_ROLE_IDS, or the "
    "Administrator permission here) and the host's admins (IMAGINE_ADMIN_USER_IDS)."
)
HOST_ONLY = (
    "Quotas and weights apply on every server this bot serves, so only the host's admins "
    "(IMAGINE_ADMIN_USER_IDS) set them. Ask the bot's host."
)


MODELS_HOST_ONLY = (
    "The host's admins (IMAGINE_ADMIN_USER_IDS) add and remove models, as they run on the "
    "host's GPUs; a server's moderators pick its default with /admin model default."
)


def _servers(text: str | None, here: int | None) -> tuple[int, ...]:
    """Server ids, comma-separated; ``here`` is this server."""
    ids = []
    for part in _terms(text):
        if part.lower() == "here" and here is not None:
            ids.append(here)
        else:
            ids.append(_snowflake("servers", part) or 0)
    return tuple(dict.fromkeys(ids))


def _since(text: str | None) -> dt.datetime | None:
    return None if not text else utcnow() - parse_duration(text, option="since")


def _snowflake(option: str, text: str | None) -> int | None:
    if not text:
        return None
    if not text.strip().isdigit():
        raise InvalidRequest(option, f"must be an id (digits only), not {text!r}")
    return int(text)


def _terms(text: str | None) -> list[str]:
    """Comma-separated terms; a ``re:`` pattern is given alone (its commas are its own)."""
    text = (text or "").strip()
    if text.startswith("re:"):
        return [text]
    return [term.strip() for term in text.split(",") if term.strip()]


def _scoped(actor: Actor, guild_id: int | None) -> int | None:
    """The server whose records a listing shows: a server's moderator sees only their own."""
    if actor.scope is None:
        return guild_id
    if guild_id not in (None, actor.scope):
        raise InvalidRequest("guild", "must be this server: you moderate this server only")
    return actor.scope


@app_commands.guild_only()
@app_commands.default_permissions(manage_messages=True)
class AdminCog(commands.GroupCog, group_name="admin", group_description="Moderator tools."):
    """Hidden by default from members without Manage Messages, and never offered in DMs (a
    server may show it to more members: the checks here hold all the same)."""

    def __init__(self, bot: ImagineBot) -> None:
        super().__init__()
        self.bot = bot
        self.moderation = bot.runtime.moderation
        self.service = bot.runtime.service

    async def _allowed(self, interaction: discord.Interaction[ImagineBot]) -> Actor | None:
        """The moderator acting (a host admin, or a moderator of this server), or None once
        refused."""
        actor = self.bot.actor(interaction.user, interaction.guild_id, interaction.permissions)
        if actor.may_moderate:
            return actor
        await refuse(interaction, NOT_ALLOWED)
        return None

    async def _job(self, actor: Actor, job_id: int) -> JobRecord:
        """A job this moderator moderates; another server's is as if there were none."""
        job = (await self.service.job(job_id)).job
        if not may_moderate_job(actor, job):
            raise JobNotFound(job_id)
        return job

    async def _host_only(
        self, interaction: discord.Interaction[ImagineBot], actor: Actor, why: str = ""
    ) -> bool:
        if may_manage_users(actor):
            return True
        await refuse(interaction, why or HOST_ONLY)
        return False

    async def _answer(self, interaction: discord.Interaction[ImagineBot], text: str) -> None:
        await answer(interaction, messages.plain(text))

    # -- commands ----------------------------------------------------------------------------

    @app_commands.command(name="logs", description="Recent jobs: who asked for what.")
    @app_commands.describe(
        user="Only this member's jobs.",
        since="Only this recent: 30m, 12h, 7d, 2w.",
        flagged="Only jobs with an image the safety check flagged.",
        guild="Only this server's jobs (its id).",
    )
    async def logs(
        self,
        interaction: discord.Interaction[ImagineBot],
        user: discord.User | None = None,
        since: str | None = None,
        flagged: bool = False,
        guild: str | None = None,
    ) -> None:
        actor = await self._allowed(interaction)
        if actor is None:
            return
        try:
            since_at = _since(since)
            guild_id = _snowflake("guild", guild)
            guild_id = _scoped(actor, guild_id)
        except InvalidRequest as error:
            await refuse(interaction, f"**{error.option}** {error.message}")
            return
        filters = (
            user.id if user else 0,
            int(since_at.timestamp()) if since_at else 0,
            int(flagged),
            guild_id or 0,
        )
        await answer(interaction, await self._logs_page(0, filters))

    async def _logs_page(
        self, page: int, filters: tuple[int, ...], cursor: tuple[int, int] = (0, 0)
    ) -> Message:
        """A page of /admin logs: the first, or (``cursor``: a job id and 0 for older, 1 for
        newer) the one next to a page shown before."""
        user_id, since, flagged, guild_id = filters
        key, newer = cursor
        result = await self.moderation.logs(
            user_id=user_id or None,
            since=dt.datetime.fromtimestamp(since, dt.UTC) if since else None,
            flagged=bool(flagged),
            guild_id=guild_id or None,
            page=page,
            per_page=messages.LOGS_PER_PAGE,
            before=key if key and not newer else None,
            after=key if key and newer else None,
        )
        described = [
            f"user <@{user_id}>" if user_id else "",
            f"since {messages.when(dt.datetime.fromtimestamp(since, dt.UTC))}" if since else "",
            "flagged only" if flagged else "",
            f"server {guild_id}" if guild_id else "",
        ]
        return messages.admin_logs(result, filters, " · ".join(d for d in described if d))

    @app_commands.command(name="job", description="A job's recipe, lineage, events and images.")
    async def job(self, interaction: discord.Interaction[ImagineBot], id: int) -> None:
        actor = await self._allowed(interaction)
        if actor is None:
            return
        try:
            await self._job(actor, id)
            report = await self.moderation.report(id)
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        await answer(interaction, messages.admin_job(report))

    @app_commands.command(name="ban", description="Stop a member from generating.")
    @app_commands.describe(duration="How long: 30m, 12h, 7d, 2w; empty: until unbanned.")
    async def ban(
        self,
        interaction: discord.Interaction[ImagineBot],
        user: discord.User,
        reason: str | None = None,
        duration: str | None = None,
    ) -> None:
        actor = await self._allowed(interaction)
        if actor is None:
            return
        try:
            length = parse_duration(duration) if duration else None
        except InvalidRequest as error:
            await refuse(interaction, f"**{error.option}** {error.message}")
            return
        in_server = not may_manage_users(actor)  # a server's moderators ban in their server
        await self.moderation.ban(
            interaction.user.id,
            user.id,
            reason=reason or "",
            duration=length,
            guild_id=interaction.guild_id,
            in_server=in_server,
        )
        end = messages.when(utcnow() + length) if length else "until unbanned"
        where = "in this server" if in_server else "on every server"
        await self._answer(
            interaction,
            f"<@{user.id}> is banned {where} {end}: {reason or 'no reason given'}",
        )

    @app_commands.command(name="unban", description="Let a member generate again.")
    async def unban(self, interaction: discord.Interaction[ImagineBot], user: discord.User) -> None:
        actor = await self._allowed(interaction)
        if actor is None:
            return
        in_server = not may_manage_users(actor)
        await self.moderation.unban(
            interaction.user.id, user.id, guild_id=interaction.guild_id, in_server=in_server
        )
        lifted = "their ban in this server is lifted" if in_server else "every ban is lifted"
        await self._answer(interaction, f"<@{user.id}>: {lifted}.")

    @app_commands.command(name="quota", description="Show or set a member's limits and weight.")
    async def quota(  # noqa: PLR0917 - discord.py passes each option as an argument
        self,
        interaction: discord.Interaction[ImagineBot],
        user: discord.User,
        weight: float | None = None,
        queued_per_user: int | None = None,
        images_per_user_day: int | None = None,
        reset: bool = False,
    ) -> None:
        actor = await self._allowed(interaction)
        if actor is None or not await self._host_only(interaction, actor):
            return
        overrides = {
            name: value
            for name, value in (
                ("queued_per_user", queued_per_user),
                ("images_per_user_day", images_per_user_day),
            )
            if value is not None
        }
        try:
            if reset or weight is not None or overrides:
                await self.service.set_limits(
                    user.id,
                    weight=weight,
                    clear_weight=reset,
                    overrides=overrides,
                    clear=("queued_per_user", "images_per_user_day") if reset else (),
                    actor_id=interaction.user.id,
                    guild_id=interaction.guild_id,
                )
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        usage = await self.service.usage(user.id)
        limits = usage.limits
        weight_text = "from roles" if usage.user.weight is None else f"{usage.user.weight:g}"
        await self._answer(
            interaction,
            f"<@{user.id}>: weight {weight_text}; waiting or running {usage.queued} of "
            f"{limits.queued_per_user}; images today {usage.images_today} of "
            f"{limits.images_per_user_day}",
        )

    @app_commands.command(name="settings", description="Show or change this server's settings.")
    @app_commands.describe(
        safety="What a flagged image gets here: spoiler, withhold, off, or host (the host's).",
        block="Terms to block here, comma-separated (on top of the host's); a re: pattern alone.",
        unblock="Terms of this server's own to block no more, comma-separated.",
        age_restricted_only="Allow /imagine only in channels marked age-restricted.",
        private_mode="Members choose private mode (allow), never (forbid), or always (force).",
        quota="A limit to set for this server (no looser than the host's).",
        limit="Its value here; leave empty to take the host's again.",
    )
    @app_commands.choices(
        safety=[app_commands.Choice(name=n, value=n) for n in POLICY_CHOICES],
        quota=[app_commands.Choice(name=n, value=n) for n in SERVER_QUOTAS],
        private_mode=[app_commands.Choice(name=n, value=n) for n in PRIVATE_MODES],
    )
    async def settings(  # noqa: PLR0917 - discord.py passes each option as an argument
        self,
        interaction: discord.Interaction[ImagineBot],
        safety: str | None = None,
        block: str | None = None,
        unblock: str | None = None,
        age_restricted_only: bool | None = None,
        quota: str | None = None,
        limit: float | None = None,
        private_mode: str | None = None,
    ) -> None:
        actor = await self._allowed(interaction)
        if actor is None or interaction.guild_id is None:
            return
        servers = self.service.servers
        changes = (safety, block, unblock, age_restricted_only, quota, private_mode)
        try:
            if any(change is not None for change in changes):
                rules = await servers.update(
                    interaction.guild_id,
                    actor,
                    safety_policy=safety,
                    block=_terms(block),
                    unblock=_terms(unblock),
                    age_restricted_only=age_restricted_only,
                    quotas={quota: limit} if quota and limit is not None else None,
                    clear_quotas=(quota,) if quota and limit is None else (),
                    private_mode=private_mode,
                )
            else:
                rules = await servers.rules(interaction.guild_id)
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        await answer(interaction, messages.server_settings(rules, servers.host_rules()))

    # -- /admin model ------------------------------------------------------------------------

    model = app_commands.Group(name="model", description="The models members may pick.")

    @model.command(name="list", description="The models this server may use, and its default.")
    async def model_list(self, interaction: discord.Interaction[ImagineBot]) -> None:
        actor = await self._allowed(interaction)
        if actor is None:
            return
        snapshot = await self.service.presets.current()
        where = None if actor.host else interaction.guild_id  # host admins see every preset
        presets = (
            list(snapshot.presets.values())
            if where is None
            else (PresetBook.offered(snapshot, where))
        )
        default = snapshot.defaults.get(interaction.guild_id or 0)
        await answer(
            interaction,
            messages.presets(presets, default, self.service.model.name, all_servers=where is None),
        )

    @model.command(name="add", description="Offer a model by name, with its defaults.")
    @app_commands.describe(
        name="What members pick: 1-32 lowercase letters, digits, '.', '_' or '-'.",
        source="One of the host's models, or a hub id, folder or checkpoint file on this host.",
        sampler="Its default sampler.",
        steps="Its default steps.",
        guidance="Its default guidance.",
        width="Its default width (with height).",
        height="Its default height (with width).",
        negative="Put before every negative prompt.",
        loras="LoRAs every job adds: NAME[:WEIGHT], comma-separated.",
        cost="Fair-share factor, 0.1-10: what its jobs are charged next to the model's own.",
        servers="Server ids that may use it, comma-separated; 'here': this one; empty: all.",
    )
    @app_commands.choices(
        sampler=[app_commands.Choice(name=name, value=name) for name in SAMPLER_NAMES]
    )
    async def model_add(  # noqa: PLR0917 - discord.py passes each option as an argument
        self,
        interaction: discord.Interaction[ImagineBot],
        name: str,
        source: str,
        sampler: str | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        width: app_commands.Range[int, 64, 4096] | None = None,
        height: app_commands.Range[int, 64, 4096] | None = None,
        negative: str | None = None,
        loras: str | None = None,
        cost: app_commands.Range[float, 0.1, 10.0] | None = None,
        servers: str | None = None,
    ) -> None:
        actor = await self._allowed(interaction)
        if actor is None or not await self._host_only(interaction, actor, MODELS_HOST_ONLY):
            return
        try:
            preset = Preset(
                name=name.strip(),
                source=source.strip(),
                sampler=sampler,
                steps=steps,
                guidance=guidance,
                width=width,
                height=height,
                negative_prefix=(negative or "").strip(),
                loras=tuple(parse_choice(text) for text in _terms(loras)),
                cost_factor=1.0 if cost is None else cost,
                guild_ids=_servers(servers, interaction.guild_id),
            )
            # A model of its own is described here (its weights hashed): seconds, past the
            # three Discord gives an answer.
            await interaction.response.defer(thinking=True, ephemeral=True)
            await self.service.put_preset(actor, preset)
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        text = f"Model **{preset.name}** is offered ({preset.source})."
        await interaction.edit_original_response(**messages.plain(text).edit_kwargs())

    @model.command(name="remove", description="Stop offering a model.")
    async def model_remove(self, interaction: discord.Interaction[ImagineBot], name: str) -> None:
        actor = await self._allowed(interaction)
        if actor is None or not await self._host_only(interaction, actor, MODELS_HOST_ONLY):
            return
        try:
            await self.service.presets.remove(actor, name.strip())
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        await self._answer(
            interaction,
            f"Model **{name}** is no longer offered; servers that used it by default use the "
            "host's model again. Jobs made with it keep their recipes.",
        )

    @model.command(name="default", description="This server's default model (empty: the host's).")
    @app_commands.describe(name="A model this server may use; leave empty for the host's.")
    async def model_default(
        self, interaction: discord.Interaction[ImagineBot], name: str | None = None
    ) -> None:
        actor = await self._allowed(interaction)
        if actor is None:
            return
        try:
            await self.service.presets.set_default(
                actor, interaction.guild_id, name.strip() if name else None
            )
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        chosen = f"**{name}**" if name else f"the host's ({self.service.model.name})"
        await self._answer(interaction, f"/imagine here now uses {chosen} when no model is named.")

    @app_commands.command(name="delete", description="Delete a job's result and image files.")
    async def delete(
        self,
        interaction: discord.Interaction[ImagineBot],
        job: int,
        reason: str | None = None,
    ) -> None:
        actor = await self._allowed(interaction)
        if actor is None:
            return
        try:
            await self._job(actor, job)
            await self._delete_job(interaction, job, reason or "")
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        await self._answer(interaction, f"Job {job} deleted; its record stays.")

    async def _delete_job(
        self, interaction: discord.Interaction[ImagineBot], job_id: int, reason: str
    ) -> None:
        await self.moderation.delete_job(
            interaction.user.id, job_id, is_admin=True, reason=reason, guild_id=interaction.guild_id
        )
        # Every message of the job goes, after the answer (best effort: the record is
        # deleted all the same).
        self.bot.deliveries.remove_messages(job_id)

    @app_commands.command(name="flagged", description="Images the safety check flagged.")
    async def flagged(self, interaction: discord.Interaction[ImagineBot]) -> None:
        actor = await self._allowed(interaction)
        if actor is None:
            return
        waiting = await self.moderation.flagged(limit=messages.REVIEWED, guild_id=actor.scope)
        if not waiting:
            await self._answer(interaction, "Nothing is waiting for review.")
            return
        # Reading and shrinking five images may take longer than Discord's 3 s: answer first.
        await interaction.response.defer(thinking=True, ephemeral=True)
        # A review needs no full size, and the five together must stay within one request.
        budget = min(interaction.filesize_limit, REVIEW_BYTES // len(waiting))
        store = self.bot.runtime.store

        async def shown(item: Flagged) -> Upload:
            data = await asyncio.to_thread(store.get, item.image.path)
            fitted = await asyncio.to_thread(fit_file, data, budget)
            name = f"SPOILER_{item.job.id}-{item.image.index}.{fitted.extension}"
            return Upload(name, fitted.data)

        uploads = await asyncio.gather(*(shown(item) for item in waiting))
        review = messages.admin_flagged(waiting, uploads)
        await interaction.edit_original_response(**review.edit_kwargs())

    # -- buttons -----------------------------------------------------------------------------

    async def button(
        self, interaction: discord.Interaction[ImagineBot], action: str, args: tuple[int, ...]
    ) -> None:
        actor = await self._allowed(interaction)
        if actor is None:
            return
        try:
            if action == "logs":
                if len(args) != messages.LOGS_BUTTON_ARGS:
                    raise InvalidRequest("button", "is not a logs page")
                key, newer, number, *filters = args
                guild_id = _scoped(actor, filters[3] or None)
                page = await self._logs_page(number, (*filters[:3], guild_id or 0), (key, newer))
                await interaction.response.edit_message(**page.edit_kwargs())
                return
            if action == "approve":
                await self._job(actor, await self.moderation.job_of_image(args[0]))
                image = await self.moderation.approve(
                    interaction.user.id, args[0], guild_id=interaction.guild_id
                )
                text = f"Image {image.index + 1} of job {image.job_id} approved."
                self.bot.deliveries.start_delivery(image.job_id)  # shown now if none is held back
            elif action == "delete":
                await self._job(actor, args[0])
                await self._delete_job(interaction, args[0], "from the review of flagged images")
                text = f"Job {args[0]} deleted."
            elif action == "ban":
                in_server = not may_manage_users(actor)
                await self.moderation.ban(
                    interaction.user.id,
                    args[0],
                    reason=f"from the review of job {args[1]}" if len(args) > 1 else "",
                    guild_id=interaction.guild_id,
                    in_server=in_server,
                )
                where = "in this server" if in_server else "on every server"
                text = f"<@{args[0]}> is banned {where} until unbanned."
            else:
                raise InvalidRequest("button", f"{action!r} is not an admin action")
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        await self._answer(interaction, text)
