"""The generation service: submit, derive, cancel and look up jobs. Owns its transactions."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from PIL import Image
from sqlalchemy.exc import IntegrityError

from generation import parameters
from generation.access import Actor, hidden
from generation.comparing import MIN_VALUES, Comparison, cell
from generation.editing import Edit, output_size
from generation.errors import (
    InvalidRequest,
    JobNotFound,
    JobStateError,
    ModelUnavailable,
    NotAllowed,
    UserBanned,
)
from generation.faults import is_transient
from generation.imaging import pixel_sha256
from generation.intents import OPERATIONS, decode_arguments, decode_delivery
from generation.loras import LoraCatalogue, choices_of
from generation.model_info import ModelInfo, describe_model
from generation.outbox import DeliveryTarget
from generation.preferences import Preferences
from generation.presets import Preset, PresetBook, Snapshot
from generation.prompt_filter import Blocked, PromptFilter
from generation.quotas import Quotas, Usage, admit, check_override, usage
from generation.reproduce import REMOTE_PREFIXES, ReproduceReport, compare
from generation.requests import (
    GenerationRequest,
    Limits,
    Recipe,
    is_resize_only,
    nearest_size,
    validate,
)
from generation.samplers import calls_per_step
from generation.server_settings import ServerRules, ServerSettings
from generation.strikes import StrikePolicy, strike
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import EventKind, JobKind, JobStatus, utcnow
from storage.queue import Waiting
from storage.records import DeliveryRecord, ImageRecord, IntentRecord, JobRecord, UserRecord
from storage.unit_of_work import UnitOfWork

logger = logging.getLogger(__name__)

# Writing an uploaded start image may take this long (the submit's transaction waits on it).
UPLOAD_SECONDS = 15.0
# A worker heard from within this long (and not stopped) counts as running the models it
# announced; a job of a model none runs is told so.
SERVED_WITHIN = dt.timedelta(hours=1)
FAMILY_LIMIT = 200  # the jobs of one lineage shown (a busy image may have hundreds of variations)


@dataclasses.dataclass(frozen=True, slots=True)
class Submission:
    """A job as queued, its place in line among its model's waiting jobs (1 = next; 0 once it
    runs) and when it should be done, in seconds from now (None until a job has been
    measured; with ``capped``, at least that)."""

    job: JobRecord
    position: int
    eta_seconds: float | None = None
    capped: bool = False  # more than storage.queue.PLACE_CAP jobs ahead: "1,000+ in line"
    # The name of its model when no running worker has announced it (a preset's own model
    # whose files no GPU host has, or whose hosts are all down): it waits until one does.
    unserved: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Upload:
    """A start image a user gave: its key in the store, its pixels' hash, its bytes."""

    key: str
    sha256: str
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class JobView:
    job: JobRecord
    images: list[ImageRecord]
    # Where its result went, for a job the bot delivers (None for the command line's).
    delivery: DeliveryRecord | None = None
    # A finished /reproduce job: its images against those of the job it made again.
    reproduced: ReproduceReport | None = None


def _api_takes_images(model: ModelInfo) -> bool:
    from generation.openai_engine import api_model

    spec = api_model(model.model_id)
    return spec.variations or spec.edits


async def refuse_if_banned(
    uow: UnitOfWork, user: UserRecord | None, guild_id: int | None, now: dt.datetime
) -> None:
    """Raise ``UserBanned`` if the user is banned on every server, or in ``guild_id``."""
    if user is None:
        return
    if user.banned and (user.banned_until is None or user.banned_until > now):
        raise UserBanned(user.ban_reason, user.banned_until)
    if guild_id is not None:
        here = await uow.users.guild_ban(guild_id, user.id)
        if here is not None and here.active(now):
            raise UserBanned(here.reason, here.until, in_server=True)


def refuse_outside_age_restricted(rules: ServerRules, request: GenerationRequest) -> None:
    """A server that keeps /imagine to age-restricted channels refuses it anywhere else."""
    if rules.age_restricted_only and request.guild_id is not None and not request.channel_nsfw:
        raise NotAllowed(
            "this server's moderators allow /imagine only in age-restricted channels; "
            "ask again in one of those"
        )


def _model_name(models: Mapping[str, ModelInfo], model_id: str) -> str:
    model = models.get(model_id)
    return model.name if model is not None else model_id


def default_job_cost(model: ModelInfo, count: int = 4) -> float:
    """What a grid at the model's defaults costs (its native size and steps): the unit a
    worker's grouping bound is counted in."""
    return model.native_width * model.native_height * model.default_steps * count / 1_000_000


def job_cost(recipe: Recipe, factor: float = 1.0, *, all_steps: bool = False) -> float:
    """Cost in megapixel-steps: width × height × steps run × images × the model's factor.

    img2img runs ``steps × strength`` steps; ``all_steps`` is for pipelines that run every
    step whatever the strength (a diffusion upscaler).
    """
    if is_resize_only(recipe.kind, recipe.strength):
        # No model call, but a large PNG to encode, check and store: one step's worth.
        return recipe.width * recipe.height * recipe.count * factor / 1_000_000
    steps = recipe.steps
    if recipe.strength is not None and not all_steps:
        steps = max(1, int(recipe.steps * recipe.strength))
    # A second-order sampler (Heun, DPM2, DPM++ SDE) calls the model twice a step.
    calls = calls_per_step(recipe.scheduler)
    return recipe.width * recipe.height * steps * calls * recipe.count * factor / 1_000_000


