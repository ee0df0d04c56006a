"""Slash commands, buttons and reactions: parse, build a request, call the service, answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image

from bot import messages
from bot.buttons import (
    EDITS,
    STRONG_STRENGTH,
    SUBTLE_STRENGTH,
    Action,
    compare_picker,
    region_picker,
)
from bot.limits import Message, Upload
from bot.places import EditBudget
from bot.preferences import REMIXABLE, CompareForm, RegionForm, RemixForm
from bot.routes import NETWORK_ERRORS
from bot.uploads import check_attachment, read_start_image
from generation import parameters, wording
from generation.access import (
    Actor,
    may_act_on_job,
    may_moderate_job,
    may_see_job,
    may_show_job,
    may_use_result,
)
from generation.comparing import KNOB_NAMES, Comparison
from generation.editing import Edit, cell_guide, region_of
from generation.errors import (
    GenerationError,
    InvalidRequest,
    JobNotFound,
    JobStateError,
    NotAllowed,
)
from generation.faults import retrying
from generation.intents import decode_arguments, decode_delivery, encode_request
from generation.loras import MAX_LORA_WEIGHT, LoraChoice
from generation.model_info import ModelInfo
from generation.outbox import DeliveryTarget
from generation.preferences import ASPECTS, Preferences
from generation.presets import Preset, PresetBook
from generation.rendering import grid_key, video_key
from generation.requests import GenerationRequest
from generation.samplers import SAMPLER_NAMES
from generation.service import JobView, Submission
from storage.models import JobKind, JobStatus, utcnow
from storage.records import IntentRecord, JobRecord

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)
T = TypeVar("T")

UNKNOWN_INTERACTION = 10062
UNKNOWN = object()  # the interaction was unknown to Discord when the bot answered it
WITHDRAW_SECONDS = 60.0  # how long a cancel after 10062 is tried through a database outage
# How long /imagine waits for its job to be stored before answering anyway: Discord fails a
# command not answered within 3 s of being sent.
ACK_DEADLINE = 2.0  # counted from when the interaction arrived (``extras[RECEIVED]``)
RECEIVED = "received"
PRIVATE = "private"  # in ``extras``: the job will be private, so its answer is ephemeral
POST_RECORD_SECONDS = 60.0  # how long a /show post's record is tried through an outage
SHOW_BURST = 3  # /show: a member posts this many results at once, ...
SHOW_REFILL_SECONDS = 20.0  # ... then one more every this many seconds
FILES_BURST = 5  # Vary (Region)'s guide and Video read a file: this many at once, ...
FILES_REFILL_SECONDS = 10.0  # ... then one more every this many seconds, per member
# A request answered but not stored before a crash is made at the next start while its answer
# can still be edited (Discord keeps the token 15 minutes).
RESUME_WINDOW = dt.timedelta(minutes=14)
RESUME_DELAY = 5.0  # seconds after start before the records left behind are looked at
ENVELOPE = "\u2709"  # ✉️ arrives with or without the variation selector U+FE0F
CROSS = "\u274c"


def aspect_ratio(aspect: str | None) -> tuple[int, int] | None:
    """The aspect option's ratio (the client offers only these; anything else is refused)."""
    if aspect is None:
        return None
    if aspect not in ASPECTS:
        raise InvalidRequest("aspect", f"must be one of {', '.join(ASPECTS)}, not {aspect!r}")
    return ASPECTS[aspect]


def delivery_target(
    interaction: discord.Interaction[Any], reply_to: int | None = None
) -> DeliveryTarget:
    return DeliveryTarget(
        application_id=interaction.application_id,
        interaction_token=interaction.token,
        interaction_at=utcnow(),  # when it reached us: its token answers 15 minutes from then
        channel_id=interaction.channel_id,
        reply_to_message_id=reply_to,
        attachment_size_limit=interaction.filesize_limit,
        ephemeral=bool(interaction.extras.get(PRIVATE)),  # as it is answered (_acknowledge)
    )


async def refuse(interaction: discord.Interaction[Any], text: str) -> None:
    """Tell only the user; a public "thinking" response cannot turn ephemeral, so it goes."""
    answer = messages.plain(text).send_kwargs()
    if not interaction.response.is_done():
        await interaction.response.send_message(**answer, ephemeral=True)
        return
    try:
        await interaction.delete_original_response()
    except discord.HTTPException:
        logger.debug("could not delete the response to %s", interaction.id)
    await interaction.followup.send(**answer, ephemeral=True)


async def answer(interaction: discord.Interaction[Any], message: Message) -> None:
    """An ephemeral answer to a command or button, as ``message`` holds it."""
    await interaction.response.send_message(**message.send_kwargs(), ephemeral=True)


def _invalid(error: GenerationError, aspect: str | None) -> str:
    """The refusal for a bad option, naming the option the user typed."""
    assert isinstance(error, InvalidRequest)
    option = error.option
    if aspect is not None and option in {"width", "height"}:
        option = "aspect"
    return f"**{option}** {error.message}. Nothing was queued."


def channel_flags(channel: Any) -> tuple[bool | None, bool | None]:
    """The channel an interaction came from: age-restricted (a thread: its parent), and
    visible to @everyone (a private thread never is). None where it cannot be told."""
    guild = getattr(channel, "guild", None)
    if guild is None:
        return None, None
    is_nsfw = getattr(channel, "is_nsfw", None)
    nsfw = bool(is_nsfw()) if is_nsfw is not None else None
    try:
        public: bool | None = channel.permissions_for(guild.default_role).view_channel
    except (AttributeError, discord.ClientException):  # a thread whose parent is not known
        public = None
    if isinstance(channel, discord.Thread) and channel.is_private():
        public = False
    return nsfw, public


def _lora_choices(name: str | None, weight: float | None) -> tuple[LoraChoice, ...]:
    """/imagine's ``lora`` and ``lora_weight`` options as the request's LoRA."""
    if name is None:
        if weight is not None:
            raise InvalidRequest("lora_weight", "weighs a LoRA: name one in the lora option")
        return ()
    return (LoraChoice(name.strip(), 1.0 if weight is None else weight),)


def request_sized(error: InvalidRequest, prompt: str) -> bool:
    """Whether a size refusal came from --ar typed in the prompt (named so in the reply)."""
    return error.option in {"width", "height"} and parameters.asks_aspect(prompt)


