"""/admin: logs, job, ban, unban, quota, delete and flagged, with their buttons.

Discord's ``default_member_permissions`` only hides commands; a server can change that, so
every command and every button here checks the member itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import texts
from bot.commands import refuse
from generation.errors import GenerationError, InvalidRequest
from generation.moderation import LogPage, parse_duration
from storage.models import utcnow

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)

NOT_ALLOWED = "Only moderators may do that (admins in IMAGINE_ADMIN_USER_IDS or _ROLE_IDS)."
PER_PAGE = 10


def _since(text: str | None) -> dt.datetime | None:
    return None if not text else utcnow() - parse_duration(text)


def _snowflake(option: str, text: str | None) -> int | None:
    if not text:
        return None
    if not text.strip().isdigit():
        raise InvalidRequest(option, f"must be an id (digits only), not {text!r}")
    return int(text)


def logs_embed(page: LogPage, filters: str) -> discord.Embed:
    embed = discord.Embed(title=f"Jobs — page {page.page + 1}", description=filters or None)
    for view in page.jobs:
        job = view.job
        flags = [i for i in view.images if i.review is not None]
        flag = f" · ⚠ flagged ({len(flags)})" if flags else ""
        embed.add_field(
            name=f"job {job.id} · {job.status}{flag}",
            value=f"{texts.when(job.created_at)} · <@{job.user_id}> · {job.prompt[:150]}",
            inline=False,
        )
    if not page.jobs:
        embed.description = (embed.description or "") + "\nNo jobs match."
    return embed


class AdminButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine-admin:(?P<action>[a-z]+):(?P<args>[0-9:]*)",
):
    """Moderators' buttons: page the logs; approve, delete or ban from the review queue."""

    def __init__(
        self, action: str, *args: int, label: str | None = None, row: int | None = None
    ) -> None:
        style = {
            "approve": discord.ButtonStyle.success,
            "delete": discord.ButtonStyle.danger,
            "ban": discord.ButtonStyle.danger,
        }.get(action, discord.ButtonStyle.secondary)
        super().__init__(
            discord.ui.Button(
                label=label or action.title(),
                style=style,
                custom_id=f"imagine-admin:{action}:" + ":".join(map(str, args)),
                row=row,
            )
        )
        self.action = action
        self.args = args

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> AdminButton:
        args = tuple(int(a) for a in match["args"].split(":") if a)
        return cls(match["action"], *args)

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        await interaction.client.admin.button(interaction, self.action, self.args)


