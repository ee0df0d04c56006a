"""Progress and results to Discord: edit the interaction's response while its token answers,
else post to the channel; the outbox makes each result go out once, across restarts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import discord

from bot import messages
from bot.limits import DEFAULT_FILE_LIMIT, Message, Upload
from generation.events import (
    EventBus,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobProgress,
    JobSucceeded,
)
from generation.imaging import TooLargeToFit, fit_file
from generation.openai_engine import CONTENT_REFUSED
from generation.outbox import Outbox, token_valid
from generation.rendering import grid_key
from generation.safety import SafetyPolicy
from generation.service import GenerationService, JobView
from storage.image_store import ImageStore
from storage.models import JobStatus, Review, utcnow
from storage.records import DeliveryRecord

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)

# Answers meaning "this interaction token or its message is gone": post to the channel instead.
GONE = frozenset({10008, 10015, 10062, 50027})
MAX_FAILURES = 5
FILE_TOO_LARGE = 40005  # Discord's code for a file over the upload limit
FILE_TRIES = 3  # fitted files Discord may refuse before the result goes without one
T = TypeVar("T")
UNSETTLED = frozenset({Review.PENDING, Review.DELETED})


def _gone(error: discord.HTTPException) -> bool:
    return error.code in GONE or error.status == 401


class Deliveries:
    """Owns the tasks that turn job events into message edits and deliver finished jobs."""

    def __init__(
        self,
        bot: ImagineBot,
        service: GenerationService,
        outbox: Outbox,
        store: ImageStore,
        events: EventBus,
        *,
        progress_interval: float = 2.0,
        sweep_interval: float = 5.0,
        safety: SafetyPolicy | None = None,
        moderation_channel_id: int | None = None,
    ) -> None:
        self.safety = safety or SafetyPolicy()
        self.moderation_channel_id = moderation_channel_id
        self.bot = bot
        self.service = service
        self.outbox = outbox
        self.store = store
        self.events = events
        self.progress_interval = progress_interval
        self.sweep_interval = sweep_interval
        self._locks: collections.defaultdict[int, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self._acks: dict[int, asyncio.Event] = {}  # interaction id -> set once answered
        self._last_progress: dict[int, float] = {}
        self._progress_busy: set[int] = set()
        self._silent: set[int] = set()  # jobs whose token stopped answering progress edits
        self._failures: collections.Counter[int] = collections.Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscribed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for job events and deliver what ended while the bot was away."""
        self._spawn(self._listen(), "deliveries-events")
        await self._subscribed.wait()
        self._spawn(self._sweep(), "deliveries-sweep")

    async def drain(self, seconds: float) -> None:
        """Deliver what has ended before the bot goes; what is left goes out at the next start."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                for delivery in await self.outbox.pending():
                    await self.deliver(delivery.job_id)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _listen(self) -> None:
        async with self.events.subscribe() as queue:
            self._subscribed.set()
            while True:
                event = await queue.get()
                self._on_event(event)

    async def _sweep(self) -> None:
        """Deliver every ended, undelivered job: at start, and then now and again, so a result
        whose delivery failed (or that another process finished) still goes out."""
        while True:
            try:
                for delivery in await self.outbox.pending():
                    if self._failures[delivery.job_id] < MAX_FAILURES:
                        await self.deliver(delivery.job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("delivery sweep failed; trying again")
            await asyncio.sleep(self.sweep_interval)

    def _on_event(self, event: JobEvent) -> None:
        if isinstance(event, JobProgress):
            job_id = event.job_id
            now = time.monotonic()
            if job_id in self._silent or job_id in self._progress_busy:
                return
            if now - self._last_progress.get(job_id, -1e9) < self.progress_interval:
                return
            self._last_progress[job_id] = now
            self._progress_busy.add(job_id)
            self._spawn(self._progress(event), f"progress-{job_id}")
        elif isinstance(event, JobSucceeded | JobFailed | JobCancelled):
            self._spawn(self.deliver(event.job_id), f"deliver-{event.job_id}")

    # -- acknowledgements ------------------------------------------------------------------

    def expect(self, interaction_id: int) -> asyncio.Event:
        """Hold progress and results of the job this interaction makes until it is answered."""
        return self._acks.setdefault(interaction_id, asyncio.Event())

    def answered(self, interaction_id: int) -> None:
        event = self._acks.pop(interaction_id, None)
        if event is not None:
            event.set()

    async def _wait_answered(self, interaction_id: int | None) -> None:
        event = self._acks.get(interaction_id) if interaction_id is not None else None
        if event is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 10)

    async def show_queued(self, job_id: int, message: Message) -> None:
        """Put the queue place on the response, unless the result got there first."""
        async with self._locks[job_id]:
            delivery = await self.outbox.get(job_id)
            if delivery is None or delivery.delivered_at is not None:
                return
            with contextlib.suppress(discord.HTTPException):
                await self._webhook(delivery).edit_message(
                    delivery.original_message_id or "@original",  # type: ignore[arg-type]
                    **message.edit_kwargs(),
                )

    # -- progress --------------------------------------------------------------------------

    async def _progress(self, event: JobProgress) -> None:
        try:
            delivery = await self.outbox.get(event.job_id)
            if delivery is None or delivery.delivered_at is not None:
                return
            if not token_valid(delivery, utcnow()):
                self._silent.add(event.job_id)
                return
            job = (await self.service.job(event.job_id)).job
            if job.interaction_id in self._acks:
                return  # not answered yet: the response does not exist to edit
            preview = None
            if event.preview_png:
                fitted = await asyncio.to_thread(fit_file, event.preview_png, _edit_limit(delivery))
                preview = Upload(f"preview.{fitted.extension}", fitted.data)
            message = messages.progress(job, event.step, event.total, preview)
            async with self._locks[event.job_id]:
                current = await self.outbox.get(event.job_id)
                if current is None or current.delivered_at is not None:
                    return  # the result got there first: never paint progress over it
                await self._webhook(delivery).edit_message(
                    delivery.original_message_id or "@original",  # type: ignore[arg-type]
                    **message.edit_kwargs(keep_files=True),  # no new preview: keep the last
                )
        except discord.HTTPException as error:
            if _gone(error):
                self._silent.add(event.job_id)
            else:
                logger.warning("progress edit for job %s failed: %s", event.job_id, error)
        finally:
            self._progress_busy.discard(event.job_id)

    # -- results ---------------------------------------------------------------------------

    async def deliver(self, job_id: int) -> None:
        """Send a finished job's result where it belongs, once."""
        try:
            await self._deliver(job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failures[job_id] += 1
            logger.exception(
                "could not deliver job %s (attempt %d)", job_id, self._failures[job_id]
            )

    async def _deliver(self, job_id: int) -> None:
        first = await self.outbox.get(job_id)
        if first is None or first.delivered_at is not None:
            return  # not the bot's (a command-line job), or already out: no state kept for it
        view = await self.service.job(job_id)
        await self._wait_answered(view.job.interaction_id)
        async with self._locks[job_id]:
            delivery = await self.outbox.get(job_id)
            if delivery is None or delivery.delivered_at is not None:
                return
            view = await self.service.job(job_id)
            if not view.job.is_terminal:
                return
            message_id = None
            if (view.job.error or "").startswith(CONTENT_REFUSED):
                await self._tell_requester_only(delivery, view)
            else:
                if token_valid(delivery, utcnow()):
                    message_id = await self._edit_response(delivery, view)
                if message_id is None:
                    message_id = await self._post(delivery, view)
            await self.outbox.mark_delivered(job_id, message_id)
            if self._action(view) == "withhold":
                await self._tell_moderators(view)
        self._locks.pop(job_id, None)
        self._last_progress.pop(job_id, None)
        self._silent.discard(job_id)
        logger.info("job %s delivered as message %s", job_id, message_id)

    async def _tell_requester_only(self, delivery: DeliveryRecord, view: JobView) -> None:
        """An image API refused the request: only the requester hears of it, without the
        reason. The public "thinking…" answer cannot turn ephemeral, so it goes."""
        message = messages.content_refused(view.job)
        if token_valid(delivery, utcnow()):
            webhook = self._webhook(delivery)
            with contextlib.suppress(discord.HTTPException):
                await webhook.delete_message(
                    delivery.original_message_id or "@original"  # type: ignore[arg-type]
                )
            with contextlib.suppress(discord.HTTPException):
                await webhook.send(**message.send_kwargs(), ephemeral=True)
                return
        channel = await self.bot.create_dm(discord.Object(view.job.user_id))
        await channel.send(**message.send_kwargs())

    async def _edit_response(self, delivery: DeliveryRecord, view: JobView) -> int | None:
        """Edit the interaction's response into the result; None if the token is refused."""
        webhook = self._webhook(delivery)

        def edit(result: Message) -> Awaitable[discord.WebhookMessage]:
            return webhook.edit_message(
                delivery.original_message_id or "@original",  # type: ignore[arg-type]
                **result.edit_kwargs(),
            )

        try:
            message = await self._send_result(view, _edit_limit(delivery), edit)
        except discord.HTTPException as error:
            if not _gone(error):
                raise
            logger.info("job %s: the interaction answered %s; posting instead", view.job.id, error)
            return None
        return message.id

    async def _post(self, delivery: DeliveryRecord, view: JobView) -> int:
        """A channel message replying to the request (or its parent's result)."""
        job = view.job
        if delivery.channel_id is None:
            raise LookupError(f"job {job.id} has no channel to post its result to")
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
        limit = guild.filesize_limit if guild is not None else DEFAULT_FILE_LIMIT

        def post(result: Message) -> Awaitable[discord.Message]:
            return channel.send(
                **result.send_kwargs(),
                reference=reference or discord.utils.MISSING,
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]),
                # Discord answers a repeated nonce with the first message: a retry after a
                # crash between sending and recording cannot post twice.
                nonce=f"imagine-job-{job.id}",
            )

        message = await self._send_result(view, limit, post, mention=f"<@{job.user_id}>")
        return message.id

    def _webhook(self, delivery: DeliveryRecord) -> discord.Webhook:
        """The interaction's webhook: the application's own, so it may answer ephemerally."""
        webhook = discord.Webhook.partial(
            delivery.application_id, delivery.interaction_token, client=self.bot
        )
        webhook.type = discord.WebhookType.application
        return webhook

    def _action(self, view: JobView) -> str | None:
        """The guild's safety action when an image of the job is flagged and not approved."""
        if any(image.review in UNSETTLED for image in view.images):
            return self.safety.for_guild(view.job.guild_id)
        return None

    async def _send_result(
        self,
        view: JobView,
        limit: int,
        send: Callable[[Message], Awaitable[T]],
        mention: str | None = None,
    ) -> T:
        """Send the result with its file made to fit ``limit`` bytes. Should Discord still
        answer that the file is too large (40005: the server lost its boosts, say), again at
        half the size it refused, and at last without the file, saying so."""
        action = self._action(view)
        data = await self._file_bytes(view, action)
        for attempt in range(FILE_TRIES + 1):
            fitted = None
            if data is not None and attempt < FILE_TRIES:
                with contextlib.suppress(TooLargeToFit):
                    fitted = await asyncio.to_thread(fit_file, data, limit)
            result = messages.result(
                view,
                action=action,
                fitted=fitted,
                mention=mention,
                unattached=data is not None and fitted is None,
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

    async def _file_bytes(self, view: JobView, action: str | None) -> bytes | None:
        """The grid (or the one image) as stored, if the result shows one."""
        job = view.job
        if job.status != JobStatus.SUCCEEDED or not view.images or action == "withhold":
            return None
        key = view.images[0].path if len(view.images) == 1 else grid_key(job.id, job.attempts)
        return await asyncio.to_thread(self.store.get, key)

    async def _tell_moderators(self, view: JobView) -> None:
        if self.moderation_channel_id is None:
            return
        channel = self.bot.get_partial_messageable(self.moderation_channel_id)
        try:
            await channel.send(**messages.moderators_notice(view).send_kwargs())
        except discord.HTTPException as error:
            logger.warning("could not tell the moderators about job %s: %s", view.job.id, error)


def _edit_limit(delivery: DeliveryRecord) -> int:
    """What a file may weigh in answers to the delivery's interaction."""
    return delivery.attachment_size_limit or DEFAULT_FILE_LIMIT
