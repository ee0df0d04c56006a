"""Quotas, weights, cost and ETAs at submit: each limit refuses with its message, stores nothing."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from generation import wording
from generation.errors import InvalidRequest
from generation.model_info import ModelInfo
from generation.quotas import QuotaExceeded, Quotas
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from storage.db import Database
from storage.models import Job, JobKind, JobStatus, User

NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOON

    def __call__(self) -> dt.datetime:
        return self.now


def make_service(
    db: Database, model: ModelInfo, clock: Clock, **quotas: float
) -> GenerationService:
    return GenerationService(
        db,
        model,
        Limits(max_steps=50),
        clock=clock,
        quotas=Quotas(**quotas),  # type: ignore[arg-type]
        role_weights={10: 3.0, 11: 2.0},
        cost_factors={model.model_id: 2.0},
    )


async def rows(db: Database, model: type) -> int:
    async with db.uow() as uow:
        return int(await uow.session.scalar(select(func.count()).select_from(model)) or 0)


def ask(user: int = 1, **options: object) -> GenerationRequest:
    return GenerationRequest("a red circle", user_id=user, steps=4, **options)  # type: ignore[arg-type]


async def test_queued_jobs_per_user_and_per_guild(db: Database, model: ModelInfo) -> None:
    service = make_service(db, model, Clock(), queued_per_user=2, queued_per_guild=3)
    await service.submit(ask(1, guild_id=5))
    await service.submit(ask(1, guild_id=5))
    with pytest.raises(QuotaExceeded, match=r"you already have 2 jobs waiting or running") as hit:
        await service.submit(ask(1, guild_id=5))
    assert (hit.value.quota, hit.value.resets_at) == ("queued_per_user", None)
    await service.submit(ask(2, guild_id=5))
    with pytest.raises(QuotaExceeded, match="this server already has 3 jobs") as hit:
        await service.submit(ask(3, guild_id=5))
    assert hit.value.quota == "queued_per_guild"
    assert await rows(db, Job) == 3
    assert await rows(db, User) == 2  # the refused newcomer left no row behind
    await service.submit(ask(3, guild_id=6))  # another server is not affected


async def test_images_per_day_reset_at_utc_midnight(db: Database, model: ModelInfo) -> None:
    clock = Clock()
    service = make_service(db, model, clock, images_per_user_day=8, images_per_guild_day=100)
    first = await service.submit(ask(1, count=4))
    await service.submit(ask(1, count=4))
    with pytest.raises(QuotaExceeded, match=r"12 images today, over your daily limit of 8") as hit:
        await service.submit(ask(1, count=4))
    assert "resets at 00:00 UTC (in 12 h 0 min)" in str(hit.value)
    assert hit.value.resets_at == dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    # A cancelled job gives its images back.
    await service.cancel(first.job.id, user_id=1)
    await service.submit(ask(1, count=4))
    clock.now = dt.datetime(2026, 11, 26, 0, 0, 1, tzinfo=dt.UTC)
    await service.submit(ask(1, count=4))  # a new day
    assert await rows(db, Job) == 4


async def test_images_per_guild_day(db: Database, model: ModelInfo) -> None:
    service = make_service(db, model, Clock(), images_per_guild_day=5)
    await service.submit(ask(1, guild_id=5, count=4))
    with pytest.raises(QuotaExceeded, match="this server has used its 5 images for today") as hit:
        await service.submit(ask(2, guild_id=5, count=2))
    assert hit.value.quota == "images_per_guild_day"


async def test_button_presses_drain_a_token_bucket(db: Database, model: ModelInfo) -> None:
    clock = Clock()
    service = make_service(db, model, clock, bucket_size=2, bucket_refill_seconds=10)
    parent = await service.submit(ask(1))
    async with db.uow() as uow:
        await uow.jobs.update_recipe(parent.job.id, status=JobStatus.SUCCEEDED)
        await uow.commit()
    await service.derive(JobKind.REROLL, parent.job.id, None, user_id=1)
    await service.derive(JobKind.REROLL, parent.job.id, None, user_id=1)
    with pytest.raises(QuotaExceeded, match=r"next one works in 10 s") as hit:
        await service.derive(JobKind.REROLL, parent.job.id, None, user_id=1)
    assert hit.value.resets_at == NOON + dt.timedelta(seconds=10)
    await service.submit(ask(1))  # typing /imagine is not a button press
    clock.now += dt.timedelta(seconds=10)
    await service.derive(JobKind.REROLL, parent.job.id, None, user_id=1)
    assert (await service.usage(1)).bucket_tokens == pytest.approx(0.0)


async def test_per_user_overrides_apply_and_clear(db: Database, model: ModelInfo) -> None:
    service = make_service(db, model, Clock(), queued_per_user=5)
    await service.set_limits(1, overrides={"queued_per_user": 1})
    await service.submit(ask(1))
    with pytest.raises(QuotaExceeded, match=r"the most allowed \(1\)"):
        await service.submit(ask(1))
    await service.submit(ask(2))
    await service.submit(ask(2))  # others keep the default
    await service.set_limits(1, clear=("queued_per_user",))
    await service.submit(ask(1))
    assert (await service.usage(1)).limits.queued_per_user == 5
    with pytest.raises(InvalidRequest, match="speed: is not a per-user quota"):
        await service.set_limits(1, overrides={"speed": 3})
    with pytest.raises(InvalidRequest, match="bucket_size: must be a whole number"):
        await service.set_limits(1, overrides={"bucket_size": "lots"})  # type: ignore[dict-item]


async def test_weight_comes_from_an_override_else_the_best_role(
    db: Database, model: ModelInfo
) -> None:
    service = make_service(db, model, Clock())
    assert (await service.submit(ask(1))).job.weight == 1.0
    assert (await service.submit(ask(1, role_ids=(11, 10, 99)))).job.weight == 3.0
    await service.set_limits(1, weight=0.5)
    assert (await service.submit(ask(1, role_ids=(10,)))).job.weight == 0.5
    await service.set_limits(1, clear_weight=True)
    assert (await service.submit(ask(1, role_ids=(11,)))).job.weight == 2.0
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidRequest, match="weight: must be a finite number above 0"):
            await service.set_limits(1, weight=bad)


async def test_cost_uses_the_model_factor_and_etas_use_measured_seconds(
    db: Database, model: ModelInfo
) -> None:
    clock = Clock()
    service = make_service(db, model, clock)
    first = await service.submit(ask(1, count=1))
    assert first.job.cost == pytest.approx(64 * 64 * 4 * 1 * 2.0 / 1e6)
    assert (first.position, first.eta_seconds) == (1, None)  # nothing measured yet
    async with db.uow() as uow:
        claimed = await uow.queue.claim("w", 60, clock.now)
        assert claimed is not None
        job, lease = claimed
        await uow.queue.finish(lease, JobStatus.SUCCEEDED, clock.now, gpu_seconds=job.cost * 1000)
        await uow.commit()
    # 1000 s per cost unit measured; user 1's next job has run for 20 s when more arrive.
    running = await service.submit(ask(1, count=1))
    async with db.uow() as uow:
        assert await uow.queue.claim("w", 60, clock.now) is not None
        await uow.commit()
    clock.now += dt.timedelta(seconds=20)
    waiting = await service.submit(ask(1, count=2))
    light = await service.submit(ask(2, count=1))
    unit = running.job.cost * 1000  # seconds for a one-image job
    rest = unit - 20
    # User 2 joins at user 1's level: behind user 1's older waiting job, ahead of its next.
    status = await service.status(waiting.job.id)
    assert (status.position, status.eta_seconds) == (1, pytest.approx(rest + 2 * unit))
    assert (light.position, light.eta_seconds) == (2, pytest.approx(rest + 2 * unit + unit))
    later = await service.submit(ask(1, count=1))
    assert later.position == 3


def test_a_place_past_the_counted_ones_says_so() -> None:
    assert wording.place_text(1001, 7300.0, capped=True) == "1,000+ in line, over 2 h 2 min"
    assert wording.place_text(2, 40.0) == "2nd in line, about 40 s"
