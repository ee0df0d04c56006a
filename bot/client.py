"""The Discord client: commands, buttons, reactions and deliveries around one runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.admin import AdminCog
from bot.buttons import AdminButton, CompareSelect, JobButton, QueuePageButton, RegionSelect
from bot.commands import RECEIVED, ImagineCog, refuse
from bot.delivery import Deliveries
from bot.preferences import PreferencesCog, SettingsButton, SettingsSelect
from bot.runtime import Runtime
from generation.access import Access, Actor
from generation.faults import is_transient
from generation.intents import IntentLog
from generation.outbox import Backoff, Outbox
from storage.models import utcnow

logger = logging.getLogger(__name__)


def intents() -> discord.Intents:
    """Guilds (channels, roles) and reactions; message content is never needed."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_reactions = True
    return wanted


def point_at(api_base: str | None, gateway_url: str | None) -> None:
    """Send REST calls and the gateway connection to a Discord-compatible proxy."""
    if api_base:
        discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class ImagineTree(app_commands.CommandTree["ImagineBot"]):
    async def interaction_check(self, interaction: discord.Interaction[ImagineBot], /) -> bool:
        return await interaction.client.admit(interaction)


class ImagineBot(commands.Bot):
    def __init__(self, runtime: Runtime, *, guild_ready_timeout: float = 2.0) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            help_command=None,
            guild_ready_timeout=guild_ready_timeout,
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=ImagineTree,
            allowed_contexts=app_commands.AppCommandContext(
                guild=True, dm_channel=runtime.settings.allow_dms, private_channel=False
            ),
            allowed_installs=app_commands.AppInstallationType(guild=True, user=False),
        )
        self.runtime = runtime
        settings = runtime.settings
        self.access = Access.of(settings.admin_user_ids, settings.admin_role_ids)
        self.outbox = Outbox(
            runtime.db, Backoff(settings.delivery_retry_base, settings.delivery_retry_cap)
        )
        self.deliveries = Deliveries(
            self,
            runtime.service,
            self.outbox,
            runtime.store,
            runtime.events,
            progress_interval=runtime.settings.progress_interval,
            sweep_interval=runtime.settings.delivery_sweep_interval,
            moderation_channel_id=runtime.settings.moderation_channel_id,
            place_interval=settings.place_interval,
            place_edits_per_second=settings.place_edits_per_second,
        )
        self.intent_log = IntentLog(runtime.db)
        self.started_at = utcnow()  # records written before this are a stopped process's
        # Jobs made at once after their answers went out: fewer than the database's
        # connections (SQLite: its one writer), so recording and answering the next requests
        # never wait behind a crowd of them.
        self.making = asyncio.Semaphore(1 if runtime.db.dialect == "sqlite" else 3)
        self.handlers: ImagineCog
        self.admin: AdminCog
        self.preferences: PreferencesCog

    def serves(self, guild_id: int | None, *, dm_commands: bool = True) -> bool:
        """Whether the bot serves this server (``IMAGINE_GUILD_IDS``, or every server when
        open to all); a direct message (None): when DMs are allowed, or not a command."""
        settings = self.runtime.settings
        if guild_id is None:
            return settings.allow_dms or not dm_commands
        return settings.open_to_all_servers or guild_id in settings.guild_ids

    async def admit(self, interaction: discord.Interaction[ImagineBot]) -> bool:
        """Every command and button passes here first: from a server the bot does not serve
        (or a command in a DM, unless allowed), one line back, a line in the log, nothing
        done. It notes when the interaction arrived: its answer is due 3 s from then."""
        interaction.extras.setdefault(RECEIVED, time.monotonic())
        command = interaction.type is discord.InteractionType.application_command
        if self.serves(interaction.guild_id, dm_commands=command):
            return True
        where = f"server {interaction.guild_id}" if interaction.guild_id else "a direct message"
        logger.warning(
            "ignored an interaction from %s by user %s: not a server in IMAGINE_GUILD_IDS "
            "(or DMs are off)",
            where,
            interaction.user.id,
        )
        text = messages.NOT_SERVED if interaction.guild_id else messages.NO_DMS
        with contextlib.suppress(discord.HTTPException):
            await interaction.response.send_message(text, ephemeral=True)
        return False

    def actor(
        self,
        user: discord.abc.User,
        guild_id: int | None,
        permissions: discord.Permissions | None = None,
    ) -> Actor:
        """Who is acting, from which server, with what standing (``generation.access``
        decides what that allows). ``permissions``: the member's in the channel, as the
        interaction says; else computed from the cached member."""
        if permissions is None:
            permissions = getattr(user, "guild_permissions", None)
        roles = [role.id for role in getattr(user, "roles", ())]
        return self.access.actor(
            user.id, guild_id, roles, permissions.value if permissions is not None else 0
        )

    async def setup_hook(self) -> None:
        self.handlers = ImagineCog(self)
        await self.add_cog(self.handlers)
        self.admin = AdminCog(self)
        await self.add_cog(self.admin)
        self.preferences = PreferencesCog(self)
        await self.add_cog(self.preferences)
        self.add_dynamic_items(
            JobButton,
            AdminButton,
            QueuePageButton,
            SettingsSelect,
            SettingsButton,
            RegionSelect,
            CompareSelect,
        )
        self.tree.on_error = self._command_error  # type: ignore[method-assign]
        settings = self.runtime.settings
        if settings.open_to_all_servers or not settings.guild_ids:
            await self.tree.sync()  # global: every server that adds the bot
        else:
            for guild_id in settings.guild_ids:
                await self._sync(guild_id)
        await self.deliveries.start()
        if self.runtime.service.loras is not None:  # hash them now, not in a member's request
            self._warming = asyncio.create_task(
                asyncio.to_thread(self.runtime.service.loras.warm), name="hash LoRAs"
            )
        self._resuming = asyncio.create_task(
            self.handlers.resume_written(self.started_at), name="resume"
        )

    async def _sync(self, guild_id: int) -> None:
        """Register the commands in one server; one that refuses (the bot was removed from it,
        or the id is wrong) is logged, and the bot serves the rest."""
        guild = discord.Object(guild_id)
        self.tree.copy_global_to(guild=guild)
        try:
            await self.tree.sync(guild=guild)
        except discord.HTTPException as error:
            logger.error(
                "could not register the commands in server %s (%s %s: %s); serving the others. "
                "Is the bot in that server, invited with the applications.commands scope?",
                guild_id,
                error.status,
                error.code,
                error.text,
            )

    async def close(self) -> None:
        await self.deliveries.close()
        await super().close()

    async def _command_error(
        self,
        interaction: discord.Interaction[ImagineBot],
        error: discord.app_commands.AppCommandError,
    ) -> None:
        """A command that broke: an apology to the user, the traceback to the log."""
        original = getattr(error, "original", error)
        name = getattr(interaction.command, "qualified_name", "?")
        text = messages.BROKE
        if isinstance(error, discord.app_commands.TransformerError):
            text = f"**{error.value!r}** is not a valid value: {error}"
        if is_transient(original):
            # The database (or the store) is away for a moment: say so, and nothing else.
            logger.warning("/%s failed: the database or store is away: %s", name, original)
            text = messages.AWAY
        else:
            logger.error("/%s failed", name, exc_info=error)
        try:
            await refuse(interaction, text)
        except discord.HTTPException:
            logger.warning("could not tell the user about the failure")
