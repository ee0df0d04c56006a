"""The service: submit, refuse, derive and cancel, with nothing stored on a refusal."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, select

from generation.errors import InvalidRequest, JobNotFound, JobStateError, NotAllowed, UserBanned
from generation.requests import GenerationRequest
from generation.service import GenerationService
from storage.db import Database
from storage.models import Job, JobKind, User, utcnow


async def count_rows(db: Database, model: type) -> int:
    async with db.uow() as uow:
        return int(await uow.session.scalar(select(func.count()).select_from(model)) or 0)


async def test_submit_queues_a_complete_recipe_with_its_position(
    service: GenerationService, db: Database
) -> None:
    first = await service.submit(
        GenerationRequest(
            "a red circle", user_id=1, seed=7, guild_id=9, channel_id=10, user_name="alice"
        )
    )
    second = await service.submit(GenerationRequest("a blue square", user_id=2))
    assert (first.position, second.position) == (1, 2)
    job = first.job
    assert (job.status, job.seed, job.width, job.height, job.count) == ("queued", 7, 64, 64, 4)
    assert job.model_id == "embedded-random" and len(job.model_revision) == 12
    assert job.cost == pytest.approx(64 * 64 * 10 * 4 / 1e6)
    async with db.uow() as uow:
        user = await uow.users.get(1)
    assert user is not None and user.name == "alice"


async def test_an_invalid_request_stores_nothing(service: GenerationService, db: Database) -> None:
    with pytest.raises(InvalidRequest, match="steps: must be from 1 to 50, not 500"):
        await service.submit(GenerationRequest("a red circle", user_id=1, steps=500))
    assert await count_rows(db, Job) == 0
    assert await count_rows(db, User) == 0


async def test_a_banned_user_is_refused_with_reason_and_end(
    service: GenerationService, db: Database
) -> None:
    until = utcnow() + dt.timedelta(days=1)
    async with db.uow() as uow:
        await uow.users.set_ban(1, banned=True, reason="spam", until=until)
        await uow.commit()
    with pytest.raises(UserBanned, match=r"until .* UTC: spam"):
        await service.submit(GenerationRequest("a red circle", user_id=1))
    assert await count_rows(db, Job) == 0


async def test_an_expired_ban_no_longer_applies(service: GenerationService, db: Database) -> None:
    async with db.uow() as uow:
        await uow.users.set_ban(
            1, banned=True, reason="spam", until=utcnow() - dt.timedelta(hours=1)
        )
        await uow.commit()
    submission = await service.submit(GenerationRequest("a red circle", user_id=1))
    assert submission.job.status == "queued"


async def test_a_retried_interaction_never_makes_a_second_job(
    service: GenerationService, db: Database
) -> None:
    first = await service.submit(GenerationRequest("a red circle", user_id=1, interaction_id=77))
    again = await service.submit(GenerationRequest("a red circle", user_id=1, interaction_id=77))
    assert again.job.id == first.job.id
    assert await count_rows(db, Job) == 1


async def test_only_the_owner_or_an_admin_may_cancel(service: GenerationService) -> None:
    job = (await service.submit(GenerationRequest("a red circle", user_id=1))).job
    with pytest.raises(NotAllowed):
        await service.cancel(job.id, user_id=2)
    cancelled = await service.cancel(job.id, user_id=2, is_admin=True)
    assert cancelled.status == "cancelled"
    with pytest.raises(JobStateError, match=r"job .* has already ended"):
        await service.cancel(job.id, user_id=1)
    with pytest.raises(JobNotFound):
        await service.cancel(999, user_id=1)


async def test_derive_refuses_a_job_without_images(service: GenerationService) -> None:
    job = (await service.submit(GenerationRequest("a red circle", user_id=1))).job
    with pytest.raises(JobStateError, match="no images to start from"):
        await service.derive(JobKind.UPSCALE, job.id, 0, user_id=1)


async def test_a_new_users_simultaneous_first_requests_both_queue(
    service: GenerationService, db: Database
) -> None:
    submissions = await asyncio.gather(
        *(service.submit(GenerationRequest(f"prompt {i}", user_id=5, guild_id=6)) for i in range(4))
    )
    assert len({submission.job.id for submission in submissions}) == 4
    assert await count_rows(db, User) == 1


async def test_a_retried_interaction_racing_itself_still_makes_one_job(
    service: GenerationService, db: Database
) -> None:
    request = GenerationRequest("a red circle", user_id=1, interaction_id=88)
    submissions = await asyncio.gather(*(service.submit(request) for _ in range(4)))
    assert len({submission.job.id for submission in submissions}) == 1
    assert await count_rows(db, Job) == 1


async def test_reproduce_queues_the_recipe_exactly_through_the_bucket_and_bans(
    service: GenerationService, db: Database
) -> None:
    from sqlalchemy import update

    from generation.quotas import QuotaExceeded, Quotas
    from storage.models import Image, JobStatus

    original = (await service.submit(GenerationRequest("a red circle", user_id=1, seed=5))).job
    with pytest.raises(JobStateError, match="no finished images to make again"):
        await service.reproduce(original.id, 1)
    async with db.uow() as uow:
        await uow.session.execute(
            update(Job).where(Job.id == original.id).values(status=JobStatus.SUCCEEDED)
        )
        uow.session.add(
            Image(job_id=original.id, index=0, seed=5, sha256="0" * 64, path="x", width=64,
                  height=64, flags={}, created_at=utcnow())
        )  # fmt: skip
        await uow.commit()
    strict = GenerationService(
        db, service.model, service.limits, quotas=Quotas(bucket_size=1, bucket_refill_seconds=3600)
    )
    again = (await strict.reproduce(original.id, 2, user_name="moderator")).job
    recipe = ("prompt", "seed", "steps", "guidance", "width", "height", "count", "kind", "cost")
    assert [getattr(again, f) for f in recipe] == [getattr(original, f) for f in recipe]
    assert (again.reproduces_job_id, again.user_id, again.status) == (original.id, 2, "queued")
    with pytest.raises(QuotaExceeded, match="too many button presses"):
        await strict.reproduce(original.id, 2)  # the bucket, as for every job made from another
    async with db.uow() as uow:
        await uow.users.set_ban(3, banned=True, reason="spam", until=None)
        await uow.commit()
    with pytest.raises(UserBanned):
        await strict.reproduce(original.id, 3)
