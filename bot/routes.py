"""The ways a finished job's result reaches Discord, tried in order.

1. The interaction's response, edited into the result, while its token answers.
2. A message in the channel, replying to the request (the token expired or was refused, or
   the response was deleted).
3. A direct message to the requester (the channel is gone, or the bot may not post there:
   10003, 50001, 50013) — never for an image the safety check flagged.

A way that is closed for good (``Closed``) hands over to the next; when none is left the result
is undeliverable (``Undeliverable``, with every reason). A passing failure (Discord away, a 5xx,
a 429 discord.py would not wait out, the network) is raised as it is: the caller tries again
later. A file Discord still finds too large (40005) is sent smaller, at last without the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import discord

from bot import messages
from bot.limits import DEFAULT_FILE_LIMIT, Message
from generation.faults import is_transient
from generation.imaging import TooLargeToFit, fit_file
from generation.outbox import exposed, token_valid
from generation.rendering import grid_key
from generation.server_settings import ServerSettings
from generation.service import JobView
from storage.image_store import ImageStore
from storage.models import JobKind, JobStatus, Review, utcnow
from storage.records import DeliveryRecord, JobRecord

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)

T = TypeVar("T")
# The interaction's token or its message is gone: the response cannot carry the result.
TOKEN_GONE = frozenset({10008, 10015, 10062, 50027})
# The channel is gone or the bot may not post there (deleted; kicked; permission taken away;
# not a channel to post in; an archived or locked thread).
CHANNEL_CLOSED = frozenset({10003, 50001, 50013, 50008, 50083, 160005})
DMS_CLOSED = 50007  # the member does not take direct messages from the server's members
# The member cannot be written to: DMs closed, no server in common any more, no such user.
DM_CLOSED = frozenset({DMS_CLOSED, 50278, 10013})
FILE_TOO_LARGE = 40005
FILE_TRIES = 3  # fitted files Discord may refuse before the result goes without one
UNSETTLED = frozenset({Review.PENDING, Review.DELETED})
NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class Way(enum.StrEnum):
    RESPONSE = "response"
    CHANNEL = "channel"
    DM = "dm"


WAY_NAMES = {Way.RESPONSE: "answer", Way.CHANNEL: "channel", Way.DM: "direct message"}


class Closed(Exception):
    """This way is closed for good; the next is tried."""


class Undeliverable(Exception):
    """Every way was closed: the reasons, in the order they were met."""


def passing(error: BaseException) -> bool:
    """Whether trying again later may work: Discord or the network was away, not refusing."""
    if isinstance(error, discord.RateLimited | discord.DiscordServerError):
        return True
    if isinstance(error, discord.HTTPException):
        return error.status >= 500 or error.status == 429
    return isinstance(error, aiohttp.ClientError | TimeoutError) or is_transient(error)


# Discord's refusals, in words a member or a moderator reads in /job.
REFUSALS = {
    10003: "the channel was deleted",
    10008: "the message to edit was deleted",
    50001: "the bot can no longer see the channel",
    50013: "the bot may not post in the channel",
    50008: "the channel is not one to post in",
    50083: "the thread is archived",
    160005: "the thread is locked",
    DMS_CLOSED: "the member takes no direct messages from the server's members",
    50278: "the member shares no server with the bot any more",
    10013: "the member's account is gone",
}


def why(error: discord.HTTPException) -> str:
    """A refusal in words, with Discord's status and code."""
    words = REFUSALS.get(error.code) or (error.text or "no message")
    return f"{words} (Discord {error.status}/{error.code})"[:300]