async def _say_overridden(
    interaction: discord.Interaction[Any], overridden: list[str], note: str | None = None
) -> None:
    """The options won over the same parameters typed in the prompt, or the member's settings
    could not all be used (``note``): say so, to the member."""
    lines = [note] if note else []
    if overridden:
        names = ", ".join(f"--{name}" for name in overridden)
        lines.append(f"Your command's options were used instead of {names} in the prompt.")
    if not lines:
        return
    text = "\n".join(lines)
    with contextlib.suppress(discord.HTTPException):  # a courtesy: the job is queued anyway
        await interaction.followup.send(**messages.plain(text).send_kwargs(), ephemeral=True)


def carries_job(message: discord.Message | None, job_id: int, *, picker: str = "") -> bool:
    """Whether a message holds a button of the job (a form submitted from it was opened
    there); ``picker``: a picker's select of the job instead (``imagine-region``: Vary
    (Region)'s cells; ``imagine-compare``: Compare…'s knob)."""
    wanted = re.compile(
        rf"{picker}(?::[a-z]+)?:{job_id}:\d+" if picker else rf"imagine:[a-z]+:{job_id}(?::\d+)?"
    )
    return message is not None and any(
        wanted.fullmatch(getattr(item, "custom_id", None) or "")
        for row in message.components
        for item in getattr(row, "children", ())
    )


def _take(budgets: dict[int, EditBudget], user_id: int, burst: int, refill: float) -> bool:
    """One from the member's bucket of ``budgets`` (``burst`` at once, then one every
    ``refill`` seconds), if there is one."""
    return budgets.setdefault(user_id, EditBudget(1 / refill, burst=burst)).take()


