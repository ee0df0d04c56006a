"""The generation service: submit, derive, cancel and look up jobs. Owns its transactions."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError

from generation.errors import (
    InvalidRequest,
    JobNotFound,
    JobStateError,
    NotAllowed,
    UserBanned,
)
from generation.model_info import ModelInfo
from generation.requests import GenerationRequest, Limits, Recipe, validate
from storage.db import Database
from storage.models import JobKind, JobStatus, utcnow
from storage.records import ImageRecord, JobRecord
from storage.unit_of_work import UnitOfWork


@dataclasses.dataclass(frozen=True, slots=True)
class Submission:
    """A job as queued, and its place in line (1 = next)."""

    job: JobRecord
    position: int


@dataclasses.dataclass(frozen=True, slots=True)
class JobView:
    job: JobRecord
    images: list[ImageRecord]


def job_cost(recipe: Recipe) -> float:
    """Cost in megapixel-steps: width × height × steps actually run × images."""
    steps = recipe.steps if recipe.strength is None else max(1, int(recipe.steps * recipe.strength))
    return recipe.width * recipe.height * steps * recipe.count / 1_000_000


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
    ) -> None:
        self.db = db
        self.model = model
        self.upscaler = upscaler
        self.limits = limits
        self.max_attempts = max_attempts
        self.clock = clock

    async def submit(self, request: GenerationRequest) -> Submission:
        """Validate, check the user may generate, and queue the job; nothing is stored on error."""
        model = self.upscaler if request.kind is JobKind.UPSCALE and self.upscaler else self.model
        recipe = validate(request, self.limits, model)
        try:
            return await self._insert(request, recipe)
        except IntegrityError:
            # The same interaction raced itself; the unique index let one through: that one.
            if request.interaction_id is None:
                raise
            async with self.db.uow() as uow:
                existing = await uow.jobs.by_interaction(request.interaction_id)
                if existing is None:
                    raise
                return Submission(existing, await uow.queue.position(existing))

    async def _insert(self, request: GenerationRequest, recipe: Recipe) -> Submission:
        async with self.db.uow() as uow:
            if request.interaction_id is not None:
                existing = await uow.jobs.by_interaction(request.interaction_id)
                if existing is not None:  # a retried interaction: the same job, never a second
                    return Submission(existing, await uow.queue.position(existing))
            user = await uow.users.ensure(request.user_id, request.user_name)
            if user.banned and (user.banned_until is None or user.banned_until > self.clock()):
                raise UserBanned(user.ban_reason, user.banned_until)
            if request.guild_id is not None:
                await uow.guilds.ensure(request.guild_id)
            job = await uow.jobs.add(
                **dataclasses.asdict(recipe),
                user_id=request.user_id,
                guild_id=request.guild_id,
                channel_id=request.channel_id,
                interaction_id=request.interaction_id,
                cost=job_cost(recipe),
                status=JobStatus.QUEUED,
                attempts=0,
                max_attempts=self.max_attempts,
                cancel_requested=False,
                library_versions={},
                created_at=self.clock(),
            )
            position = await uow.queue.position(job)
            await uow.commit()
        return Submission(job, position)

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
    ) -> Submission:
        """A job made from another: upscale or vary image ``image_index``, or reroll the recipe."""
        parent = await self.job(parent_job_id)
        if parent.job.status != JobStatus.SUCCEEDED:
            raise JobStateError(
                f"job {parent_job_id} has no images to start from yet ({parent.job.status})"
            )
        recipe = parent.job
        width, height, count = recipe.width, recipe.height, recipe.count
        if kind is not JobKind.REROLL:
            indices = [image.index for image in parent.images]
            if image_index not in indices:
                raise InvalidRequest("image", f"must be one of {', '.join(map(str, indices))}")
        else:
            image_index = None
        steps: int | None = recipe.steps
        guidance: float | None = recipe.guidance
        if kind is JobKind.UPSCALE:
            factor = self.limits.upscale_factor
            width, height, count = width * factor, height * factor, 1
            strength = self.limits.upscale_strength if strength is None else strength
            if self.upscaler is not None:  # its own defaults, not the base model's
                steps = guidance = None
        elif kind is JobKind.VARIATION:
            strength = self.limits.default_strength if strength is None else strength
        if steps is not None and strength is not None:
            # img2img runs int(steps × strength) steps: a few-step parent (a turbo model) at a
            # low strength would run none, so take enough steps for at least one.
            while int(steps * strength) < 1 and steps < self.limits.max_steps:
                steps += 1
        return await self.submit(
            GenerationRequest(
                prompt=recipe.prompt,
                negative_prompt=recipe.negative_prompt,
                user_id=user_id,
                seed=seed,
                steps=steps,
                guidance=guidance,
                width=width,
                height=height,
                count=count,
                strength=strength,
                kind=kind,
                parent_job_id=parent_job_id,
                parent_image_index=image_index,
                guild_id=recipe.guild_id,
                channel_id=recipe.channel_id,
                interaction_id=interaction_id,
            )
        )

    async def cancel(self, job_id: int, user_id: int, *, is_admin: bool = False) -> JobRecord:
        """Cancel a waiting job now, or stop a running one at its next step."""
        async with self.db.uow() as uow:
            job = await self._get(uow, job_id)
            if job.user_id != user_id and not is_admin:
                raise NotAllowed(f"job {job_id} is not yours to cancel")
            if job.is_terminal:
                raise JobStateError(f"job {job_id} has already ended ({job.status})")
            updated = await uow.queue.request_cancel(job_id, self.clock())
            await uow.commit()
        assert updated is not None
        return updated

    async def job(self, job_id: int) -> JobView:
        async with self.db.uow() as uow:
            job = await self._get(uow, job_id)
            images = await uow.images.for_job(job_id)
        return JobView(job, images)

    async def recent(
        self, *, user_id: int | None = None, status: str | None = None, limit: int = 20
    ) -> list[JobView]:
        async with self.db.uow() as uow:
            jobs = await uow.jobs.recent(user_id=user_id, status=status, limit=limit)
            images = await uow.images.for_jobs([job.id for job in jobs])
        return [JobView(job, images[job.id]) for job in jobs]

    @staticmethod
    async def _get(uow: UnitOfWork, job_id: int) -> JobRecord:
        job = await uow.jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job