class ResultRoutes:
    """Sends one finished job's result the first way that takes it."""

    def __init__(
        self,
        bot: ImagineBot,
        store: ImageStore,
        servers: ServerSettings,
        offers: Callable[[JobRecord], frozenset[JobKind]] = lambda _: frozenset(JobKind),
    ) -> None:
        self.bot = bot
        self.store = store
        self.servers = servers
        self.offers = offers  # which buttons a result shows (see GenerationService.offers)

    async def action(self, view: JobView) -> str | None:
        """What a result with a flagged image not yet approved gets (None: nothing flagged).
        Discord keeps sexual content to age-restricted channels, so a flagged image is shown
        (behind a spoiler, under the ``spoiler`` policy) only in a channel marked
        age-restricted; anywhere else, and under ``withhold``, it is held back for review. (By
        direct message it never goes: see ``_dm``.)"""
        if not any(image.review in UNSETTLED for image in view.images):
            return None
        policy = await self.servers.safety_policy(view.job.guild_id)
        if policy != "withhold" and self.age_restricted(view.job):
            return "spoiler"
        return "withhold"

    async def preview(self, job: JobRecord) -> str | None:
        """How a running job's previews are shown: ``clear`` where images are not checked,
        ``spoiler`` where a flagged result would be shown behind one, None (not at all) where
        the result could be withheld: a preview shows what the check has not seen."""
        policy = await self.servers.safety_policy(job.guild_id)
        if policy == "off":
            return "clear"
        if policy == "spoiler" and self.age_restricted(job):
            return "spoiler"
        return None

    def age_restricted(self, job: JobRecord) -> bool:
        """Whether the job's channel is marked age-restricted: as the bot sees it now (a
        thread: its parent), else as it was when asked."""
        if job.guild_id is None or job.channel_id is None:
            return False
        channel = self.bot.get_channel(job.channel_id)
        is_nsfw = getattr(channel, "is_nsfw", None)
        if is_nsfw is not None:
            with contextlib.suppress(Exception):  # a thread whose parent is not known
                return bool(is_nsfw())
        return bool(job.channel_nsfw)

    async def send(self, delivery: DeliveryRecord, view: JobView) -> tuple[Way, int | None]:
        """The way that took the result, and its message."""
        reasons: list[str] = []
        tries: list[tuple[Way, Callable[[], Awaitable[int | None]]]] = []
        if token_valid(delivery, utcnow()):
            # A private job answered where others see it: its result follows that answer,
            # seen by its member alone.
            answer = self._private_followup if exposed(view.job, delivery) else self._response
            tries.append((Way.RESPONSE, lambda: answer(delivery, view)))
        if not view.job.private:  # a private result goes to its owner alone: never posted
            tries.append((Way.CHANNEL, lambda: self._channel(delivery, view)))
        tries.append((Way.DM, lambda: self._dm(view)))
        for way, attempt in tries:
            try:
                return way, await attempt()
            except Closed as closed:
                logger.info("job %s: the %s way is closed: %s", view.job.id, way, closed)
                reasons.append(f"{WAY_NAMES[way]}: {closed}")
        raise Undeliverable("; ".join(reasons))

    # -- the ways ----------------------------------------------------------------------------

    async def _response(self, delivery: DeliveryRecord, view: JobView) -> int | None:
        webhook = self.webhook(delivery)

        def edit(result: Message) -> Awaitable[discord.WebhookMessage]:
            return webhook.edit_message(
                delivery.original_message_id or "@original",  # type: ignore[arg-type]
                **result.edit_kwargs(),
            )

        try:
            message = await self.send_result(view, delivery.attachment_size_limit, edit)
        except discord.HTTPException as error:
            if error.code in TOKEN_GONE or error.status == 401:
                raise Closed(
                    f"the command's answer can no longer be edited (Discord {error.status}/"
                    f"{error.code})"
                ) from error
            if error.code in CHANNEL_CLOSED:
                raise Closed(why(error)) from error
            raise  # passing (tried again later), or unexpected (a few times, then recorded)
        return message.id

    async def _private_followup(self, delivery: DeliveryRecord, view: JobView) -> int | None:
        """An ephemeral follow-up to the interaction (its answer, which others see, says
        only that the job is private)."""
        webhook = self.webhook(delivery)

        def send(result: Message) -> Awaitable[discord.WebhookMessage]:
            return webhook.send(**result.send_kwargs(), ephemeral=True, wait=True)

        try:
            message = await self.send_result(view, delivery.attachment_size_limit, send)
        except discord.HTTPException as error:
            if error.code in TOKEN_GONE or error.status == 401:
                raise Closed(
                    f"the command's token no longer answers (Discord {error.status}/{error.code})"
                ) from error
            if error.code in CHANNEL_CLOSED:
                raise Closed(why(error)) from error
            raise
        return message.id

    async def _channel(self, delivery: DeliveryRecord, view: JobView) -> int:
        """A message in the channel replying to the request (or its parent's result)."""
        job = view.job
        if delivery.channel_id is None:
            raise Closed("the request came from no channel")
        channel = self.bot.get_partial_messageable(delivery.channel_id)
        reply_to = delivery.reply_to_message_id or delivery.original_message_id
        reference = (
            discord.MessageReference(
                message_id=reply_to, channel_id=delivery.channel_id, fail_if_not_exists=False
            )
            if reply_to
            else None
        )
        guild = self.bot.get_guild(job.guild_id) if job.guild_id else None

        def post(result: Message) -> Awaitable[discord.Message]:
            return channel.send(
                **result.send_kwargs(),
                reference=reference or discord.utils.MISSING,
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]),
                # Discord answers a repeated nonce with the first message: a retry after a
                # crash between sending and recording cannot post twice.
                nonce=f"imagine-job-{job.id}" + ("-approved" if delivery.withheld else ""),
            )

        limit = guild.filesize_limit if guild is not None else DEFAULT_FILE_LIMIT
        try:
            message = await self.send_result(view, limit, post, mention=f"<@{job.user_id}>")
        except discord.HTTPException as error:
            if error.code in CHANNEL_CLOSED:
                raise Closed(why(error)) from error
            raise
        return message.id

    async def _dm(self, view: JobView) -> int:
        """A direct message to the requester: the channel would not take it."""
        job = view.job
        if await self.action(view) is not None:
            raise Closed("a flagged image is never sent by direct message")
        try:
            channel = await self.bot.create_dm(discord.Object(job.user_id))

            def send(result: Message) -> Awaitable[discord.Message]:
                return channel.send(**result.send_kwargs(), nonce=f"imagine-dm-{job.id}")

            message = await self.send_result(view, DEFAULT_FILE_LIMIT, send, by_dm=True)
        except discord.HTTPException as error:
            if error.code in DM_CLOSED:
                raise Closed(why(error)) from error
            raise
        return message.id

    def webhook(self, delivery: DeliveryRecord) -> discord.Webhook:
        """The interaction's webhook: the application's own, so it may answer ephemerally."""
        webhook = discord.Webhook.partial(
            delivery.application_id, delivery.interaction_token, client=self.bot
        )
        webhook.type = discord.WebhookType.application
        return webhook

    # -- the message and its file ------------------------------------------------------------

    async def send_result(
        self,
        view: JobView,
        limit: int | None,
        send: Callable[[Message], Awaitable[T]],
        mention: str | None = None,
        *,
        by_dm: bool = False,
    ) -> T:
        """Send the result with its file made to fit ``limit`` bytes. Should Discord still
        answer that the file is too large (40005: the server lost its boosts, say), again at
        half the size it refused, and at last without the file, saying so."""
        action = await self.action(view)
        data = await self._file_bytes(view, action)  # b"": there is one, but it is gone
        limit = limit or DEFAULT_FILE_LIMIT
        for attempt in range(FILE_TRIES + 1):
            fitted = None
            if data and attempt < FILE_TRIES:
                with contextlib.suppress(TooLargeToFit):
                    fitted = await asyncio.to_thread(fit_file, data, limit)
            result = messages.result(
                view,
                action=action,
                fitted=fitted,
                mention=mention,
                unattached=data is not None and fitted is None,
                by_dm=by_dm,
                # In a thread: judging a LoRA job's buttons may read its files.
                offers=await asyncio.to_thread(self.offers, view.job),
                page=self.job_page(view.job.id),
            )
            try:
                return await send(result)
            except discord.HTTPException as error:
                if error.code != FILE_TOO_LARGE or fitted is None:
                    raise
                logger.warning(
                    "job %s: Discord refused a %d-byte file; trying smaller",
                    view.job.id,
                    len(fitted.data),
                )
                limit = len(fitted.data) // 2
        raise AssertionError("unreachable: the last try sends no file")

    def job_page(self, job_id: int) -> str | None:
        """The job's page on the web console, where the host runs one (its OAuth2 client
        secret is set); None otherwise."""
        settings = self.bot.runtime.settings
        if settings.web_client_secret is None:
            return None
        return f"{settings.web_base_url.rstrip('/')}/jobs/{job_id}"

    async def _file_bytes(self, view: JobView, action: str | None) -> bytes | None:
        """The grid (or the one image) as stored, if the result shows one; None (the result
        goes without it, saying so) when the store says it is gone for good."""
        job = view.job
        if job.status != JobStatus.SUCCEEDED or not view.images or action == "withhold":
            return None
        key = view.images[0].path if len(view.images) == 1 else grid_key(job.id, job.attempts)
        try:
            return await asyncio.to_thread(self.store.get, key)
        except Exception as error:
            if is_transient(error):
                raise
            logger.error("job %s: its image %s cannot be read: %s", job.id, key, error)
            return b""

    # -- what the request showed until now ---------------------------------------------------

    async def replace_progress(self, delivery: DeliveryRecord, view: JobView, way: Way) -> None:
        """The result went elsewhere: the request's own message, which showed the progress,
        says where (or goes, if it cannot be edited). Best effort."""
        if way is Way.RESPONSE or delivery.original_message_id is None:
            return
        pointer = messages.went_elsewhere(view.job, dm=way is Way.DM).edit_kwargs()
        if view.job.private:  # nothing of a private job where others may see it
            pointer = messages.sent_privately(view.job).edit_kwargs()
        await self._on_original(delivery, edit=pointer)

    async def remove_progress(self, delivery: DeliveryRecord, way: Way) -> None:
        """The request's own message goes (the requester was told privately). Best effort."""
        if way is not Way.RESPONSE and delivery.original_message_id is not None:
            await self._on_original(delivery, edit=None)

    async def withdraw(
        self, delivery: DeliveryRecord, view: JobView, way: Way, message_id: int | None
    ) -> None:
        """Delete a result this process sent that the record says must not stand (another
        process delivered it first, or the job was deleted meanwhile). Best effort."""
        with contextlib.suppress(discord.HTTPException, *NETWORK_ERRORS):
            if way is Way.RESPONSE:
                await self._on_original(delivery, edit=None)
            elif way is Way.CHANNEL and message_id and delivery.channel_id:
                channel = self.bot.get_partial_messageable(delivery.channel_id)
                await channel.get_partial_message(message_id).delete()
            elif way is Way.DM and message_id:
                dm = await self.bot.create_dm(discord.Object(view.job.user_id))
                await dm.get_partial_message(message_id).delete()

    async def remove_all(self, view: JobView, also: tuple[int, int] | None = None) -> None:
        """Every message of the job goes: its result (in the channel or a DM), the request's
        own message, and ``also`` (a channel id and message id: the one reacted to). Best
        effort: one that is gone already, or that Discord will not delete now, stays gone or
        stays."""
        for post in await self.bot.outbox.posts(view.job.id):  # posted again with /show
            with contextlib.suppress(discord.HTTPException, *NETWORK_ERRORS):
                if post.channel_id is not None:
                    channel = self.bot.get_partial_messageable(post.channel_id)
                    await channel.get_partial_message(post.message_id).delete()
        delivery = view.delivery
        if delivery is not None:
            via, result = delivery.delivered_via, delivery.result_message_id
            if via in (Way.CHANNEL, Way.DM) and result:
                await self.withdraw(delivery, view, Way(via), result)
            await self._on_original(delivery, edit=None)
        if also is not None:
            with contextlib.suppress(discord.HTTPException, *NETWORK_ERRORS):
                channel_id, message_id = also
                channel = self.bot.get_partial_messageable(channel_id)
                await channel.get_partial_message(message_id).delete()

    async def _on_original(self, delivery: DeliveryRecord, *, edit: dict[str, Any] | None) -> None:
        """Edit (``edit``) or delete (None) the request's own message: through the token while
        it answers, else through the channel; a message that cannot be edited is deleted. A
        passing failure leaves it as it is."""
        original = delivery.original_message_id
        if original is None:
            return
        with contextlib.suppress(discord.HTTPException, *NETWORK_ERRORS):
            if token_valid(delivery, utcnow()):
                webhook = self.webhook(delivery)
                try:
                    if edit is None:
                        await webhook.delete_message(original)
                    else:
                        await webhook.edit_message(original, **edit)
                    return
                except discord.HTTPException as error:
                    if error.code not in TOKEN_GONE and error.status != 401:
                        raise  # the message or its channel is gone, or Discord is away
            if delivery.channel_id is None:
                return
            message = self.bot.get_partial_messageable(delivery.channel_id).get_partial_message(
                original
            )
            if edit is not None:
                try:
                    await message.edit(**edit)
                    return
                except discord.HTTPException as error:
                    if passing(error):
                        raise
            await message.delete()