def _suggested(knob: str, job: JobRecord, max_steps: int, max_count: int) -> str:
    """Values a comparison's form starts with, for its knob (as many as the host makes)."""
    if knob == "steps":
        steps = [max(1, job.steps // 2), job.steps, job.steps * 3 // 2, job.steps * 2]
        values = [str(n) for n in dict.fromkeys(min(n, max_steps) for n in steps)]
    else:
        values = {
            "guidance": ["3", "5", "7", "9"],
            "sampler": ["Euler", "Euler a", "DPM++ 2M Karras", "UniPC"],
            "seed": [str(secrets.randbelow(2**32)) for _ in range(4)],
            "lora": ["0.25", "0.5", "0.75", "1"],
        }.get(knob, [])
    return ", ".join(values[: max(2, max_count)])


def _guide(data: bytes, multiple: int) -> bytes:
    """An image's cells, numbered, as PNG (Vary (Region)'s picker)."""
    with Image.open(io.BytesIO(data)) as image:
        guide = cell_guide(image, multiple)
    out = io.BytesIO()
    guide.save(out, format="PNG")
    return out.getvalue()


def _role_ids(user: discord.abc.User) -> tuple[int, ...]:
    return tuple(role.id for role in getattr(user, "roles", ()))


class ImagineCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.service = bot.runtime.service
        self._shows: dict[int, EditBudget] = {}  # /show's bucket, per member
        self._files: dict[int, EditBudget] = {}  # the guide's and Video's, per member

    def _model_names(self) -> list[str]:
        return [info.name for info in self.service.host_models.values()]

    def _model_of(self, name: str | None, guild_id: int | None) -> ModelInfo:
        """The model a request names here, as last read (see ``GenerationService.model_of``)."""
        return self.service.model_of(name, self.service.presets.snapshot, guild_id)

    def _preset_of(self, name: str | None, guild_id: int | None) -> Preset | None:
        """The preset a job on ``name`` runs here, as last read, if any."""
        return self.service.preset_of(name, self.service.presets.snapshot, guild_id)

    # -- /imagine ----------------------------------------------------------------------------

    @app_commands.command(name="imagine", description="Make images from a prompt.")
    @app_commands.describe(
        prompt="What to draw.",
        negative="What to keep out of the picture.",
        seed="A number that fixes the randomness (the same seed makes the same image).",
        steps="Denoising steps: more is slower and often finer.",
        guidance="How strictly to follow the prompt.",
        aspect="Width to height.",
        count="How many images (1–4).",
        image="An image to start from.",
        strength="How far to move from the start image (0–1).",
        model="Which model makes the images (this server's presets and the host's models).",
        sampler="How the noise is taken away, by its usual name (default: the model's own).",
        lora="A LoRA to add (more: <lora:NAME:WEIGHT> in the prompt).",
        lora_weight="How strongly the LoRA applies (default 1; 0 is the model without it).",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=name, value=name) for name in ASPECTS],
        sampler=[app_commands.Choice(name=name, value=name) for name in SAMPLER_NAMES],
    )
    async def imagine(  # noqa: PLR0917 - discord.py passes each option as an argument
        self,
        interaction: discord.Interaction[ImagineBot],
        prompt: str,
        negative: str | None = None,
        seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        aspect: str | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        model: str | None = None,
        sampler: str | None = None,
        lora: str | None = None,
        lora_weight: app_commands.Range[float, -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT] | None = None,
    ) -> None:
        # The declared ranges and choices are hints for the client; everything is checked here,
        # before answering, so bad input gets a plain ephemeral reply.
        await self.service.presets.hint()
        settings = self.bot.runtime.settings
        nsfw, public = channel_flags(interaction.channel)
        overridden: list[str] = []
        prefs, note = await self.bot.preferences.for_job(interaction.user.id, interaction.guild_id)
        try:
            if image is not None:
                check_attachment(image, settings.max_upload_bytes, settings.max_upload_pixels)
            request = GenerationRequest(
                prompt=prompt,
                user_id=interaction.user.id,
                user_name=interaction.user.name,
                role_ids=_role_ids(interaction.user),
                negative_prompt=negative or "",
                seed=seed,
                steps=steps,
                guidance=guidance,
                count=count,
                strength=strength,
                model=model,
                sampler=sampler,
                loras=_lora_choices(lora, lora_weight),
                kind=JobKind.IMG2IMG if image is not None else JobKind.TXT2IMG,
                init_image=b"" if image is not None else None,  # downloaded once answered
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                channel_nsfw=nsfw,
                channel_public=public,
                interaction_id=interaction.id,
                private=bool(prefs and prefs.private),
            )
            # --ar, --no, --seed, ... typed in the prompt: where no option says otherwise; then
            # the member's /settings, those the model can take. (In a thread: checking hashes
            # a LoRA file at its first use.)
            request, overridden, dropped = await asyncio.to_thread(
                parameters.apply_fitting,
                request,
                check=lambda asked: self.service.check(asked, strict=True),
                lenient=self.service.check,
                defaults=prefs,
                aspect=aspect_ratio(aspect),
                model_of=lambda name: self._model_of(name, interaction.guild_id),
                min_side=self.service.limits.min_size,
                preset_of=lambda name: self._preset_of(name, interaction.guild_id),
            )
            if dropped:
                unfit = " and ".join(dropped)
                note = " ".join(
                    filter(
                        None,
                        [note, f"Your default {unfit} does not fit this model: its own was used."],
                    )
                )
        except InvalidRequest as error:
            sized = aspect or ("--ar" if request_sized(error, prompt) else None)
            await refuse(interaction, _invalid(error, sized))
            return

        # A blocked prompt is refused (and its strike recorded) before any public answer.
        # (Read waiting at most a moment on the database: Discord wants an answer within 3 s;
        # the submit checks again with the server's settings as they are now.)
        rules = await self.service.servers.hint(request.guild_id)
        blocked = rules.check_prompt(request.filtered_text, request.negative_prompt)
        interaction.extras[PRIVATE] = rules.private(request.private)

        if blocked is not None:  # refused at once: no time to download an attachment
            unanswered = dataclasses.replace(
                request, kind=JobKind.TXT2IMG, init_image=None, strength=None
            )
            await self._submit(
                interaction,
                call=("submit", encode_request(unanswered)),
                aspect=aspect,
                acknowledge=False,
            )
            return
        if image is None:
            await self._submit(interaction, call=("submit", encode_request(request)), aspect=aspect)
            await _say_overridden(interaction, overridden, note)
            return

        async def submit(target: DeliveryTarget) -> Submission:
            # An image's bytes are too big to write down first: downloaded, then stored with
            # the job, then answered.
            data = await read_start_image(
                image, settings.max_upload_bytes, settings.max_upload_pixels
            )
            return await self.service.submit(dataclasses.replace(request, init_image=data), target)

        await self._submit(interaction, submit=submit, aspect=aspect)
        await _say_overridden(interaction, overridden, note)

    @imagine.autocomplete("lora")
    async def _lora_names(
        self, interaction: discord.Interaction[ImagineBot], current: str
    ) -> list[app_commands.Choice[str]]:
        """The host's LoRAs that fit the model asked for, matching what was typed (Discord
        shows 25; a name it cannot carry is left out)."""
        catalogue = self.service.loras
        if catalogue is None:
            return []
        model = self._model_of(interaction.namespace.model, interaction.guild_id)
        names = await asyncio.to_thread(catalogue.suggest, current, model)
        return [app_commands.Choice(name=name, value=name) for name in names]

    @imagine.autocomplete("model")
    async def _model_suggestions(
        self, interaction: discord.Interaction[ImagineBot], current: str
    ) -> list[app_commands.Choice[str]]:
        """This server's presets (its default first), then the host's models."""
        snapshot = await self.service.presets.hint()
        guild_id = interaction.guild_id
        default = snapshot.defaults.get(guild_id) if guild_id is not None else None
        presets = sorted(
            PresetBook.offered(snapshot, guild_id), key=lambda p: (p.name != default, p.name)
        )
        names = [p.name for p in presets]
        names += [name for name in self._model_names() if name not in names]
        needle = current.strip().lower()
        return [
            app_commands.Choice(
                name=f"{name} (this server's default)" if name == default else name, value=name
            )
            for name in names
            if needle in name.lower() and len(name) <= 100
        ][:25]

    async def _submit(  # noqa: PLR0912, PLR0915 - one path, each way off it designed
        self,
        interaction: discord.Interaction[ImagineBot],
        *,
        call: tuple[str, dict[str, Any]] | None = None,
        submit: Callable[[DeliveryTarget], Awaitable[Submission]] | None = None,
        aspect: str | None = None,
        acknowledge: bool = True,
    ) -> None:
        """Make the job, durably before the member sees the answer ("thinking…"): a bot killed
        at any moment after the answer still makes it. ``call`` (a service call and its
        arguments) is written down first, answered, then made (its record goes with the job);
        ``submit`` (a request with an image to download) is made, then answered. A refusal is
        an answer only the user sees. A write slower than ``ACK_DEADLINE`` (a database in
        trouble) is answered first, so Discord does not fail the command; only a crash in that
        window can lose the request."""
        deliveries = self.bot.deliveries
        deliveries.expect(interaction.id)
        target = delivery_target(interaction, reply_to=getattr(interaction.message, "id", None))
        if call is not None:
            operation, arguments = call
            submit = self._service_call(operation, arguments)
        assert submit is not None
        acknowledged: int | object | None = None
        written = call is not None and acknowledge
        try:
            if written:
                assert call is not None
                _, acknowledged = await self._deadline(
                    interaction, self.bot.intent_log.record(interaction.id, *call, target)
                )
                if not interaction.response.is_done():
                    acknowledged = await self._acknowledge(interaction)
                if acknowledged is UNKNOWN:  # Discord told the member it failed: not made
                    logger.warning("interaction %s expired before it was answered", interaction.id)
                    await self.bot.intent_log.forget(interaction.id)
                    deliveries.answered(interaction.id)
                    return
                # Answered before the job exists: its progress may show from its first step.
                deliveries.answered(interaction.id)
                async with self.bot.making:
                    submission = await submit(target)
            else:
                submission, acknowledged = await self._deadline(
                    interaction, submit(target), answer=acknowledge
                )
        except GenerationError as error:
            deliveries.answered(interaction.id)
            if written:
                await self.bot.intent_log.forget(interaction.id)
            text = (
                _invalid(error, aspect)
                if isinstance(error, InvalidRequest)
                else f"{error} Nothing was queued."
            )
            await refuse(interaction, text)
            return
        except Exception:
            deliveries.answered(interaction.id)
            if written:  # the member hears it failed (and may ask again): not made later
                await self.bot.intent_log.forget(interaction.id)
            raise
        except BaseException:  # stopping: a record left behind is made at the next start
            deliveries.answered(interaction.id)
            raise
        job = submission.job
        try:
            if not interaction.response.is_done() and acknowledged is not UNKNOWN:
                acknowledged = await self._acknowledge(interaction)
            if acknowledged is UNKNOWN:
                # Discord had given up on the command (its 3 s passed) and told the member it
                # failed: the job must not run, be charged or be posted.
                logger.warning("interaction %s expired before it was answered", interaction.id)
                await self._withdraw_job(job)
                return
            if isinstance(acknowledged, int):
                await self.bot.outbox.set_original(job.id, acknowledged)
        finally:
            deliveries.answered(interaction.id)
        await deliveries.show_queued(job, messages.queued(submission))

    async def resume_written(self, started: dt.datetime, delay: float = RESUME_DELAY) -> None:
        """Make the jobs of requests that were answered but not stored when the bot last
        stopped (their records say what was asked); tell the member of one refused now. Only
        records written before this process ``started``, looked at ``delay`` seconds on (a
        process still stopping may be making its last ones). One whose answer can no longer be
        edited (14 minutes on) is dropped, and logged; a database away is waited out while it
        can still be answered."""
        await asyncio.sleep(delay)
        last = 0
        reading_until = time.monotonic() + RESUME_WINDOW.total_seconds()
        while True:
            try:
                page = await retrying(
                    lambda after=last: self.bot.intent_log.pending(  # type: ignore[misc]
                        before=started, after_id=after
                    ),
                    what="reading the requests left from the last run",
                    until=lambda: reading_until,
                )
            except Exception as error:
                logger.error("could not read the requests left from the last run: %s", error)
                return
            if not page:
                return
            for intent in page:
                await self._resume(intent)
            last = page[-1].interaction_id

    async def _resume(self, intent: IntentRecord) -> None:
        target = decode_delivery(intent.delivery)
        deadline = target.interaction_at + RESUME_WINDOW
        if utcnow() > deadline:
            logger.warning(
                "interaction %s was answered but its job never stored, and its answer can no "
                "longer be edited; dropped",
                intent.interaction_id,
            )
            await self.bot.intent_log.forget(intent.interaction_id)
            return
        left = time.monotonic() + (deadline - utcnow()).total_seconds()
        try:
            submission = await retrying(
                lambda: self.service.resume(intent),
                what=f"making the job of interaction {intent.interaction_id}",
                until=lambda: left,
            )
        except GenerationError as error:
            await self.bot.intent_log.forget(intent.interaction_id)
            await self._refuse_later(target, f"{error} Nothing was queued.")
            return
        except Exception:
            logger.exception("interaction %s: its job could not be made", intent.interaction_id)
            return  # kept: tried again at the next start, while it can be answered
        logger.info(
            "interaction %s: job %s made from its record",
            intent.interaction_id,
            submission.job.id,
        )
        await self.bot.deliveries.show_queued(submission.job, messages.queued(submission))

    async def _refuse_later(self, target: DeliveryTarget, text: str) -> None:
        """A refusal through the interaction's token: its "thinking…" goes, the member alone
        reads why."""
        webhook = discord.Webhook.partial(
            target.application_id, target.interaction_token, client=self.bot
        )
        webhook.type = discord.WebhookType.application
        try:
            with contextlib.suppress(discord.HTTPException):
                await webhook.delete_message("@original")  # type: ignore[arg-type]
            await webhook.send(**messages.plain(text).send_kwargs(), ephemeral=True)
        except discord.HTTPException as error:
            logger.warning("could not tell a member their request was refused: %s", error)

    def _service_call(
        self, operation: str, arguments: dict[str, Any]
    ) -> Callable[[DeliveryTarget], Awaitable[Submission]]:
        """The service call a written-down request stands for (the same one a restart makes
        from its record)."""
        method = getattr(self.service, operation)
        decoded = decode_arguments(operation, arguments)
        return lambda target: method(**decoded, delivery=target)

    async def _deadline(
        self,
        interaction: discord.Interaction[ImagineBot],
        work: Awaitable[T],
        *,
        answer: bool = True,
    ) -> tuple[T, int | object | None]:
        """``work``'s result, and what answering said if "thinking…" had to go out meanwhile
        (with ``answer``): it does when ``work`` takes past ACK_DEADLINE, so Discord does not
        fail the command."""
        task = asyncio.ensure_future(work)
        arrived = interaction.extras.get(RECEIVED, time.monotonic())
        left = max(0.0, ACK_DEADLINE - (time.monotonic() - arrived))
        done, _ = await asyncio.wait({task}, timeout=left)
        acknowledged = None
        if not done and answer and not interaction.response.is_done():
            logger.warning(
                "interaction %s: not stored after %.1f s; answering first",
                interaction.id,
                ACK_DEADLINE,
            )
            acknowledged = await self._acknowledge(interaction)
        return await task, acknowledged

    async def _withdraw_job(self, job: JobRecord) -> None:
        """Cancel a job whose command Discord says failed, nothing delivered for it; one that
        ended meanwhile is deleted. Tried through a database that is away for a while (else
        it would run, be charged and be posted to a member told it failed)."""

        async def withdraw() -> None:
            try:
                await self.service.cancel(
                    job.id, job.user_id, withdraw=messages.EXPIRED_BEFORE_ANSWERED
                )
            except JobStateError:  # it ended already
                await self.bot.runtime.moderation.delete_job(
                    job.user_id, job.id, is_admin=False, reason=messages.EXPIRED_BEFORE_ANSWERED
                )

        deadline = time.monotonic() + WITHDRAW_SECONDS
        try:
            await retrying(withdraw, what=f"cancelling job {job.id}", until=lambda: deadline)
        except Exception:
            logger.exception("job %s: could not cancel it after Discord's 10062", job.id)

    @staticmethod
    async def _acknowledge(interaction: discord.Interaction[ImagineBot]) -> int | object | None:
        """Defer with "thinking…" (only the member sees it, for a private job): the response
        message's id, if Discord said it; ``UNKNOWN`` if Discord no longer knows the
        interaction (10062: it told the member it failed)."""
        private = bool(interaction.extras.get(PRIVATE))
        try:
            response = await interaction.response.defer(thinking=True, ephemeral=private)
        except discord.HTTPException as error:
            logger.warning("could not answer interaction %s: %s", interaction.id, error)
            if error.code == UNKNOWN_INTERACTION:
                return UNKNOWN
            # The job (if any) is committed all the same; its result goes to the channel.
            return None
        except NETWORK_ERRORS as error:
            # The answer may have reached Discord: the job is made all the same (its result
            # edits the answer, or goes to the channel).
            logger.warning(
                "interaction %s: no word whether it was answered: %s", interaction.id, error
            )
            return None
        return None if response is None else response.message_id

    # -- buttons -----------------------------------------------------------------------------

    async def button(
        self,
        interaction: discord.Interaction[ImagineBot],
        action: Action,
        job_id: int,
        index: int | None,
    ) -> None:
        """U/V/🔄 and friends: a new job from the stored one, answered with a new message;
        with the member's remix mode on, a Vary or 🔄 opens the form to edit its prompt first."""
        # Buttons that answer by themselves, not with a new job (at once, at least).
        own: dict[Action, Callable[[], Awaitable[None]]] = {
            Action.CANCEL: lambda: self._cancel(interaction, job_id),
            Action.RECIPE: lambda: self._recipe_button(interaction, job_id),
            Action.DELETE: lambda: self._delete_button(interaction, job_id),
            Action.VIDEO: lambda: self._video_button(interaction, job_id),
            Action.COMPARE: lambda: self._compare_picker(interaction, job_id, index or 0),
            Action.VARY_REGION: lambda: self._region_picker(interaction, job_id, index or 0),
        }
        if action in own:
            await own[action]()
            return
        prefs = await self.bot.preferences.read(interaction.user.id)
        if action in REMIXABLE and prefs is not None and prefs.remix:
            await self._open_remix(interaction, action, job_id, index)
            return
        await self._derive(interaction, action, job_id, index, prefs=prefs)

    async def _parent(
        self, interaction: discord.Interaction[ImagineBot], job_id: int
    ) -> JobView | None:
        """The job a button acts on, if the member may use it here (else refused: None)."""
        try:
            parent = await self._visible(interaction, job_id, on_message=True)
        except GenerationError as error:
            await refuse(interaction, str(error))
            return None
        if not self.bot.serves(parent.job.guild_id, dm_commands=False):
            # A result (in a DM, say) of a server the host no longer serves.
            await refuse(interaction, messages.NOT_SERVED)
            return None
        return parent

    async def _open_remix(
        self,
        interaction: discord.Interaction[ImagineBot],
        action: Action,
        job_id: int,
        index: int | None,
    ) -> None:
        """The remix form, with the job's prompt and negative prompt to edit."""
        parent = await self._parent(interaction, job_id)
        if parent is None:
            return
        job = parent.job
        form = RemixForm(action, job_id, index, job.prompt, job.negative_prompt)
        await interaction.response.send_modal(form)

    async def remix(
        self,
        interaction: discord.Interaction[ImagineBot],
        action: Action,
        job_id: int,
        index: int | None,
        *,
        prompt: str,
        negative: str,
    ) -> None:
        """The remix form sent: the variation or reroll, with the texts as edited. Only from
        a message that carries the job's buttons (the form opened from one of them), whatever
        its ``custom_id`` names."""
        if action not in REMIXABLE:
            await refuse(interaction, "Only a variation or a reroll can be remixed.")
            return
        if not carries_job(interaction.message, job_id):
            await refuse(interaction, "Open the remix form from the job's own result.")
            return
        prefs = await self.bot.preferences.read(interaction.user.id)
        await self._derive(
            interaction, action, job_id, index, prefs=prefs, edited=(prompt, negative)
        )

    async def _region_picker(
        self, interaction: discord.Interaction[ImagineBot], job_id: int, index: int
    ) -> None:
        """Vary (Region): the image with its cells numbered, and the selects of cells and
        areas, to the presser alone."""
        parent = await self._parent(interaction, job_id)
        if parent is None:
            return
        image = next((image for image in parent.images if image.index == index), None)
        if image is None or self.service.store is None:
            await refuse(interaction, f"job {job_id} has no image {index + 1} kept here")
            return
        if not await self._file_budget(interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        model = self.service.models.get(parent.job.model_id) or self.service.model
        try:
            data = await asyncio.to_thread(self.service.store.get, image.path)
            guide = await asyncio.to_thread(_guide, data, max(8, model.size_multiple))
        except Exception as error:  # a store away, an image unreadable: said, not raised
            logger.warning("could not draw the cells of job %s: %s", job_id, error)
            await refuse(interaction, f"Job {job_id}'s image cannot be read now: try again.")
            return
        message = Message(
            content=messages.REGION_PICK,
            view=region_picker(job_id, index),
            uploads=[Upload("cells.png", guide)],
        )
        with contextlib.suppress(discord.HTTPException, *NETWORK_ERRORS):
            await interaction.edit_original_response(**message.edit_kwargs())

    async def _compare_picker(
        self, interaction: discord.Interaction[ImagineBot], job_id: int, index: int
    ) -> None:
        """Compare…: the knob to turn, to the presser alone."""
        if await self._parent(interaction, job_id) is None:
            return
        message = Message(content=messages.COMPARE_PICK, view=compare_picker(job_id, index))
        await answer(interaction, message)

    async def compare_picked(
        self, interaction: discord.Interaction[ImagineBot], job_id: int, index: int, knob: str
    ) -> None:
        """A knob chosen: the form of its values, filled in with some to start from."""
        parent = await self._parent(interaction, job_id)
        if parent is None:
            return
        if knob not in KNOB_NAMES:
            await refuse(interaction, "Pick what to compare from the list.")
            return
        limits = self.service.limits
        suggested = _suggested(knob, parent.job, limits.max_steps, limits.max_count)
        form = CompareForm(job_id, index, knob, suggested, limits.max_count)
        await interaction.response.send_modal(form)

    async def compare(
        self,
        interaction: discord.Interaction[ImagineBot],
        job_id: int,
        index: int,
        knob: str,
        values: str,
    ) -> None:
        """The comparison's form sent: the grid, a cell per value. Only from the picker of
        that job (whatever the form's ``custom_id`` names)."""
        if not carries_job(interaction.message, job_id, picker="imagine-compare"):
            await refuse(interaction, "Open Compare… from the job's own result.")
            return
        try:
            comparison = Comparison.parse(knob, values)
        except InvalidRequest as error:
            await refuse(interaction, f"{error} Nothing was made.")
            return
        prefs = await self.bot.preferences.read(interaction.user.id)
        await self._derive(
            interaction, Action.COMPARE, job_id, index, prefs=prefs, compare=comparison
        )

    async def _file_budget(self, interaction: discord.Interaction[ImagineBot]) -> bool:
        """Whether the member may have one more file read for them now (else told)."""
        if _take(self._files, interaction.user.id, FILES_BURST, FILES_REFILL_SECONDS):
            return True
        await refuse(
            interaction,
            f"You opened {FILES_BURST} images or videos just now: one more every "
            f"{FILES_REFILL_SECONDS:g} s.",
        )
        return False

    async def region_picked(
        self,
        interaction: discord.Interaction[ImagineBot],
        job_id: int,
        index: int,
        what: str,
        values: list[str],
    ) -> None:
        """Cells or an area chosen in the picker: the form for what goes there."""
        try:
            edit = region_of(",".join(values) if what == "cells" else "".join(values[:1]))
        except InvalidRequest as error:
            await refuse(interaction, f"{error} Pick again.")
            return
        parent = await self._parent(interaction, job_id)
        if parent is None:
            return
        job = parent.job
        form = RegionForm(job_id, index, edit, job.prompt, job.negative_prompt)
        await interaction.response.send_modal(form)

    async def region(
        self,
        interaction: discord.Interaction[ImagineBot],
        job_id: int,
        index: int,
        edit: Edit,
        *,
        prompt: str,
        negative: str,
    ) -> None:
        """Vary (Region)'s form sent: the edit, with the region's prompt. Only from the
        picker of that job (whatever the form's ``custom_id`` names)."""
        if not carries_job(interaction.message, job_id, picker="imagine-region"):
            await refuse(interaction, "Open Vary (Region) from the job's own result.")
            return
        prefs = await self.bot.preferences.read(interaction.user.id)
        await self._derive(
            interaction,
            Action.VARY_REGION,
            job_id,
            index,
            prefs=prefs,
            edited=(prompt, negative),
            edit=edit,
        )

    async def _derive(
        self,
        interaction: discord.Interaction[ImagineBot],
        action: Action,
        job_id: int,
        index: int | None,
        *,
        prefs: Preferences | None,
        edited: tuple[str, str] | None = None,
        edit: Edit | None = None,
        compare: Comparison | None = None,
    ) -> None:
        """``prefs``: the presser's settings as read (None: unread, taken as private mode).
        ``edit``: Vary (Region)'s region (the other edits are the button's own)."""
        parent = await self._parent(interaction, job_id)
        if parent is None:
            return
        kind, strength = {
            Action.UPSCALE: (JobKind.UPSCALE, None),
            Action.VARY: (JobKind.VARIATION, None),
            Action.VARY_SUBTLE: (JobKind.VARIATION, SUBTLE_STRENGTH),
            Action.VARY_STRONG: (JobKind.VARIATION, STRONG_STRENGTH),
            Action.REROLL: (JobKind.REROLL, None),
            **dict.fromkeys([*EDITS, Action.VARY_REGION], (JobKind.EDIT, None)),
            Action.COMPARE: (JobKind.COMPARE, None),
        }[action]

        nsfw, public = channel_flags(interaction.channel)

        derive = {
            "kind": kind,
            "parent_job_id": job_id,
            "image_index": index,
            "user_id": interaction.user.id,
            # Its result goes where the button was pressed (a DM, another channel): the rules
            # of that channel hold for it, not its parent's.
            "channel": [interaction.channel_id, nsfw, public],
            "strength": strength,
            "interaction_id": interaction.id,
            "user_name": interaction.user.name,
            "role_ids": list(_role_ids(interaction.user)),
        }
        if edited is not None:  # the remix form's texts: the job records them
            derive["prompt"], derive["negative_prompt"] = edited
        if action in EDITS:  # Zoom Out, Make Square, Pan
            derive["edit"] = EDITS[action].to_dict()
        elif edit is not None:
            derive["edit"] = edit.to_dict()
        if compare is not None:
            derive["compare"] = compare.to_dict()
        # Private as its parent was, or as the presser's own setting asks (or may ask).
        private = parent.job.private or prefs is None or prefs.private
        derive["private"] = private
        rules = await self.service.servers.hint(parent.job.guild_id)
        interaction.extras[PRIVATE] = rules.private(private)
        await self._submit(interaction, call=("derive", derive))

    async def _recipe_button(
        self, interaction: discord.Interaction[ImagineBot], job_id: int
    ) -> None:
        """✉️ on a private result (an ephemeral message takes no reactions): the recipe,
        to the presser alone."""
        try:
            view = await self._visible(interaction, job_id, on_message=True)
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        await answer(interaction, messages.recipe(view))

    async def _video_button(
        self, interaction: discord.Interaction[ImagineBot], job_id: int
    ) -> None:
        """--video's animated WebP, to the presser alone (any member who may use the result)."""
        try:
            job = (await self._visible(interaction, job_id, on_message=True)).job
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        if self.service.store is None:
            await refuse(interaction, f"Job {job_id}'s files are not kept here.")
            return
        if not await self._file_budget(interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        key = video_key(job.id, job.attempts)
        try:
            data = await asyncio.to_thread(self.service.store.get, key)
        except FileNotFoundError:
            await refuse(interaction, messages.NO_VIDEO.format(job_id=job_id))
            return
        except Exception as error:  # the store away: said, not raised
            logger.warning("could not read job %s's video: %s", job_id, error)
            await refuse(interaction, f"Job {job_id}'s video cannot be read now: try again.")
            return
        if len(data) > interaction.filesize_limit:
            await refuse(interaction, messages.NO_VIDEO.format(job_id=job_id))
            return
        message = Message(
            content=f"Job {job_id}, step by step.", uploads=[Upload(f"job-{job_id}.webp", data)]
        )
        with contextlib.suppress(discord.HTTPException, *NETWORK_ERRORS):
            await interaction.edit_original_response(**message.edit_kwargs())

    async def _delete_button(
        self, interaction: discord.Interaction[ImagineBot], job_id: int
    ) -> None:
        """❌ on a private result: as the reaction does, by its owner or its server's
        moderator; the message it sits on goes with the job's others."""
        try:
            job = (await self._visible(interaction, job_id, on_message=True)).job
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        actor = self._actor(interaction)
        if job.user_id != interaction.user.id and not may_moderate_job(actor, job):
            await refuse(interaction, f"job {job_id} is not yours to delete")
            return
        await interaction.response.defer()  # the deletion may take longer than 3 s
        try:
            await self._end_job(job_id, interaction.user.id, is_admin=may_moderate_job(actor, job))
        except GenerationError as error:
            await interaction.followup.send(str(error), ephemeral=True)
            return
        with contextlib.suppress(discord.HTTPException, *NETWORK_ERRORS):
            await interaction.delete_original_response()  # the message the button is on
        await self.bot.deliveries.routes.remove_all(await self.service.job(job_id))
        await self.bot.deliveries.withdrawn(job_id)  # removed here: the sweep need not

    async def _end_job(self, job_id: int, user_id: int, *, is_admin: bool) -> None:
        """Cancel the job if it has not ended (nothing more is posted for it), else delete
        it, as ❌ does."""
        try:
            await self.service.cancel(
                job_id, user_id, is_admin=is_admin, withdraw="removed with ❌ before it ended"
            )
        except JobStateError:  # it has ended (perhaps just now): deleted, as a finished job
            await self.bot.runtime.moderation.delete_job(
                user_id, job_id, is_admin=is_admin, reason="❌"
            )

    def _actor(self, interaction: discord.Interaction[ImagineBot]) -> Actor:
        return self.bot.actor(interaction.user, interaction.guild_id, interaction.permissions)

    async def _visible(
        self, interaction: discord.Interaction[ImagineBot], job_id: int, *, on_message: bool = False
    ) -> JobView:
        """The job, if the member may see it (``on_message``: a button on its result, which
        they see); one they may not is as if there were none."""
        view = await self.service.job(job_id)
        actor = self._actor(interaction)
        allowed = may_use_result if on_message else may_see_job
        if allowed(actor, view.job, view.images):
            return view
        if view.job.guild_id is not None and view.job.guild_id == actor.guild_id:
            raise NotAllowed(
                f"job {job_id} is not shown to you: it was made in a channel not everyone here "
                "can see, was deleted, or is held for the moderators' review"
            )
        raise JobNotFound(job_id)

    async def _cancel(self, interaction: discord.Interaction[ImagineBot], job_id: int) -> None:
        try:
            job = (await self._visible(interaction, job_id, on_message=True)).job
            moderator = may_moderate_job(self._actor(interaction), job)
            await self.service.cancel(job_id, interaction.user.id, is_admin=moderator)
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        await answer(interaction, messages.plain(f"Job {job_id}: cancelled."))

    # -- reactions ---------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return
        if not self.bot.serves(payload.guild_id, dm_commands=False):
            return  # a server the host does not serve (any more)
        emoji = (payload.emoji.name or "").replace("\ufe0f", "")
        if emoji not in {ENVELOPE, CROSS}:
            return
        delivery = await self.bot.outbox.by_message(payload.message_id)
        # A result posted again with /show is its job's too.
        post = None if delivery is not None else await self.bot.outbox.post(payload.message_id)
        job_id = delivery.job_id if delivery is not None else post.job_id if post else None
        if job_id is None:
            return
        try:
            if emoji == ENVELOPE:
                await self._send_recipe(payload, job_id)
            elif post is not None and post.user_id == payload.user_id:
                await self._take_back(payload, post.job_id)
            else:
                await self._delete(payload, job_id)
        except (GenerationError, discord.HTTPException) as error:
            logger.info("reaction %s on job %s: %s", emoji, job_id, error)

    async def _take_back(self, payload: discord.RawReactionActionEvent, job_id: int) -> None:
        """❌ on a post made with /show, by whoever made it: that post goes (the job too, if
        it is theirs, or they moderate it)."""
        job = (await self.service.job(job_id)).job
        is_admin = payload.member is not None and may_moderate_job(
            self.bot.actor(payload.member, payload.guild_id), job
        )
        if job.user_id == payload.user_id or is_admin:
            await self._delete(payload, job_id)
            return
        channel = self.bot.get_partial_messageable(payload.channel_id)
        with contextlib.suppress(discord.HTTPException, *NETWORK_ERRORS):
            await channel.get_partial_message(payload.message_id).delete()
        await self.bot.outbox.remove_post(payload.message_id)

    async def _send_recipe(self, payload: discord.RawReactionActionEvent, job_id: int) -> None:
        view = await self.service.job(job_id)
        user_id = payload.user_id
        reacting = payload.member or discord.Object(user_id)
        actor = self.bot.actor(reacting, payload.guild_id)  # type: ignore[arg-type]
        if view.job.status == JobStatus.DELETED or not may_use_result(actor, view.job, view.images):
            return  # deleted, or held for review: not for every member who reacts
        channel = await self.bot.create_dm(discord.Object(user_id))
        await channel.send(**messages.recipe(view).send_kwargs())

    async def _delete(self, payload: discord.RawReactionActionEvent, job_id: int) -> None:
        """❌ by its owner or its server's moderator: every message of the job goes, and a
        job still waiting or running is cancelled (nothing more is posted for it)."""
        member = payload.member
        job = (await self.service.job(job_id)).job
        is_admin = member is not None and may_moderate_job(
            self.bot.actor(member, payload.guild_id), job
        )
        if job.user_id != payload.user_id and not is_admin:
            return  # someone else's ❌ (another server's moderator's too) does nothing
        await self._end_job(job_id, payload.user_id, is_admin=is_admin)
        view = await self.service.job(job_id)
        await self.bot.deliveries.routes.remove_all(
            view, also=(payload.channel_id, payload.message_id)
        )
        await self.bot.deliveries.withdrawn(job_id)  # removed here: the sweep need not

    # -- /queue /quota /job /reproduce -------------------------------------------------------

    @app_commands.command(name="queue", description="Your waiting and running jobs.")
    async def queue(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await answer(interaction, await self._queue_page(interaction.user.id, 0))

    async def queue_page(self, interaction: discord.Interaction[ImagineBot], page: int) -> None:
        """◀ / ▶ under /queue: the presser's own queue, that page, in place."""
        message = await self._queue_page(interaction.user.id, page)
        await interaction.response.edit_message(**message.edit_kwargs())

    async def _queue_page(self, user_id: int, page: int) -> Message:
        waiting = await self.service.waiting(user_id)
        running = [v.job for v in await self.service.recent(user_id=user_id, status="running")]
        entries = [(job, "running") for job in running]
        entries += [(s.job, wording.describe_place(s)) for s in waiting]
        return messages.queue_page(entries, page)

    @app_commands.command(name="quota", description="Your usage, limits and when they reset.")
    async def quota(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await answer(interaction, messages.quota(await self.service.usage(interaction.user.id)))

    @app_commands.command(name="job", description="A job's recipe and lineage.")
    @app_commands.describe(full="Attach the full-size PNG (when it fits Discord's limit).")
    async def job(
        self, interaction: discord.Interaction[ImagineBot], id: int, full: bool = False
    ) -> None:
        try:
            view = await self._visible(interaction, id)
            parent, children = await self.service.lineage(id)
            # Jobs made from it that the asker may not see (private ones) are not listed.
            children = [c for c in children if may_see_job(self._actor(interaction), c)]
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        owner = interaction.user.id == view.job.user_id
        if not full:
            await answer(interaction, messages.job_details(view, parent, children, owner=owner))
            return
        # Reading a file from the store may take longer than Discord's 3 s: answer first.
        await interaction.response.defer(thinking=True, ephemeral=True)
        files, note = await self._full_files(interaction, view)
        details = messages.job_details(
            view, parent, children, full_files=files, full_note=note, owner=owner
        )
        await interaction.edit_original_response(**details.edit_kwargs())

    async def _full_files(
        self, interaction: discord.Interaction[ImagineBot], view: JobView
    ) -> tuple[list[Upload], str]:
        """The job's full PNG (its grid, or its one image) if the asker may have it and it
        fits the upload limit, else why not."""
        job, limit = view.job, interaction.filesize_limit
        if job.status != JobStatus.SUCCEEDED or not view.images:
            return [], f"Job {job.id} has no images ({job.status})."
        if any(image.review is not None and image.review != "approved" for image in view.images):
            return [], "Its images are waiting for the moderators' review."
        key = view.images[0].path if len(view.images) == 1 else grid_key(job.id, job.attempts)
        store = self.bot.runtime.store
        size = await asyncio.to_thread(store.size, key)
        if size > limit:
            return [], (
                f"The full PNG ({size:,} bytes) is over Discord's {limit:,}-byte limit here; "
                "the host has it (`imagine-bot jobs --json` gives its path)."
            )
        data = await asyncio.to_thread(store.get, key)
        return [Upload(f"imagine-{job.id}-full.png", data)], ""

    @app_commands.command(name="show", description="Post a job's result again, with its buttons.")
    @app_commands.describe(id="The job's number (in its result, /job and /queue).")
    async def show(self, interaction: discord.Interaction[ImagineBot], id: int) -> None:
        """Its result posted here again, with working buttons and reactions: by its owner, or
        by any member of its server for a job made in a public channel there."""
        try:
            view = await self._visible(interaction, id)
            job = view.job
            if job.guild_id != interaction.guild_id:
                raise NotAllowed(f"job {id} was made in another server (or a DM): show it there")
            if job.status != JobStatus.SUCCEEDED or not view.images:
                raise JobStateError(f"job {id} has no images to show ({job.status})")
            if not may_show_job(self._actor(interaction), job, view.images):
                raise NotAllowed(
                    f"job {id} is not yours to show: it was made in a channel not everyone here "
                    "can see, or its images are held for the moderators' review"
                )
            if job.private and (await self.service.servers.hint(job.guild_id)).private(False):
                raise NotAllowed(f"job {id} is private, as every job here must be")
            nsfw, _ = channel_flags(interaction.channel)
            if job.channel_nsfw and not nsfw:
                raise NotAllowed(f"job {id} was made in an age-restricted channel: show it in one")
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        if not _take(self._shows, interaction.user.id, SHOW_BURST, SHOW_REFILL_SECONDS):
            await refuse(
                interaction,
                f"You showed {SHOW_BURST} results just now: one more every "
                f"{SHOW_REFILL_SECONDS:g} s.",
            )
            return
        # Reading and fitting its file may take longer than Discord's 3 s: answer first.
        await interaction.response.defer(thinking=True)

        def edit(result: Message) -> Awaitable[discord.InteractionMessage]:
            return interaction.edit_original_response(**result.edit_kwargs())

        routes = self.bot.deliveries.routes
        message = await routes.send_result(view, interaction.filesize_limit, edit)
        # Recorded so ✉️ and ❌ on it act on the job (through a short database outage too).
        # Not recorded, it could outlive the job's deletion: the command fails, and its
        # failure answer takes the post's place (see ``refuse``).
        until = time.monotonic() + POST_RECORD_SECONDS
        await retrying(
            lambda: self.bot.outbox.add_post(
                message.id, job.id, interaction.channel_id, interaction.user.id
            ),
            what=f"recording job {job.id}'s post",
            until=lambda: until,
        )
        # Deleted (or held) while it went out: ❌ took the job's messages before this one was
        # on record, so it goes now.
        again = await self.service.job(job.id)
        if not may_show_job(self._actor(interaction), again.job, again.images):
            with contextlib.suppress(discord.HTTPException, *NETWORK_ERRORS):
                await interaction.delete_original_response()
            await self.bot.outbox.remove_post(message.id)

    @app_commands.command(name="reproduce", description="Make a job's images again and compare.")
    async def reproduce(self, interaction: discord.Interaction[ImagineBot], id: int) -> None:
        """A queued job with the job's recipe, exactly: its result says whether the images
        came out bit for bit the same (its owner and its server's moderators)."""
        try:
            job = (await self._visible(interaction, id)).job
            if not may_act_on_job(self._actor(interaction), job):
                raise NotAllowed(f"job {id} is not yours to reproduce")
            if job.guild_id != interaction.guild_id:
                # Its rules (bans, blocked terms, safety policy, moderators) are its server's:
                # it is made again there, or not at all.
                raise NotAllowed(
                    f"job {id} was made in another server (or a DM): ask for it again there"
                )
        except GenerationError as error:
            await refuse(interaction, str(error))
            return
        nsfw, public = channel_flags(interaction.channel)

        again = {
            "job_id": id,
            "user_id": interaction.user.id,
            "interaction_id": interaction.id,
            "user_name": interaction.user.name,
            "role_ids": list(_role_ids(interaction.user)),
            "channel": [interaction.channel_id, nsfw, public],
        }
        prefs = await self.bot.preferences.read(interaction.user.id)
        private = job.private or prefs is None or prefs.private
        again["private"] = private
        rules = await self.service.servers.hint(job.guild_id)
        interaction.extras[PRIVATE] = rules.private(private)
        await self._submit(interaction, call=("reproduce", again))