class AdminCog(commands.GroupCog, group_name="admin", group_description="Moderator tools."):
    def __init__(self, bot: ImagineBot) -> None:
        super().__init__()
        self.bot = bot
        self.moderation = bot.runtime.moderation
        self.service = bot.runtime.service

    async def _allowed(self, interaction: discord.Interaction[ImagineBot]) -> bool:
        if self.bot.is_admin(interaction.user, interaction.permissions):
            return True
        await refuse(interaction, NOT_ALLOWED)
        return False

    async def _answer(
        self,
        interaction: discord.Interaction[ImagineBot],
        text: str = "",
        **kwargs: Any,
    ) -> None:
        await interaction.response.send_message(text, ephemeral=True, **kwargs)

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
        if not await self._allowed(interaction):
            return
        try:
            since_at = _since(since)
            guild_id = _snowflake("guild", guild)
        except InvalidRequest as error:
            await refuse(interaction, f"**{error.option}** {error.message}")
            return
        filters = (
            user.id if user else 0,
            int(since_at.timestamp()) if since_at else 0,
            int(flagged),
            guild_id or 0,
        )
        embed, view = await self._logs_page(0, filters)
        await self._answer(interaction, embed=embed, view=view)

    async def _logs_page(
        self, page: int, filters: tuple[int, ...]
    ) -> tuple[discord.Embed, discord.ui.View]:
        user_id, since, flagged, guild_id = filters
        result = await self.moderation.logs(
            user_id=user_id or None,
            since=dt.datetime.fromtimestamp(since, dt.UTC) if since else None,
            flagged=bool(flagged),
            guild_id=guild_id or None,
            page=page,
            per_page=PER_PAGE,
        )
        described = [
            f"user <@{user_id}>" if user_id else "",
            f"since {texts.when(dt.datetime.fromtimestamp(since, dt.UTC))}" if since else "",
            "flagged only" if flagged else "",
            f"server {guild_id}" if guild_id else "",
        ]
        embed = logs_embed(result, " · ".join(d for d in described if d))
        view = discord.ui.View(timeout=None)
        if page > 0:
            view.add_item(AdminButton("logs", page - 1, *filters, label="◀ Previous"))
        if result.has_next:
            view.add_item(AdminButton("logs", page + 1, *filters, label="Next ▶"))
        return embed, view

    @app_commands.command(name="job", description="A job's recipe, lineage, events and images.")
    async def job(self, interaction: discord.Interaction[ImagineBot], id: int) -> None:
        if not await self._allowed(interaction):
            return
        try:
            report = await self.moderation.report(id)
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        lines = [
            texts.recipe(report.view),
            texts.lineage(report.view.job, report.parent, report.children),
        ]
        lines += [
            f"event: {e.kind} by {f'<@{e.actor_id}>' if e.actor_id else 'the bot'} "
            f"{texts.when(e.created_at)} {e.reason}"
            for e in report.events
        ]
        lines += [
            f"image {i.index + 1}: review {i.review}, scores {i.flags.get('safety')}"
            for i in report.view.images
            if i.review is not None
        ]
        await self._answer(interaction, "\n".join(line for line in lines if line)[:1900])

    @app_commands.command(name="ban", description="Stop a member from generating.")
    @app_commands.describe(duration="How long: 30m, 12h, 7d, 2w; empty: until unbanned.")
    async def ban(
        self,
        interaction: discord.Interaction[ImagineBot],
        user: discord.User,
        reason: str | None = None,
        duration: str | None = None,
    ) -> None:
        if not await self._allowed(interaction):
            return
        try:
            length = parse_duration(duration) if duration else None
        except InvalidRequest as error:
            await refuse(interaction, f"**{error.option}** {error.message}")
            return
        banned = await self.moderation.ban(
            interaction.user.id,
            user.id,
            reason=reason or "",
            duration=length,
            guild_id=interaction.guild_id,
        )
        end = texts.when(banned.banned_until) if banned.banned_until else "until unbanned"
        await self._answer(interaction, f"<@{user.id}> is banned {end}: {banned.ban_reason}")

    @app_commands.command(name="unban", description="Let a member generate again.")
    async def unban(self, interaction: discord.Interaction[ImagineBot], user: discord.User) -> None:
        if not await self._allowed(interaction):
            return
        await self.moderation.unban(interaction.user.id, user.id, guild_id=interaction.guild_id)
        await self._answer(interaction, f"<@{user.id}> may generate again.")

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
        if not await self._allowed(interaction):
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

    @app_commands.command(name="delete", description="Delete a job's result and image files.")
    async def delete(
        self,
        interaction: discord.Interaction[ImagineBot],
        job: int,
        reason: str | None = None,
    ) -> None:
        if not await self._allowed(interaction):
            return
        try:
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
        delivery = await self.bot.outbox.get(job_id)
        if delivery is not None and delivery.result_message_id and delivery.channel_id:
            message = self.bot.get_partial_messageable(delivery.channel_id).get_partial_message(
                delivery.result_message_id
            )
            try:
                await message.delete()
            except discord.HTTPException as error:  # the record is deleted all the same
                logger.warning("could not delete the message of job %s: %s", job_id, error)

    @app_commands.command(name="flagged", description="Images the safety check flagged.")
    async def flagged(self, interaction: discord.Interaction[ImagineBot]) -> None:
        if not await self._allowed(interaction):
            return
        waiting = await self.moderation.flagged(limit=5)
        if not waiting:
            await self._answer(interaction, "Nothing is waiting for review.")
            return
        view = discord.ui.View(timeout=None)
        lines, files = [], []
        for row, item in enumerate(waiting):
            image, job = item.image, item.job
            lines.append(
                f"{row + 1}. job {job.id} image {image.index + 1} by <@{job.user_id}>: "
                f"{image.flags.get('safety')} — {job.prompt[:80]}"
            )
            view.add_item(AdminButton("approve", image.id, label=f"Approve {row + 1}", row=row))
            view.add_item(AdminButton("delete", job.id, label=f"Delete job {job.id}", row=row))
            view.add_item(
                AdminButton("ban", job.user_id, job.id, label=f"Ban {job.user_id}", row=row)
            )
            data = await asyncio.to_thread(self.bot.runtime.store.get, image.path)
            files.append(
                discord.File(io.BytesIO(data), filename=f"SPOILER_{job.id}-{image.index}.png")
            )
        await self._answer(interaction, "\n".join(lines), view=view, files=files)

    # -- buttons -----------------------------------------------------------------------------

    async def button(
        self, interaction: discord.Interaction[ImagineBot], action: str, args: tuple[int, ...]
    ) -> None:
        if not await self._allowed(interaction):
            return
        try:
            if action == "logs":
                embed, view = await self._logs_page(args[0], args[1:])
                await interaction.response.edit_message(embed=embed, view=view)
                return
            if action == "approve":
                image = await self.moderation.approve(
                    interaction.user.id, args[0], guild_id=interaction.guild_id
                )
                text = f"Image {image.index + 1} of job {image.job_id} approved."
            elif action == "delete":
                await self._delete_job(interaction, args[0], "from the review of flagged images")
                text = f"Job {args[0]} deleted."
            elif action == "ban":
                await self.moderation.ban(
                    interaction.user.id,
                    args[0],
                    reason=f"from the review of job {args[1]}" if len(args) > 1 else "",
                    guild_id=interaction.guild_id,
                )
                text = f"<@{args[0]}> is banned until unbanned."
            else:
                raise InvalidRequest("button", f"{action!r} is not an admin action")
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        await self._answer(interaction, text)
