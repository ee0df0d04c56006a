"""Progress and results to Discord, driven by job events and by the outbox's due rows.

A result goes out the first way that takes it (``bot.routes``: the response, the channel, a
DM). A passing failure records the try and its backoff on the delivery row; a result no way
takes is recorded undeliverable, with why; nothing is dropped unrecorded and nothing goes out
twice (the row's state is fenced, channel posts carry a nonce). Progress is best-effort: it
never holds a result up, and never paints over one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import discord

from bot import messages
from bot.limits import DEFAULT_FILE_LIMIT, Message, Upload
from bot.places import PlaceWatch
from bot.routes import (
    NETWORK_ERRORS,
    TOKEN_GONE,
    ResultRoutes,
    Undeliverable,
    Way,
    passing,
    why,
)
from generation.events import (
    EventBus,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobProgress,
    JobSucceeded,
)
from generation.imaging import fit_file
from generation.openai_engine import CONTENT_REFUSED
from generation.outbox import Outbox, exposed, token_valid
from generation.service import GenerationService, JobView
from storage.image_store import ImageStore
from storage.models import DeliveryState, utcnow
from storage.records import DeliveryRecord, JobRecord

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)

SWEEP_BATCH = 20  # due results taken per sweep
CLAIM_SECONDS = 30.0  # a try's hold on its row (discord.py retries a webhook's 5xx ~25 s)
UNEXPECTED_TRIES = 5  # a failure of ours (a bug, a file gone) ends the delivery after so many
PROGRESS_SECONDS = 5.0  # a progress edit that takes longer is dropped: it never holds a result
PROGRESS_PAUSE = 30.0  # no progress edits for this long after Discord failed one


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
        moderation_channel_id: int | None = None,
        place_interval: float = 5.0,
        place_edits_per_second: float = 10.0,
    ) -> None:
        self.moderation_channel_id = moderation_channel_id
        self.bot = bot
        self.service = service
        self.outbox = outbox
        self.events = events
        self.routes = ResultRoutes(bot, store, service.servers, service.offers)
        self.progress_interval = progress_interval
        self.sweep_interval = sweep_interval
        self._locks: collections.defaultdict[int, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self._acks: dict[int, asyncio.Event] = {}  # interaction id -> set once answered
        self._last_progress: dict[int, float] = {}
        self._progress_busy: set[int] = set()
        self._silent: set[int] = set()  # jobs whose token stopped answering progress edits
        self._tasks: set[asyncio.Task[Any]] = set()
        self._delivering: dict[int, asyncio.Task[None]] = {}  # delivery tasks under way
        self._removing: set[int] = set()  # jobs whose messages are being removed
        # Results Discord took whose delivery is not yet written down (the database was away).
        self._sent: dict[int, tuple[Way, int | None, DeliveryRecord, JobView]] = {}
        self._unexpected: collections.Counter[int] = collections.Counter()
        self._held: set[int] = set()  # rows this process claimed whose try is not recorded
        self._subscribed = asyncio.Event()
        # Waiting jobs' messages: their place in line, as it changes.
        self.places = PlaceWatch(
            service,
            outbox,
            self._edit_place,
            interval=place_interval,
            edits_per_second=place_edits_per_second,
            skip=self._showing_other,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for job events and deliver what ended while the bot was away."""
        self._spawn(self._listen(), "deliveries-events")
        await self._subscribed.wait()
        self._spawn(self._sweep(), "deliveries-sweep")
        if self.places.interval > 0 and self.places.budget.rate > 0:
            self._spawn(self.places.run(), "places-in-line")

    async def drain(self, seconds: float) -> None:
        """Deliver what is due, and finish the deliveries under way, before the bot goes;
        what is left goes out at the next start."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                for delivery in await self.outbox.due(SWEEP_BATCH):
                    self.start_delivery(delivery.job_id)
                for job_id in [*self._sent, *self._held]:
                    self.start_delivery(job_id)
                under_way = list(self._delivering.values())
                if under_way:
                    await asyncio.wait(under_way)

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
        """Start delivering every due result (its job ended, its backoff is over), oldest due
        first: at start, and then every ``sweep_interval``. Each goes in its own task, so one
        slow try (discord.py retries a webhook's 5xx for ~25 s) holds up no other."""
        while True:
            try:
                # Sent but not written down, or held by a try that could not be recorded.
                for job_id in [*self._sent, *self._held]:
                    self.start_delivery(job_id)
                due = await self.outbox.due(SWEEP_BATCH + len(self._delivering))
                for delivery in due:
                    self.start_delivery(delivery.job_id)
                # Jobs deleted anywhere (the web console, the command line): their messages.
                for delivery in await self.outbox.withdrawals(SWEEP_BATCH):
                    self.remove_messages(delivery.job_id)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("delivery sweep failed (%s); trying again", error)
            await asyncio.sleep(self.sweep_interval)

    def remove_messages(self, job_id: int) -> None:
        """Every message of the job goes, in the background (a moderator's answer does not
        wait on several Discord calls); then its delivery says so, so the sweep does not
        remove them again. One removal of a job at a time."""
        if job_id in self._removing:
            return

        async def remove() -> None:
            try:
                await self.routes.remove_all(await self.service.job(job_id))
                await self.withdrawn(job_id)
            finally:
                self._removing.discard(job_id)

        self._removing.add(job_id)
        self._spawn(remove(), f"remove-{job_id}")

    async def withdrawn(self, job_id: int) -> None:
        """Its messages were removed: written down, so the sweep does not remove them again
        (if it cannot be written now, the sweep removes them again later: harmless)."""
        try:
            await self.outbox.withdrawn(job_id)
        except Exception as error:
            logger.warning("job %s: could not note its messages removed: %s", job_id, error)

    def start_delivery(self, job_id: int) -> None:
        """Deliver the job's result in its own task, if it is due and not under way."""
        if job_id in self._delivering:
            return
        task = self._spawn(self.deliver(job_id), f"deliver-{job_id}")
        self._delivering[job_id] = task
        task.add_done_callback(lambda _: self._delivering.pop(job_id, None))

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
            self.start_delivery(event.job_id)

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

    async def show_queued(self, job: JobRecord, message: Message) -> None:
        """Put the queue place on the response, unless the result got there first (or the
        job is private and the response is not: then it says only that)."""
        self.places.shown(job.id, message.content)
        await self._best_effort(job.id, message, job=job)

    def _showing_other(self, job: JobRecord) -> bool:
        """Whether the job's message is not to show its place now: not answered yet, its
        progress being shown, its token no longer answering, or Discord away a moment ago."""
        return (
            job.interaction_id in self._acks
            or job.id in self._progress_busy
            or job.id in self._silent
            or self._last_progress.get(job.id, -1e9) > time.monotonic()
        )

    async def _edit_place(self, delivery: DeliveryRecord, message: Message) -> None:
        await self._best_effort(delivery.job_id, message)

    # -- progress --------------------------------------------------------------------------

    async def _progress(self, event: JobProgress) -> None:
        try:
            delivery = await self.outbox.get(event.job_id)
            if delivery is None or delivery.state != DeliveryState.PENDING:
                return
            if not token_valid(delivery, utcnow()):
                self._silent.add(event.job_id)
                return
            job = (await self.service.job(event.job_id)).job
            if job.interaction_id in self._acks:
                return  # not answered yet: the response does not exist to edit
            if exposed(job, delivery):
                return  # a private job answered where others see it: no progress there
            preview = None
            shown = await self.routes.preview(job) if event.preview_png else None
            if event.preview_png and shown is not None:
                limit = delivery.attachment_size_limit or DEFAULT_FILE_LIMIT
                fitted = await asyncio.to_thread(fit_file, event.preview_png, limit)
                prefix = "SPOILER_" if shown == "spoiler" else ""
                preview = Upload(f"{prefix}preview.{fitted.extension}", fitted.data)
            message = messages.progress(job, event.step, event.total, preview)
            await self._best_effort(event.job_id, message, keep_files=True)
        except Exception as error:  # a hint lost: the result does not depend on it
            logger.info("progress of job %s not shown: %s", event.job_id, error)
        finally:
            self._progress_busy.discard(event.job_id)

    async def _best_effort(
        self,
        job_id: int,
        message: Message,
        *,
        keep_files: bool = False,
        job: JobRecord | None = None,
    ) -> None:
        """Edit the response, unless the result is on its way or there: never waits for the
        result, never holds it up (a slow edit is dropped), never paints over it."""
        lock = self._locks[job_id]
        if lock.locked():
            return
        async with lock:
            # Read under the lock: a result sent meanwhile is seen, never painted over.
            delivery = await self.outbox.get(job_id)
            if delivery is None or delivery.state != DeliveryState.PENDING or job_id in self._sent:
                return
            if job is not None and exposed(job, delivery):
                message = messages.sent_privately(job)  # nothing of it where others see
            try:
                async with asyncio.timeout(PROGRESS_SECONDS):
                    await self.routes.webhook(delivery).edit_message(
                        delivery.original_message_id or "@original",  # type: ignore[arg-type]
                        **message.edit_kwargs(keep_files=keep_files),
                    )
            except (discord.HTTPException, *NETWORK_ERRORS) as error:
                if isinstance(error, discord.HTTPException) and (
                    error.code in TOKEN_GONE or error.status == 401
                ):
                    self._silent.add(job_id)
                elif passing(error):  # Discord is away: no progress for a while
                    self._last_progress[job_id] = time.monotonic() + PROGRESS_PAUSE
                logger.info("job %s: progress not shown: %s", job_id, error)

    # -- results ---------------------------------------------------------------------------

    async def deliver(self, job_id: int) -> None:
        """Send a finished job's result where it belongs, once. A passing failure records the
        try and when to try again; any other ends the delivery with the reason."""
        try:
            await self._deliver(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._later(job_id, error)

    async def _later(self, job_id: int, error: Exception) -> None:
        """A try failed: again after the backoff, however long Discord or the network is
        away; an error of ours (not Discord's, not the network's) only ``UNEXPECTED_TRIES``
        times in this process, then the delivery ends with it."""
        expected = passing(error)
        if not expected:
            logger.error("could not deliver job %s", job_id, exc_info=error)
            self._unexpected[job_id] += 1
        why = f"{type(error).__name__}: {error}"[:500]
        try:
            delivery = await self.outbox.get(job_id)
            if delivery is None or delivery.state != DeliveryState.PENDING:
                return
            if self._unexpected[job_id] >= UNEXPECTED_TRIES and job_id not in self._sent:
                job = (await self.service.job(job_id)).job
                await self.outbox.give_up(
                    job, f"an error on our side, {UNEXPECTED_TRIES} times: {why}"
                )
                self._forget(job_id)
                return
            delay = await self.outbox.retry_later(delivery, why)
            self._held.discard(job_id)
        except Exception as recording:  # the database is away too: tried again next sweep
            self._held.add(job_id)  # (its claim may have gone through with its answer lost)
            logger.warning("job %s: could not record the failed delivery: %s", job_id, recording)
            return
        logger.warning(
            "job %s: delivery %d failed (%s); next try in %.0f s",
            job_id,
            delivery.attempts + 1,
            error,
            delay,
        )

    async def _deliver(self, job_id: int) -> None:
        first = await self.outbox.get(job_id)
        if first is None or first.state != DeliveryState.PENDING:
            return  # not the bot's (a command-line job), or already ended: nothing to do
        view = await self.service.job(job_id)
        if not view.job.is_terminal:
            return
        await self._wait_answered(view.job.interaction_id)
        async with self._locks[job_id]:
            sent = self._sent.get(job_id)
            if sent is None:
                # The try holds the row, so no other process (and no later sweep, should the
                # write below fail) sends it meanwhile; a row this process holds already (its
                # last try could not be recorded) is tried again without waiting for the hold.
                held = job_id in self._held
                if not held and not await self.outbox.claim(job_id, CLAIM_SECONDS):
                    return  # not due (its backoff, another process), or no longer pending
                self._held.add(job_id)
                delivery = await self.outbox.get(job_id)
                assert delivery is not None
                view = await self.service.job(job_id)
                try:
                    way, message_id = await self._send(delivery, view)
                except Undeliverable as nowhere:
                    await self._undeliverable(view, str(nowhere))
                    return
                except asyncio.CancelledError:  # stopping: due again now, not after the hold
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.outbox.release(job_id))
                    raise
                # Sent: should the write fail, later tries only write it down.
                sent = self._sent[job_id] = (way, message_id, delivery, view)
            way, message_id, delivery, view = sent
            withheld = await self.routes.action(view) == "withhold"
            marked, again = await self.outbox.mark_delivered(
                job_id, message_id, way, withheld=withheld
            )
            del self._sent[job_id]
            self._held.discard(job_id)
            if not marked:  # another process delivered it, or a moderator deleted the job
                await self._withdraw(job_id, way, message_id, delivery, view)
                self._forget(job_id)
                return
            if (view.job.error or "").startswith(CONTENT_REFUSED):
                await self.routes.remove_progress(delivery, way)
            else:
                await self.routes.replace_progress(delivery, view, way)
            if withheld and not again:  # (again: approved while it went out; it goes again)
                await self._tell_moderators(view)
            await self._replace_withheld(delivery, view, message_id)
        self._forget(job_id)
        logger.info("job %s delivered by %s as message %s", job_id, way, message_id)

    async def _replace_withheld(
        self, delivery: DeliveryRecord, view: JobView, message_id: int | None
    ) -> None:
        """Approved images went out: the message that said they were held back goes (unless
        it was edited into the result)."""
        old, via = delivery.result_message_id, delivery.delivered_via
        if delivery.withheld and old and old != message_id and via in (Way.CHANNEL, Way.DM):
            await self.routes.withdraw(delivery, view, Way(via), old)

    async def _send(self, delivery: DeliveryRecord, view: JobView) -> tuple[Way, int | None]:
        if (view.job.error or "").startswith(CONTENT_REFUSED):
            return await self._tell_requester_only(delivery, view)
        return await self.routes.send(delivery, view)

    async def _withdraw(
        self, job_id: int, way: Way, message_id: int | None, delivery: DeliveryRecord, view: JobView
    ) -> None:
        """The row says the result went elsewhere, or must not go: what this try sent goes."""
        now = await self.outbox.get(job_id)
        if now is not None and now.result_message_id == message_id:
            return
        logger.warning("job %s: withdrawing a result sent twice or too late (%s)", job_id, way)
        await self.routes.withdraw(delivery, view, way, message_id)

    async def _undeliverable(self, view: JobView, reason: str) -> None:
        """No way took the result: recorded with why (``/job``, ``/admin job``, the
        ``delivery_failed`` event), and the moderators are told, the member cannot be."""
        job = view.job
        logger.error("job %s: no way to deliver its result: %s", job.id, reason)
        if await self.outbox.give_up(job, reason):
            await self._notify_moderators(messages.undeliverable_notice(job, reason), job.id)
        self._forget(job.id)

    def _forget(self, job_id: int) -> None:
        self._held.discard(job_id)
        self._unexpected.pop(job_id, None)
        self._locks.pop(job_id, None)
        self._last_progress.pop(job_id, None)
        self._silent.discard(job_id)

    async def _tell_requester_only(
        self, delivery: DeliveryRecord, view: JobView
    ) -> tuple[Way, int | None]:
        """An image API refused the request: only the requester hears of it, without the
        reason. The public "thinking…" answer cannot turn ephemeral, so it goes."""
        message = messages.content_refused(view.job)
        if token_valid(delivery, utcnow()):
            webhook = self.routes.webhook(delivery)
            try:
                await webhook.delete_message(
                    delivery.original_message_id or "@original"  # type: ignore[arg-type]
                )
            except discord.HTTPException as error:
                if passing(error):
                    raise
            try:
                await webhook.send(**message.send_kwargs(), ephemeral=True)
                return Way.RESPONSE, None
            except discord.HTTPException as error:
                if passing(error):
                    raise
                logger.info("job %s: the refusal cannot go as an answer: %s", view.job.id, error)
        try:
            channel = await self.bot.create_dm(discord.Object(view.job.user_id))
            sent = await channel.send(**message.send_kwargs(), nonce=f"imagine-dm-{view.job.id}")
        except discord.HTTPException as error:
            if passing(error):
                raise
            raise Undeliverable(f"direct message: {why(error)}") from error
        return Way.DM, sent.id

    async def _tell_moderators(self, view: JobView) -> None:
        await self._notify_moderators(messages.moderators_notice(view), view.job.id)

    async def _notify_moderators(self, message: Message, job_id: int) -> None:
        """Best effort: the record (an event) is what keeps it."""
        if self.moderation_channel_id is None:
            return
        channel = self.bot.get_partial_messageable(self.moderation_channel_id)
        try:
            await channel.send(**message.send_kwargs())
        except (discord.HTTPException, *NETWORK_ERRORS) as error:
            logger.warning("could not tell the moderators about job %s: %s", job_id, error)