class GenerationService:
    def __init__(
        self,
        db: Database,
        model: ModelInfo,
        limits: Limits,
        *,
        max_attempts: int = 3,
        upscaler: ModelInfo | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        quotas: Quotas | None = None,
        role_weights: Mapping[int, float] | None = None,
        cost_factors: Mapping[str, float] | None = None,
        store: ImageStore | None = None,
        prompt_filter: PromptFilter | None = None,
        strikes: StrikePolicy | None = None,
        more_models: Sequence[ModelInfo] = (),
        prices: Mapping[str, float] | None = None,
        cost_per_dollar: float = 250.0,
        server_settings: ServerSettings | None = None,
        loras: LoraCatalogue | None = None,
        presets: PresetBook | None = None,
        models_dir: Path | None = None,
    ) -> None:
        self.db = db
        self.model = model
        # Every host model a request may name (by name or id); the first is the default.
        self.host_models = {info.model_id: info for info in (model, *more_models)}
        self.models_dir = models_dir
        # An image API's price per image (USD) by "model:WxH" or "model", and how many cost
        # units a dollar is worth next to local jobs' megapixel-steps.
        self.prices = dict(prices or {})
        self.cost_per_dollar = cost_per_dollar
        self.upscaler = upscaler
        self.limits = limits
        self.max_attempts = max_attempts
        self.clock = clock
        self.quotas = quotas or Quotas()
        self.role_weights = dict(role_weights or {})
        self.cost_factors = dict(cost_factors or {})
        self.store = store
        self.prompt_filter = prompt_filter or PromptFilter()
        self.strikes = strikes or StrikePolicy()
        # Each server's own rules over these (the host's) defaults.
        self.loras = loras  # the host's LoRAs (None: none)
        self.presets = presets or PresetBook(db)
        self.servers = server_settings or ServerSettings(
            db, prompt_filter=self.prompt_filter, quotas=self.quotas
        )

    def weight(self, user: UserRecord, role_ids: tuple[int, ...]) -> float:
        """The user's fair-share weight: an admin's override, else their best role's, else 1."""
        if user.weight is not None:
            return user.weight
        return max((self.role_weights[r] for r in role_ids if r in self.role_weights), default=1.0)

    @property
    def models(self) -> dict[str, ModelInfo]:
        """Every model a job may run on, by model id: the host's, then the presets' own (as
        last read: a job of a removed preset's model can no longer be made again)."""
        models = dict(self.host_models)
        for preset in self.presets.snapshot.presets.values():
            if preset.model is not None:
                models.setdefault(preset.model.model_id, preset.model)
        return models

    def model_for(self, name: str | None) -> ModelInfo:
        """The host model a request names (by its name or id); the default one for None."""
        if name is None:
            return self.model
        for info in self.host_models.values():
            if name in (info.name, info.model_id):
                return info
        names = ", ".join(info.name for info in self.host_models.values())
        raise InvalidRequest("model", f"must be one of {names}, not {name!r}")

    def preset_model(self, preset: Preset) -> ModelInfo:
        """The model a preset runs: its own, or the host model its source names."""
        return preset.model or self.model_for(preset.source)

    def check(
        self, request: GenerationRequest, presets: Snapshot | None = None, *, strict: bool = False
    ) -> Recipe:
        """Validate a request without touching storage: bad options fail here, at once.
        ``presets``: as last read, when not given. A job made from another carries its
        recipe, so no preset applies to it again. ``strict``: the server's default model is
        refused like any other, not replaced by the host's (to judge a member's settings)."""
        preset = None
        snapshot = self.presets.snapshot if presets is None else presets
        if request.made_from is None:
            preset = PresetBook.chosen(snapshot, request.model, request.guild_id)
        if preset is not None and request.model is None and not strict:
            # The server's default, which the member did not pick: if it no longer works
            # (its model, a LoRA or its size gone), the host's model serves, and the log says.
            try:
                return self._validate(request, preset)
            except InvalidRequest as error:
                logger.warning(
                    "server %s's default model %s cannot be used (%s); using %s",
                    request.guild_id,
                    preset.name,
                    error,
                    self.model.name,
                )
                return self._validate(request, None)
        carried = request.made_from is not None and self._may_carry(request, snapshot)
        if (
            request.made_from is not None
            and request.model is not None
            and request.model not in self._names()
            and not carried
        ):
            # Never the model's id in words: it may be a folder on the host.
            raise InvalidRequest(
                "model",
                f"job {request.made_from}'s model is not offered here any more: make a new "
                "picture with /imagine",
            )
        if (
            preset is None
            and request.model is not None
            and request.model not in self._names()
            and not carried
        ):
            names = [p.name for p in PresetBook.offered(snapshot, request.guild_id)]
            names += [info.name for info in self.host_models.values()]
            raise InvalidRequest(
                "model", f"must be one of {', '.join(names)}, not {request.model!r}"
            )
        return self._validate(request, preset)

    def _may_carry(self, request: GenerationRequest, snapshot: Snapshot) -> bool:
        """Whether a job made from another may run on the model it carries by id: a host
        model, or a preset's own model while a preset with it is offered in the job's server
        (a preset taken from that server takes its buttons' jobs with it)."""
        if request.model in self.host_models:
            return True
        return any(
            preset.model is not None
            and preset.model.model_id == request.model
            and preset.offered_in(request.guild_id)
            for preset in snapshot.presets.values()
        )

    def _names(self) -> set[str]:
        return {name for info in self.host_models.values() for name in (info.name, info.model_id)}

    def _validate(self, request: GenerationRequest, preset: Preset | None) -> Recipe:
        try:
            if preset is not None:
                model = base = self.preset_model(preset)
            elif request.made_from is not None and request.model in self.models:
                # (check() allowed it: _may_carry)
                # A job made from another runs on its model, a preset's own too (by its id:
                # a member cannot name it, only carry it from a job of theirs).
                model = base = self.models[request.model]
            else:
                model = base = self.model_for(request.model)
        except InvalidRequest:
            assert preset is not None
            raise InvalidRequest(
                "model", f"{preset.name}'s model is not run by this host any more: pick another"
            ) from None
        if request.kind is JobKind.UPSCALE and self.upscaler and model.engine == "diffusers":
            model = self.upscaler
        if (
            model.engine != "diffusers"
            and request.kind in {JobKind.VARIATION, JobKind.IMG2IMG}
            and not _api_takes_images(model)
        ):
            raise InvalidRequest(
                "image", f"{model.name} cannot start from an image: pick another model"
            )
        return validate(request, self.limits, model, base, loras=self.loras, preset=preset)

    def check_preset(self, preset: Preset) -> None:
        """Refuse a preset whose model this host does not run, or whose defaults a request
        could not take (a sampler the model refuses, a size past the caps, a missing LoRA)."""
        if preset.name in self._names():
            raise InvalidRequest(
                "name", f"{preset.name} is the name of a host model: pick another name"
            )
        probe = GenerationRequest(
            "a preset's check",
            user_id=0,
            model=preset.name,
            guild_id=preset.guild_ids[0] if preset.guild_ids else None,
        )
        self.check(probe, Snapshot({preset.name: preset}, {}))

    async def put_preset(self, actor: Actor, preset: Preset) -> Preset:
        """Add or change a preset (host admins). A source that is not a host model's name is
        described here (its configs read, its weights hashed; nothing loaded), and the row
        keeps that description: workers that have the same files announce they can run it."""
        if not actor.host:
            raise NotAllowed("only the host's admins add or change models")
        preset = dataclasses.replace(preset, model=await self._describe_source(preset.source))
        self.check_preset(preset)
        return await self.presets.put(actor, preset)

    async def _describe_source(self, source: str) -> ModelInfo | None:
        """None for a host model's name or id (or a source that is one); else its model."""
        if source in self._names():
            return None
        if self.models_dir is None:
            raise InvalidRequest("source", f"must be one of the host's models, not {source!r}")
        try:
            model = await asyncio.to_thread(describe_model, source, self.models_dir)
        except ModelUnavailable as error:
            hosts = ", ".join(info.name for info in self.host_models.values())
            raise InvalidRequest(
                "source",
                f"could not be described here ({error}); a preset's source is one of the "
                f"host's models ({hosts}), a hub id in this host's cache, or a model folder "
                "or checkpoint file on this host",
            ) from None
        if model.model_id in self.host_models:
            return None
        if model.family == "upscaler":
            raise InvalidRequest("source", f"{model.name} is an upscaler: a preset draws images")
        return model

    def offers(self, job: JobRecord) -> frozenset[JobKind]:
        """What a finished job's buttons may ask for here: each kind whose derived job this
        host would accept (the same request ``derive`` makes), so no button is shown only to
        be refused."""
        offered = set()
        for kind in (JobKind.UPSCALE, JobKind.VARIATION, JobKind.REROLL):
            index = None if kind is JobKind.REROLL else 0
            request = self._derived_request(kind, job, index, job.user_id)
            if request.kind is JobKind.IMG2IMG:  # its start image is read when pressed
                request = dataclasses.replace(request, init_image=b"")
            try:
                self.check(request)
            except InvalidRequest:
                continue
            offered.add(kind)
        if job.kind == JobKind.UPSCALE:  # edits under an upscale, as Midjourney offers them
            try:
                self.check(self._edit_request(job, 0, job.user_id, Edit.zoom(2.0)))
            except InvalidRequest:
                pass
            else:
                offered.add(JobKind.EDIT)
            base = self.models.get(job.model_id, self.model)
            if base.engine == "diffusers" and self.limits.max_count >= MIN_VALUES:
                offered.add(JobKind.COMPARE)  # its image made again, one knob turned
        return frozenset(offered)

    def _edit_request(
        self,
        recipe: JobRecord,
        image_index: int | None,
        user_id: int,
        edit: Edit | None,
        *,
        seed: int | None = None,
    ) -> GenerationRequest:
        """An edit of image ``image_index`` of ``recipe``: a grid of the default count at the
        size the edit makes, on the parent's model and latent grid."""
        if edit is None:
            raise InvalidRequest("edit", "name the edit: zoom, square, pan or region")
        model = self.models.get(recipe.model_id) or self.model  # the model it will run on
        multiple = max(8, model.size_multiple)
        edit = dataclasses.replace(edit, multiple=multiple)
        width, height = output_size(edit, recipe.width, recipe.height, multiple)
        varied = self._derived_request(JobKind.VARIATION, recipe, image_index, user_id, seed=seed)
        return dataclasses.replace(
            varied,
            kind=JobKind.EDIT,
            strength=None,
            width=width,
            height=height,
            count=None,
            edit=edit.to_dict(),
        )

    async def _request_from(
        self,
        kind: JobKind,
        recipe: JobRecord,
        image_index: int | None,
        user_id: int,
        *,
        seed: int | None,
        strength: float | None,
        edit: Edit | None,
        compare: Comparison | None,
    ) -> GenerationRequest:
        """The request ``derive`` makes of ``recipe`` (its remix and settings aside)."""
        if kind is JobKind.EDIT:
            return self._edit_request(recipe, image_index, user_id, edit, seed=seed)
        if kind is JobKind.COMPARE:
            assert image_index is not None
            return await self._compare_request(recipe, image_index, user_id, compare)
        if kind is JobKind.REROLL and recipe.compare:  # the comparison with a new seed
            await self._check_ancestors(recipe)
            return dataclasses.replace(
                self._derived_request(kind, recipe, None, user_id, seed=seed),
                kind=JobKind.COMPARE,
                count=None,
                compare=Comparison.from_dict(recipe.compare).again().to_dict(),
            )
        return self._derived_request(
            kind, recipe, image_index, user_id, seed=seed, strength=strength
        )

    async def _compare_request(
        self, job: JobRecord, image_index: int, user_id: int, compare: Comparison | None
    ) -> GenerationRequest:
        """Image ``image_index`` of ``job`` made again, a cell per value of the knob: the image
        an upscale was made from, at its seed; a cell of a comparison, from its own recipe.
        Only an image made from a prompt alone can be made again this way."""
        if compare is None:
            raise InvalidRequest("compare", "name the knob and its values")
        await self._check_ancestors(job)
        source, index = job, image_index
        while source.kind == JobKind.UPSCALE and source.parent_job_id is not None:
            above = await self.job(source.parent_job_id)
            source, index = above.job, source.parent_image_index or 0
        if source.compare:
            source = cell(source, index)
            seed = source.seed
        elif source.kind in (JobKind.TXT2IMG, JobKind.REROLL) and source.strength is None:
            seed = source.seed + index
        else:
            raise InvalidRequest(
                "compare",
                f"makes an image again from its prompt; image {index + 1} of job {source.id} "
                f"was made from another image ({source.kind}): compare the image it came from",
            )
        base = self._derived_request(JobKind.REROLL, source, None, user_id, seed=seed)
        return dataclasses.replace(
            base,
            kind=JobKind.COMPARE,
            count=None,
            parent_job_id=job.id,
            parent_image_index=image_index,
            compare=compare.to_dict(),
        )

    async def _check_ancestors(self, job: JobRecord) -> None:
        """A comparison makes an image of the jobs above it again, at its seed: only while
        none of them was deleted or is held for the moderators' review."""
        parent_id, looked = job.parent_job_id, 0
        while parent_id is not None and looked < 100:  # a lineage is short; a loop is not
            above = await self.job(parent_id)
            if hidden(above.job, above.images):
                raise JobStateError(
                    f"job {above.job.id}, which job {job.id} comes from, was deleted or is "
                    "held for the moderators' review: its images are not made again"
                )
            parent_id, looked = above.job.parent_job_id, looked + 1

    def _derived_request(
        self,
        kind: JobKind,
        recipe: JobRecord,
        image_index: int | None,
        user_id: int,
        *,
        seed: int | None = None,
        strength: float | None = None,
    ) -> GenerationRequest:
        """The request an upscale, a variation or a reroll of ``recipe`` is (a reroll of an
        img2img job is img2img again: its start image is the caller's to add)."""
        width, height = recipe.width, recipe.height
        model = self.models.get(recipe.model_id)
        reroll = kind is JobKind.REROLL
        count = recipe.count
        steps: int | None = recipe.steps
        guidance: float | None = recipe.guidance
        sampler = recipe.sampler
        loras = choices_of(recipe.loras, exact=False)
        if kind is JobKind.UPSCALE:
            width, height = width * self.limits.upscale_factor, height * self.limits.upscale_factor
            count = 1
            strength = self.limits.upscale_strength if strength is None else strength
            on_diffusers = model is None or model.engine == "diffusers"
            if self.upscaler is not None and on_diffusers:  # its own defaults, not the base's
                steps = guidance = sampler = None
                loras = ()  # the upscaler's own weights: a LoRA of the base does not fit
        elif kind is JobKind.VARIATION:
            strength = self.limits.default_strength if strength is None else strength
            if model is not None and model.sizes:  # an API makes its own sizes only
                width, height = nearest_size(model.sizes, width, height)
        elif recipe.init_image_path is not None:
            kind, strength = JobKind.IMG2IMG, recipe.strength
        if steps is not None and strength is not None:
            # img2img runs int(steps × strength) steps: a few-step parent (a turbo model) at a
            # low strength would run none, so take enough steps for at least one.
            while int(steps * strength) < 1 and steps < self.limits.max_steps:
                steps += 1
        return GenerationRequest(
            prompt=recipe.prompt,
            negative_prompt=recipe.negative_prompt,
            model=self._parent_model(recipe),
            user_id=user_id,
            seed=seed,
            steps=steps,
            guidance=guidance,
            width=width,
            height=height,
            count=count,
            strength=strength,
            kind=kind,
            parent_job_id=recipe.id,
            parent_image_index=None if reroll else image_index,
            sampler=sampler,
            loras=loras,
            preset=recipe.preset,
            guild_id=recipe.guild_id,
            channel_id=recipe.channel_id,
            channel_nsfw=recipe.channel_nsfw,
            channel_public=recipe.channel_public,
            video=reroll and recipe.video,  # the same recipe made again: its steps kept again
        )

    async def submit(
        self, request: GenerationRequest, delivery: DeliveryTarget | None = None
    ) -> Submission:
        """Validate, check the user may generate, and queue the job; nothing is stored on error.

        ``delivery`` (where the result goes) is committed with the job, so whoever delivers
        results finds it after a restart.
        """
        recipe = self.check(request, await self.presets.current())
        # The filter runs before the transaction (only a strike is written inside it), and an
        # uploaded start image is hashed now but stored only once the job is admitted.
        rules = await self.servers.rules(request.guild_id)
        refuse_outside_age_restricted(rules, request)
        blocked = rules.check_prompt(request.filtered_text, request.negative_prompt)
        own = request.remixed
        if blocked is None and recipe.compare:  # each cell's prompt, as the model reads it
            for fields in recipe.compare["cells"]:
                blocked = rules.check_prompt(fields["prompt"], request.negative_prompt)
                if blocked is not None:
                    # A new comparison's words, put in its image's prompt, are the member's
                    # own (a reroll or a reproduce makes another's again); the strike
                    # records the cell's prompt.
                    own = request.parent_image_index is not None and not request.reproduces_job_id
                    request = dataclasses.replace(request, raw_prompt=fields["prompt"])
                    break
        if blocked is not None and request.made_from is not None and not own:
            # Made from another job: the prompt is that job's, not the presser's, so no
            # strike; the server blocked it since. (A remix's text is the presser's own: it
            # is refused, and struck, as any prompt.)
            raise NotAllowed(
                f"job {request.made_from}'s prompt is not allowed in this server any more, "
                "so nothing was made"
            )
        upload = None
        if request.init_image is not None:
            upload = await asyncio.to_thread(self._start_image, request.init_image)
        try:
            return await self._insert(request, recipe, delivery, upload, blocked, rules=rules)
        except IntegrityError:
            # The same interaction raced itself; the unique index let one through: that one.
            if request.interaction_id is None:
                raise
            async with self.db.uow() as uow:
                existing = await uow.jobs.by_interaction(request.interaction_id)
                if existing is None:
                    raise
                return await self._submission(uow, existing)

    async def resume(self, intent: IntentRecord) -> Submission:
        """Make the job a record written before its acknowledgement stands for (its process
        stopped before the job was stored); the same job if it was stored after all."""
        if intent.operation not in OPERATIONS:
            raise InvalidRequest("intent", f"is not a call this service makes: {intent.operation}")
        arguments = decode_arguments(intent.operation, intent.arguments)
        call = getattr(self, intent.operation)
        return await call(**arguments, delivery=decode_delivery(intent.delivery))  # type: ignore[no-any-return]

    def _start_image(self, data: bytes) -> _Upload:
        """Where an uploaded start image goes: under its pixels' hash (the job names it by
        both)."""
        if self.store is None:
            raise InvalidRequest("image", "cannot be used: this host keeps no image store")
        with Image.open(io.BytesIO(data)) as image:
            sha256 = pixel_sha256(image)
        return _Upload(f"uploads/{sha256[:2]}/{sha256}.png", sha256, data)

    async def _keep_upload(self, uow: UnitOfWork, upload: _Upload) -> None:
        """Write an admitted job's start image, holding its key (a deletion of the last other
        job using it waits), and within a bound: the transaction holds its locks meanwhile."""
        assert self.store is not None
        await uow.jobs.lock_upload(upload.key)
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self.store.put, upload.key, upload.data), UPLOAD_SECONDS
            )
        except (TimeoutError, OSError) as error:
            raise InvalidRequest(
                "image", "could not be stored just now, so nothing was queued: attach it again"
            ) from error

    async def _drop_upload(self, upload: _Upload) -> None:
        """The job that was to use it was never made: unless another job uses it, it goes."""
        assert self.store is not None
        try:
            async with self.db.uow() as uow:
                await uow.jobs.lock_upload(upload.key)
                if not await uow.jobs.using_upload(upload.key):
                    await asyncio.to_thread(self.store.delete, upload.key)
                await uow.commit()
        except Exception:  # an orphan file is the least of it; the caller has the error
            logger.warning("could not remove the unused start image %s", upload.key)

    async def _insert(
        self,
        request: GenerationRequest,
        recipe: Recipe,
        delivery: DeliveryTarget | None,
        upload: _Upload | None,
        blocked: Blocked | None,
        *,
        rules: ServerRules,
    ) -> Submission:
        async with self.db.uow() as uow:
            if request.interaction_id is not None:
                existing = await uow.jobs.by_interaction(request.interaction_id)
                if existing is not None:  # a retried interaction: the same job, never a second
                    await uow.intents.delete(request.interaction_id)
                    await uow.commit()
                    return await self._submission(uow, existing)
                # Its record (written before it was acknowledged) goes with the job, or the
                # strike, that this transaction commits.
                await uow.intents.delete(request.interaction_id)
            now = self.clock()
            user = await uow.users.ensure_locked(request.user_id, request.user_name)
            await refuse_if_banned(uow, user, request.guild_id, now)
            if blocked is not None:
                refusal = await strike(
                    uow,
                    self.strikes,
                    user_id=user.id,
                    guild_id=request.guild_id,
                    blocked=blocked,
                    prompt=request.raw_prompt or request.prompt,  # as typed: what matched
                    negative_prompt=request.negative_prompt,
                    now=now,
                )
                await uow.commit()  # the strike stays on record; the job is never made
                raise refusal
            await admit(
                uow,
                self.quotas,
                user,
                guild_id=request.guild_id,
                images=recipe.count,
                button=request.made_from is not None,
                now=now,
                server=rules.quotas,
            )
            if request.guild_id is not None:
                await uow.guilds.ensure(request.guild_id)
            upscaler = recipe.kind is JobKind.UPSCALE and self.upscaler is not None
            job = await uow.queue.enqueue(
                **dataclasses.asdict(recipe),
                init_image_path=upload.key if upload else None,
                init_image_sha256=upload.sha256 if upload else None,
                user_id=request.user_id,
                guild_id=request.guild_id,
                channel_id=request.channel_id,
                channel_nsfw=request.channel_nsfw,
                channel_public=request.channel_public,
                private=rules.private(request.private),
                interaction_id=request.interaction_id,
                reproduces_job_id=request.reproduces_job_id,
                cost=self._cost(recipe, upscaler),
                # A preset's factor is what its jobs are charged in fair share: the user's
                # weight divided by it (the cost stays the model's, which ETAs measure).
                weight=self.weight(user, request.role_ids) / self._preset_factor(recipe),
                attempts=0,
                max_attempts=self.max_attempts,
                cancel_requested=False,
                library_versions={},
                engine_details={},
                created_at=now,
            )
            if delivery is not None:
                await uow.deliveries.add(job_id=job.id, **dataclasses.asdict(delivery))
            if upload is not None:  # admitted: now the file is kept
                await self._keep_upload(uow, upload)
            try:
                await uow.commit()
            except BaseException:
                if upload is not None:
                    await self._drop_upload(upload)
                raise

        # The place and ETA after the commit: the user's row (on SQLite the database) is free.
        return await self._placed(job)

    async def _placed(self, job: JobRecord) -> Submission:
        """The job's place and ETA; the job alone (no place) if the database went away just
        after it was stored: it is queued all the same."""
        try:
            async with self.db.uow() as uow:
                return await self._submission(uow, job)
        except Exception as error:
            if not is_transient(error):
                raise
            logger.warning("job %s is queued; its place could not be read: %s", job.id, error)
            return Submission(job, 0, None)

    def _cost(self, recipe: Recipe, upscaler: bool) -> float:
        if recipe.compare:  # a comparison: each cell at its own steps and sampler
            return sum(
                self._cost(
                    dataclasses.replace(
                        recipe, kind=JobKind.TXT2IMG, count=1, compare=None, **fields
                    ),
                    upscaler,
                )
                for fields in recipe.compare["cells"]
            )
        model = self.models.get(recipe.model_id)
        if model is not None and model.engine != "diffusers":
            from generation.openai_engine import api_job_cost

            return api_job_cost(recipe, self.prices, self.cost_per_dollar)
        return job_cost(recipe, self.cost_factors.get(recipe.model_id, 1.0), all_steps=upscaler)

    def _preset_factor(self, recipe: Recipe) -> float:
        """The preset's fair-share factor as it stands (1 once the preset is gone)."""
        preset = self.presets.snapshot.presets.get(recipe.preset) if recipe.preset else None
        return preset.cost_factor if preset is not None else 1.0

    async def _submission(self, uow: UnitOfWork, job: JobRecord) -> Submission:
        """The job with its place among its model's waiting jobs and its estimated time to
        done: a bounded read of the queue's index, never the whole queue."""
        return (await self._submissions(uow, [job]))[0]

    async def _submissions(self, uow: UnitOfWork, jobs: Sequence[JobRecord]) -> list[Submission]:
        """Several jobs' places (one read per model) and ETAs (one rate per model)."""
        places = await uow.queue.places(jobs)
        etas: dict[str, Callable[[JobRecord, Waiting], float | None]] = {}
        found = []
        for job in jobs:
            waiting = places.get(job.id)
            if waiting is None:
                found.append(Submission(job, 0, None))
                continue
            if job.model_id not in etas:
                etas[job.model_id] = await self._eta_function(uow, job.model_id)
            eta = etas[job.model_id](job, waiting)
            found.append(Submission(job, waiting.position, eta, capped=waiting.capped))
        own = {
            s.job.model_id for s in found if s.position and s.job.model_id not in self.host_models
        }
        if own:  # a preset's own model: is a worker running it?
            served = await uow.workers.serving(self.clock() - SERVED_WITHIN)
            models = self.models
            found = [
                dataclasses.replace(s, unserved=_model_name(models, s.job.model_id))
                if s.position and s.job.model_id in own - served
                else s
                for s in found
            ]
        return found

    async def _eta_function(
        self, uow: UnitOfWork, model_id: str
    ) -> Callable[[JobRecord, Waiting], float | None]:
        """Seconds until a waiting job of ``model_id`` is done: the rest of the model's
        running jobs and the waiting cost ahead of it, shared among its busy workers, then its
        own run, at the seconds per cost unit the workers measured (None until they have)."""
        per_cost = await uow.queue.seconds_per_cost(model_id)
        now = self.clock()
        running = await uow.queue.running(model_id) if per_cost is not None else []
        rest = sum(
            max(0.0, r.cost * (per_cost or 0) - (now - (r.started_at or now)).total_seconds())
            for r in running
        )
        workers = max(1, len(running))

        def eta(job: JobRecord, waiting: Waiting) -> float | None:
            if per_cost is None:
                return None
            return (rest + waiting.cost_ahead * per_cost) / workers + job.cost * per_cost

        return eta

    async def waiting(self, user_id: int | None = None, limit: int = 100) -> list[Submission]:
        """One user's waiting jobs in the order they will run, each with its place and ETA;
        for None, the first ``limit`` of every model's."""
        async with self.db.uow() as uow:
            if user_id is not None:
                jobs = await uow.queue.queued_of(user_id)
            else:
                jobs = await uow.queue.first_waiting(limit)
            return await self._submissions(uow, jobs)

    async def status(self, job_id: int) -> Submission:
        """A job now, with its place in line and ETA while it waits."""
        async with self.db.uow() as uow:
            return await self._submission(uow, await self._get(uow, job_id))

    def preset_of(
        self, name: str | None, snapshot: Snapshot, guild_id: int | None
    ) -> Preset | None:
        """The preset a job on ``name`` runs in ``guild_id`` (its server's default when None),
        if any; None too for one this server may not use (refused later, with the reason)."""
        try:
            return PresetBook.chosen(snapshot, name, guild_id)
        except InvalidRequest:
            return None

    def model_of(self, name: str | None, snapshot: Snapshot, guild_id: int | None) -> ModelInfo:
        """The model a request names (a preset's, a host model); the default when it names
        none, or one that is refused later with the reason."""
        preset = self.preset_of(name, snapshot, guild_id)
        if preset is not None:
            return self.preset_model(preset)
        try:
            return self.model_for(name)
        except InvalidRequest:
            return self.model

    def offered(self, name: str, snapshot: Snapshot, guild_id: int | None) -> bool:
        """Whether a model's name (a preset's or a host model's) may be used in ``guild_id``
        (None: a DM or the command line)."""
        if self.preset_of(name, snapshot, guild_id) is not None:
            return True
        try:
            self.model_for(name)
        except InvalidRequest:
            return False
        return True

    async def preferences(self, user_id: int) -> Preferences:
        """The member's /settings (what still makes sense of them)."""
        async with self.db.uow() as uow:
            user = await uow.users.get(user_id)
        stored = user.preferences if user is not None else None
        return Preferences.from_dict(stored, self.limits.max_steps)

    async def set_preferences(
        self, user_id: int, preferences: Preferences, user_name: str = ""
    ) -> Preferences:
        """Store the member's /settings (all of them; ``Preferences()`` resets them)."""
        async with self.db.uow() as uow:
            await uow.users.ensure(user_id, user_name)
            await uow.users.set_preferences(user_id, preferences.to_dict())
            await uow.commit()
        return preferences

    async def sign_out(self, user_id: int) -> None:
        """They logged out of the web console: every session of theirs issued until now ends
        (in every browser, a copied cookie too)."""
        async with self.db.uow() as uow:
            await uow.users.ensure(user_id)
            await uow.users.sign_out(user_id, self.clock())
            await uow.commit()

    async def signed_out_at(self, user_id: int) -> dt.datetime | None:
        async with self.db.uow() as uow:
            return await uow.users.signed_out_at(user_id)

    async def usage(self, user_id: int) -> Usage:
        """The user's limits (with overrides) and where they stand against them."""
        async with self.db.uow() as uow:
            user = await uow.users.ensure(user_id)
            return await usage(uow, self.quotas, user, self.clock())

    async def set_limits(
        self,
        user_id: int,
        *,
        weight: float | None = None,
        clear_weight: bool = False,
        overrides: Mapping[str, object] | None = None,
        clear: tuple[str, ...] = (),
        actor_id: int | None = None,
        guild_id: int | None = None,
    ) -> UserRecord:
        """Set (or clear) a user's weight override and per-user quota overrides; a moderation
        event records who did it (``actor_id`` None: the host, from the command line)."""
        if weight is not None and not (weight > 0 and math.isfinite(weight)):
            raise InvalidRequest("weight", f"must be a finite number above 0, not {weight:g}")
        checked = {name: check_override(name, value) for name, value in (overrides or {}).items()}
        for name in clear:
            check_override(name, 1)
        async with self.db.uow() as uow:
            user = await uow.users.ensure(user_id)
            merged = {**user.quota_overrides, **checked}
            for name in clear:
                merged.pop(name, None)
            new_weight = None if clear_weight else (user.weight if weight is None else weight)
            updated = await uow.users.set_limits(user_id, weight=new_weight, overrides=merged)
            await uow.events.add(
                kind=EventKind.QUOTA,
                actor_id=actor_id,
                guild_id=guild_id,
                target_user_id=user_id,
                details={"weight": new_weight, "overrides": merged},
                created_at=self.clock(),
            )
            await uow.commit()
        return updated

    async def derive(
        self,
        kind: JobKind,
        parent_job_id: int,
        image_index: int | None,
        user_id: int,
        *,
        seed: int | None = None,
        strength: float | None = None,
        interaction_id: int | None = None,
        user_name: str = "",
        role_ids: tuple[int, ...] = (),
        delivery: DeliveryTarget | None = None,
        channel: tuple[int | None, bool | None, bool | None] | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        private: bool | None = None,
        edit: Edit | None = None,
        again: JobRecord | None = None,
        compare: Comparison | None = None,
    ) -> Submission:
        """A job made from another: upscale, vary or edit (``edit``: Zoom Out, Make Square,
        Pan, Vary (Region)) image ``image_index``, or reroll the recipe.
        ``channel`` (its id, age-restricted, public) is where it was asked, if not the parent's
        channel: a button pressed on a result that went elsewhere (a DM). ``prompt`` and
        ``negative_prompt``: the texts as edited in the remix form (a variation or reroll
        only), checked by the prompt filter like any prompt. ``private``: private mode asked
        for (None: as its parent was). ``again``: the edit job a reroll makes again (its
        settings and texts are carried, not the presser's own). ``compare``: the knob and
        values of a comparison (kind COMPARE) of image ``image_index``."""
        parent = await self.job(parent_job_id)
        if parent.job.status != JobStatus.SUCCEEDED:
            raise JobStateError(
                f"job {parent_job_id} has no images to start from yet ({parent.job.status})"
            )
        recipe = parent.job
        if kind is JobKind.REROLL and recipe.kind == JobKind.EDIT and recipe.edit is not None:
            # An edit made again with a new seed is the same edit of the same image.
            assert recipe.parent_job_id is not None
            source = (await self.job(recipe.parent_job_id)).job
            return await self.derive(
                JobKind.EDIT,
                recipe.parent_job_id,
                recipe.parent_image_index,
                user_id,
                seed=seed,
                interaction_id=interaction_id,
                user_name=user_name,
                role_ids=role_ids,
                delivery=delivery,
                channel=channel,
                # A region's own prompt stays (the remix form's, if it was edited again).
                prompt=prompt if prompt is not None else _unless(recipe.prompt, source.prompt),
                negative_prompt=negative_prompt
                if negative_prompt is not None
                else _unless(recipe.negative_prompt, source.negative_prompt),
                private=recipe.private if private is None else private,
                edit=Edit.from_dict(recipe.edit),
                again=recipe if prompt is None and negative_prompt is None else None,
            )
        if kind is not JobKind.REROLL:
            indices = [image.index for image in parent.images]
            if image_index not in indices:
                raise InvalidRequest("image", f"must be one of {', '.join(map(str, indices))}")
        if recipe.compare and kind not in (JobKind.REROLL, JobKind.COMPARE):
            # A cell of a comparison is its own picture: its own recipe (its prompt too, for a
            # remix), not "seed + i".
            assert image_index is not None
            recipe = dataclasses.replace(cell(recipe, image_index), count=recipe.count)
        request = await self._request_from(
            kind,
            recipe,
            image_index,
            user_id,
            seed=seed,
            strength=strength,
            edit=edit,
            compare=compare,
        )
        if prompt is not None or negative_prompt is not None:
            if kind is JobKind.UPSCALE:
                raise InvalidRequest("prompt", "an upscale keeps its parent's prompt")
            text = recipe.prompt if prompt is None else prompt
            negative = recipe.negative_prompt if negative_prompt is None else negative_prompt
            request = parameters.remix(request, text, negative)
        if again is not None:  # the edit made again: its own settings, its texts not ours
            request = dataclasses.replace(
                request,
                remixed=False,
                steps=again.steps,
                guidance=again.guidance,
                sampler=again.sampler,
            )
        init_image = None
        if request.kind is JobKind.IMG2IMG:
            if recipe.init_image_path is None or self.store is None:
                raise JobStateError(f"job {parent_job_id}'s start image is not kept here")
            init_image = await asyncio.to_thread(self.store.get, recipe.init_image_path)
        channel_id, channel_nsfw, channel_public = channel or (
            recipe.channel_id,
            recipe.channel_nsfw,
            recipe.channel_public,
        )
        return await self.submit(
            dataclasses.replace(
                request,
                init_image=init_image,
                channel_id=channel_id,
                channel_nsfw=channel_nsfw,
                channel_public=channel_public,
                interaction_id=interaction_id,
                user_name=user_name,
                role_ids=role_ids,
                private=recipe.private if private is None else private,
            ),
            delivery,
        )

    async def reproduce(
        self,
        job_id: int,
        user_id: int,
        *,
        interaction_id: int | None = None,
        user_name: str = "",
        role_ids: tuple[int, ...] = (),
        delivery: DeliveryTarget | None = None,
        channel: tuple[int | None, bool | None, bool | None] | None = None,
        private: bool | None = None,
    ) -> Submission:
        """Queue a job that makes ``job_id``'s images again from its recipe, exactly (the same
        kind, seed, batch, settings and start image), through bans, quotas, the button bucket
        and fair share like any job; when it ends, its images are compared with the first
        ones (``JobView.reproduced``). Who may ask is the caller's to decide. ``private``:
        private mode asked for (None: as the job was)."""
        view = await self.job(job_id)
        original = view.job
        if original.status != JobStatus.SUCCEEDED or not view.images:
            raise JobStateError(
                f"job {job_id} has no finished images to make again ({original.status})"
            )
        if original.model_id.startswith(REMOTE_PREFIXES):
            raise JobStateError(
                f"job {job_id} was made by an image API ({original.model_id}), which keeps no "
                "seed: it cannot be made again; its stored images are the record"
            )
        await self._check_reproducible(original)
        init_image = None
        if original.init_image_path is not None and self.store is not None:
            init_image = await asyncio.to_thread(self.store.get, original.init_image_path)
        channel_id, channel_nsfw, channel_public = channel or (
            original.channel_id,
            original.channel_nsfw,
            original.channel_public,
        )
        return await self.submit(
            GenerationRequest(
                prompt=original.prompt,
                negative_prompt=original.negative_prompt,
                model=self._parent_model(original),
                user_id=user_id,
                seed=original.seed,
                steps=original.steps,
                guidance=original.guidance,
                width=original.width,
                height=original.height,
                count=original.count,
                strength=original.strength,
                kind=JobKind(original.kind),
                parent_job_id=original.parent_job_id,
                parent_image_index=original.parent_image_index,
                init_image=init_image,
                guild_id=original.guild_id,
                channel_id=channel_id,
                channel_nsfw=channel_nsfw,
                channel_public=channel_public,
                interaction_id=interaction_id,
                reproduces_job_id=job_id,
                sampler=original.sampler,
                scheduler=original.scheduler,
                scheduler_options=dict(original.scheduler_options),
                vae_tiling=original.vae_tiling,
                loras=choices_of(original.loras, exact=True),
                preset=original.preset,
                user_name=user_name,
                role_ids=role_ids,
                private=original.private if private is None else private,
                edit=original.edit,
                video=original.video,
                compare=original.compare,
            ),
            delivery,
        )

    async def _check_reproducible(self, original: JobRecord) -> None:
        """Refuse a reproduction that could not be the same job: its model is gone, or the
        image it started from was deleted or is held for review."""
        upscaler = self.upscaler is not None and original.model_id == self.upscaler.model_id
        if original.model_id not in self.models and not upscaler:
            raise JobStateError(
                f"job {original.id} was made with {original.model_id}, which this host no "
                "longer offers: it cannot be made again here"
            )
        if original.compare:
            await self._check_ancestors(original)
        if original.parent_job_id is not None and original.parent_image_index is not None:
            parent = await self.job(original.parent_job_id)
            if hidden(parent.job, parent.images):
                raise JobStateError(
                    f"job {original.id} starts from an image of job {parent.job.id}, which was "
                    "deleted or is held for the moderators' review"
                )

    def _parent_model(self, parent: JobRecord) -> str | None:
        """A derived job runs on its parent's model (an upscaler's job: on the default)."""
        return parent.model_id if parent.model_id in self.models else None

    async def cancel(
        self, job_id: int, user_id: int, *, is_admin: bool = False, withdraw: str | None = None
    ) -> JobRecord:
        """Cancel a waiting job now, or stop a running one at its next step. ``withdraw``
        (a reason): nothing is delivered for it either, not even that it was cancelled (its
        messages were removed)."""
        async with self.db.uow() as uow:
            job = await self._get(uow, job_id)
            if job.user_id != user_id and not is_admin:
                raise NotAllowed(f"job {job_id} is not yours to cancel")
            if job.is_terminal:
                raise JobStateError(f"job {job_id} has already ended ({job.status})")
            updated = await uow.queue.request_cancel(job_id, await uow.now())
            if withdraw is not None:
                await uow.deliveries.give_up(job_id, withdraw, tried=False)
            await uow.commit()
        assert updated is not None
        return updated

    async def lineage(self, job_id: int) -> tuple[JobRecord | None, list[JobRecord]]:
        """A job's parent (None for an original) and its children, oldest first."""
        async with self.db.uow() as uow:
            job = await self._get(uow, job_id)
            parent = await uow.jobs.get(job.parent_job_id) if job.parent_job_id else None
            children = await uow.jobs.children(job_id)
        return parent, children

    async def family(self, job_id: int, limit: int = FAMILY_LIMIT) -> list[tuple[int, JobRecord]]:
        """A job's lineage: its ancestors from the first, the job, then every job derived from
        it at any depth, each with its depth (0: the first ancestor), in tree order. At most
        ``limit`` descendants (the nearest first) and as many ancestors; one query a level."""
        async with self.db.uow() as uow:
            job = await self._get(uow, job_id)
            chain = [job]
            while chain[0].parent_job_id is not None and len(chain) <= limit:
                parent = await uow.jobs.get(chain[0].parent_job_id)
                if parent is None:
                    break
                chain.insert(0, parent)
            below: dict[int, list[JobRecord]] = {}
            level, left = [job], limit
            while level and left > 0:
                level = await uow.jobs.children_of([j.id for j in level], limit=left)
                left -= len(level)
                for child in level:
                    below.setdefault(child.parent_job_id or 0, []).append(child)
        ordered = list(enumerate(chain[:-1]))
        stack = [(len(chain) - 1, job)]
        while stack:
            depth, current = stack.pop()
            ordered.append((depth, current))
            stack += [(depth + 1, child) for child in reversed(below.get(current.id, []))]
        return ordered

    async def views(self, job_ids: Sequence[int]) -> dict[int, JobView]:
        """Several jobs with their images, in one transaction (for deciding who sees them)."""
        async with self.db.uow() as uow:
            jobs = await uow.jobs.get_many(job_ids)
            images = await uow.images.for_jobs(list(jobs))
        return {job_id: JobView(job, images[job_id]) for job_id, job in jobs.items()}

    async def set_private(self, job_id: int, user_id: int, private: bool) -> JobRecord:
        """Its owner makes a job private (seen only by them and their server's moderators) or
        not, as their server's private mode allows."""
        async with self.db.uow() as uow:
            job = await self._get(uow, job_id)
            if job.user_id != user_id:
                raise NotAllowed(f"job {job_id} is not yours")
            rules = await self.servers.rules(job.guild_id)
            if rules.private(private) != private:
                mode = "always private" if private is False else "never private"
                raise InvalidRequest("private", f"jobs in this server are {mode}")
            await uow.jobs.update_recipe(job_id, private=private)
            await uow.commit()
            return await self._get(uow, job_id)

    async def job(self, job_id: int) -> JobView:
        async with self.db.uow() as uow:
            job = await self._get(uow, job_id)
            images = await uow.images.for_job(job_id)
            delivery = await uow.deliveries.get(job_id)
            reproduced = None
            original_id = job.reproduces_job_id
            if original_id is not None and job.status == JobStatus.SUCCEEDED:
                original = await uow.jobs.get(original_id)
                if original is not None:
                    stored = await uow.images.for_job(original_id)
                    reproduced = compare(original, stored, job, images)
        return JobView(job, images, delivery, reproduced)

    async def recent(
        self,
        *,
        user_id: int | None = None,
        status: str | None = None,
        limit: int = 20,
        before: int | None = None,
    ) -> list[JobView]:
        """Newest first (``before``: older than that job id, a page by its key)."""
        async with self.db.uow() as uow:
            jobs = await uow.jobs.recent(user_id=user_id, status=status, limit=limit, before=before)
            ids = [job.id for job in jobs]
            images = await uow.images.for_jobs(ids)
            deliveries = await uow.deliveries.for_jobs(ids)
        return [JobView(job, images[job.id], deliveries.get(job.id)) for job in jobs]

    @staticmethod
    async def _get(uow: UnitOfWork, job_id: int) -> JobRecord:
        job = await uow.jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job


def _unless(text: str, same: str) -> str | None:
    """``text``, unless it is ``same`` (None: nothing changed)."""
    return None if text == same else text
