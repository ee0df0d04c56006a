"""Strikes and bans, deletions, review of flagged images: each leaves a moderation event."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import threading
from typing import Any

import pytest
from PIL import Image

from generation.errors import InvalidRequest, NotAllowed, PromptBlocked, UserBanned
from generation.model_info import ModelInfo
from generation.moderation import Moderation, parse_duration
from generation.prompt_filter import PromptFilter
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.strikes import StrikePolicy
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import JobKind, JobStatus, utcnow
from storage.records import NewImage
from tests.generation.test_quotas import NOON, Clock, rows


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def strict(db: Database, model: ModelInfo, clock: Clock) -> GenerationService:
    return GenerationService(
        db,
        model,
        Limits(),
        clock=clock,
        prompt_filter=PromptFilter(["gore"]),
        strikes=StrikePolicy(
            strikes_to_ban=3, window=dt.timedelta(hours=1), ban_for=dt.timedelta(hours=2)
        ),
    )


async def _events(db: Database, user_id: int) -> list[tuple[str, int | None]]:
    async with db.uow() as uow:
        events = await uow.events.recent(target_user_id=user_id)
    return [(e.kind, e.actor_id) for e in reversed(events)]


async def test_strikes_lead_to_an_automatic_ban_that_expires(
    strict: GenerationService, db: Database, clock: Clock
) -> None:
    from storage.models import Job

    for strike in (1, 2):
        with pytest.raises(PromptBlocked) as refused:
            await strict.submit(GenerationRequest("so much g0re", user_id=5))
        assert refused.value.strikes == strike and refused.value.banned_until is None
        assert "gore" not in str(refused.value).lower(), "the term is never repeated"
    clock.now += dt.timedelta(minutes=10)
    with pytest.raises(PromptBlocked) as refused:
        await strict.submit(GenerationRequest("a red circle", negative_prompt="gore", user_id=5))
    assert refused.value.banned_until == clock.now + dt.timedelta(hours=2)
    assert "negative prompt" in str(refused.value) and "banned" in str(refused.value)

    with pytest.raises(UserBanned, match="automatic: 3 blocked prompts"):
        await strict.submit(GenerationRequest("a red circle", user_id=5))
    assert await rows(db, Job) == 0
    assert await _events(db, 5) == [("prompt_blocked", None)] * 3 + [("ban", None)]

    clock.now += dt.timedelta(hours=2, seconds=1)
    submission = await strict.submit(GenerationRequest("a red circle", user_id=5))
    assert submission.job.status == JobStatus.QUEUED


async def test_strikes_outside_the_window_do_not_count(
    strict: GenerationService, clock: Clock
) -> None:
    for _ in range(2):
        with pytest.raises(PromptBlocked):
            await strict.submit(GenerationRequest("gore", user_id=6))
    clock.now += dt.timedelta(hours=1, seconds=1)
    with pytest.raises(PromptBlocked) as refused:
        await strict.submit(GenerationRequest("gore", user_id=6))
    assert (refused.value.strikes, refused.value.banned_until) == (1, None)


async def test_a_moderators_strike_counts_with_blocked_prompts_in_its_server(
    strict: GenerationService, db: Database, store: ImageStore, clock: Clock
) -> None:
    """Two blocked prompts and a moderator's strike in the same server ban at the limit of 3,
    there only; a strike in another server counts there."""
    async with db.uow() as uow:
        for guild in (10, 11):
            await uow.guilds.ensure(guild)
        await uow.commit()
    moderation = Moderation(db, store, clock, strikes=strict.strikes)
    for _ in range(2):
        with pytest.raises(PromptBlocked):
            await strict.submit(GenerationRequest("gore", user_id=12, guild_id=10))
    assert await moderation.strike(99, 12, reason="spam", guild_id=11) == (1, None)
    strikes, until = await moderation.strike(99, 12, reason="evading", guild_id=10, job_id=None)
    assert (strikes, until) == (3, clock.now + dt.timedelta(hours=2))
    with pytest.raises(UserBanned, match="automatic: 3"):
        await strict.submit(GenerationRequest("a red circle", user_id=12, guild_id=10))
    await strict.submit(GenerationRequest("a red circle", user_id=12, guild_id=11))
    assert await _events(db, 12) == [
        ("prompt_blocked", None),
        ("prompt_blocked", None),
        ("strike", 99),
        ("strike", 99),
        ("ban", None),
    ]


async def test_one_strike_a_job_and_a_strike_never_shortens_a_ban(
    strict: GenerationService, db: Database, store: ImageStore, clock: Clock
) -> None:
    async with db.uow() as uow:
        await uow.guilds.ensure(10)
        await uow.commit()
    moderation = Moderation(db, store, clock, strikes=strict.strikes)
    job = await _finished_job(strict, db, flagged=True)
    assert await moderation.strike(99, 8, reason="a", guild_id=10, job_id=job) == (1, None)
    with pytest.raises(InvalidRequest, match="already"):
        await moderation.strike(99, 8, reason="twice", guild_id=10, job_id=job)
    await moderation.ban(99, 8, reason="for good", guild_id=10, in_server=True)
    for _ in range(2):
        strikes, until = await moderation.strike(99, 8, reason="more", guild_id=10)
    assert (strikes, until) == (3, None), "the ban for good holds"
    async with db.uow() as uow:
        ban = await uow.users.guild_ban(10, 8)
    assert ban is not None and ban.until is None and ban.reason == "for good"


async def test_ban_unban_and_quota_by_a_moderator_are_on_record(
    db: Database, store: ImageStore, strict: GenerationService, clock: Clock
) -> None:
    moderation = Moderation(db, store, clock)
    banned = await moderation.ban(99, 7, reason="spam", duration=parse_duration("3d"))
    assert banned.banned_until == NOON + dt.timedelta(days=3)
    with pytest.raises(UserBanned, match="spam"):
        await strict.submit(GenerationRequest("a red circle", user_id=7))
    await moderation.unban(99, 7, reason="appeal")
    await strict.submit(GenerationRequest("a red circle", user_id=7))
    await strict.set_limits(7, overrides={"queued_per_user": 2}, actor_id=99)
    assert await _events(db, 7) == [("ban", 99), ("unban", 99), ("quota", 99)]
    with pytest.raises(InvalidRequest, match="duration"):
        parse_duration("soon")
    with pytest.raises(InvalidRequest, match="at most 520w"):
        parse_duration("1000000w", option="since")  # a date before 1970 (or an overflow)
    assert parse_duration("520w") == dt.timedelta(weeks=520)


async def _finished_job(service: GenerationService, db: Database, flagged: bool) -> int:
    job = (await service.submit(GenerationRequest("a red circle", user_id=8))).job
    async with db.uow() as uow:
        claimed = await uow.queue.claim("w", 60, utcnow())
        assert claimed is not None
        await uow.queue.finish(claimed[1], JobStatus.SUCCEEDED, utcnow(), error=None)
        await uow.images.add_many(
            job.id,
            [
                NewImage(i, i, "0" * 64, f"images/{job.id}/1/{i}.png", 64, 64,
                         {"BUTTOCKS_EXPOSED": 0.9} if flagged else {}, flagged)
                for i in range(2)
            ],
        )  # fmt: skip
        await uow.commit()
    return job.id


async def test_delete_keeps_the_record_and_only_moderators_remove_files(
    db: Database, store: ImageStore, strict: GenerationService
) -> None:
    moderation = Moderation(db, store)
    own = await _finished_job(strict, db, flagged=False)
    other = await _finished_job(strict, db, flagged=True)
    for job_id in (own, other):
        store.put(f"images/{job_id}/1/0.png", b"png")

    with pytest.raises(NotAllowed):
        await moderation.delete_job(9, own, is_admin=False)
    await moderation.delete_job(8, own, is_admin=False)  # the requester: files stay
    assert store.exists(f"images/{own}/1/0.png")
    deleted = await moderation.delete_job(99, other, is_admin=True, reason="rules")
    assert deleted.status == JobStatus.DELETED
    assert not store.exists(f"images/{other}/1/0.png")
    report = await moderation.report(other)
    assert [(e.kind, e.actor_id, e.reason) for e in report.events] == [("delete", 99, "rules")]
    assert {image.review for image in report.view.images} == {"deleted"}


async def test_flagged_images_wait_for_review_and_logs_filter_and_page(
    db: Database, store: ImageStore, strict: GenerationService
) -> None:
    moderation = Moderation(db, store)
    clean = await _finished_job(strict, db, flagged=False)
    flagged = await _finished_job(strict, db, flagged=True)
    queue = await moderation.flagged()
    assert [(f.job.id, f.image.index) for f in queue] == [(flagged, 0), (flagged, 1)]
    await moderation.approve(99, queue[0].image.id)
    assert [f.image.index for f in await moderation.flagged()] == [1]
    with pytest.raises(InvalidRequest):
        await moderation.approve(99, 12345)

    only_flagged = await moderation.logs(flagged=True)
    assert [v.job.id for v in only_flagged.jobs] == [flagged]
    for _ in range(3):
        await strict.submit(GenerationRequest("a blue square", user_id=10))
    first = await moderation.logs(per_page=2)
    second = await moderation.logs(per_page=2, page=1, before=first.jobs[-1].job.id)
    third = await moderation.logs(per_page=2, page=2, before=second.jobs[-1].job.id)
    assert first.has_next and second.has_next and not third.has_next
    ids = [v.job.id for page in (first, second, third) for v in page.jobs]
    assert ids == sorted(ids, reverse=True) and len(ids) == 5 and clean in ids
    back = await moderation.logs(per_page=2, page=1, after=third.jobs[0].job.id)
    assert [v.job.id for v in back.jobs] == [v.job.id for v in second.jobs]
    assert back.has_previous and back.has_next and not first.has_previous
    top = await moderation.logs(per_page=2, page=0, after=second.jobs[0].job.id)
    assert [v.job.id for v in top.jobs] == [v.job.id for v in first.jobs]
    assert not top.has_previous
    assert [v.job.user_id for v in (await moderation.logs(user_id=10)).jobs] == [10] * 3


class TransactionWatch(PromptFilter):
    """The prompt filter, noting whether a database connection was held while it ran."""

    def __init__(self, db: Database) -> None:
        super().__init__(["gore"])
        self.db = db
        self.held: list[int] = []

    def check(self, prompt: str, negative_prompt: str = "", guild_id: int | None = None):  # type: ignore[no-untyped-def]
        self.held.append(self.db.engine.pool.checkedout())  # type: ignore[attr-defined]
        return super().check(prompt, negative_prompt, guild_id)


async def test_the_filter_runs_outside_the_transaction_and_only_the_strike_is_written(
    db: Database, model: ModelInfo
) -> None:
    watch = TransactionWatch(db)
    service = GenerationService(db, model, Limits(), prompt_filter=watch)
    with pytest.raises(PromptBlocked):
        await service.submit(GenerationRequest("gore everywhere", user_id=7))
    await service.submit(GenerationRequest("a red circle", user_id=7))
    assert watch.held == [0, 0], "no connection (so no lock, no transaction) while it ran"
    assert await _events(db, 7) == [("prompt_blocked", None)]


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_an_upload_is_kept_only_once_admitted_and_goes_with_the_last_job_using_it(
    db: Database, model: ModelInfo, store: ImageStore, strict: GenerationService
) -> None:
    service = GenerationService(
        db, model, Limits(), store=store, prompt_filter=PromptFilter(["gore"])
    )
    moderation = Moderation(db, store)

    def img2img(user: int, prompt: str = "a yellow square") -> GenerationRequest:
        return GenerationRequest(
            prompt, user_id=user, kind=JobKind.IMG2IMG, init_image=_png("yellow"), strength=0.5
        )

    await moderation.ban(99, 5, reason="spam")
    with pytest.raises(UserBanned):
        await service.submit(img2img(5))
    with pytest.raises(PromptBlocked):
        await service.submit(img2img(6, "gore"))
    assert not list((store.root / "uploads").rglob("*.png")), "nothing kept for a refusal"

    first = (await service.submit(img2img(7))).job
    second = (await service.submit(img2img(8))).job  # the same picture, another job
    assert first.init_image_path == second.init_image_path
    path = first.init_image_path
    assert path is not None and store.exists(path)
    for job in (first, second):
        async with db.uow() as uow:
            await uow.queue.request_cancel(job.id, utcnow())
            await uow.commit()
    await moderation.delete_job(99, first.id, is_admin=True)
    assert store.exists(path), "another job still starts from it"
    await moderation.delete_job(99, second.id, is_admin=True)
    assert not store.exists(path), "gone with the last job that used it"


class PausedStore(ImageStore):
    """Writes wait for ``go`` (a submit caught between writing its image and committing)."""

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.go = threading.Event()
        self.writing = threading.Event()

    def put(self, key: str, data: bytes) -> str:
        if key.startswith("uploads/") and self.writing.is_set():
            self.go.wait(30)
        return super().put(key, data)


async def test_deleting_the_last_job_of_an_upload_waits_for_a_submit_of_the_same_picture(
    db: Database, model: ModelInfo, tmp_path: Any
) -> None:
    """The submit holds the picture's key from its write to its commit; the deletion counts the
    jobs using it only then, and keeps the file (it once removed it under the new job)."""
    store = PausedStore(tmp_path / "store")
    service = GenerationService(db, model, Limits(), store=store)
    moderation = Moderation(db, store)
    request = GenerationRequest(
        "a yellow square", user_id=7, kind=JobKind.IMG2IMG, init_image=_png("yellow"), strength=0.5
    )
    first = (await service.submit(request)).job
    async with db.uow() as uow:
        await uow.queue.request_cancel(first.id, utcnow())
        await uow.commit()
    store.writing.set()
    second = asyncio.create_task(service.submit(dataclasses.replace(request, user_id=8)))
    await asyncio.sleep(0.5)  # the second submit is writing the picture, in its transaction
    deleting = asyncio.create_task(moderation.delete_job(99, first.id, is_admin=True))
    await asyncio.sleep(0.5)
    assert not deleting.done(), "the deletion waits for the key"
    store.go.set()
    await asyncio.wait_for(second, 30)
    await asyncio.wait_for(deleting, 30)
    assert first.init_image_path is not None and store.exists(first.init_image_path)


async def test_strikes_and_a_moderators_ban_in_a_server_hold_in_that_server_only(
    db: Database, store: ImageStore, strict: GenerationService, clock: Clock
) -> None:
    one, two = 101, 202
    for _ in range(2):
        with pytest.raises(PromptBlocked):
            await strict.submit(GenerationRequest("gore", user_id=8, guild_id=one))
    with pytest.raises(PromptBlocked) as refused:
        await strict.submit(GenerationRequest("gore", user_id=8, guild_id=two))
    assert refused.value.strikes == 1, "strikes count in the server they were made in"
    with pytest.raises(PromptBlocked) as refused:
        await strict.submit(GenerationRequest("gore", user_id=8, guild_id=one))
    assert refused.value.banned_until is not None
    with pytest.raises(UserBanned, match="in this server"):
        await strict.submit(GenerationRequest("a red circle", user_id=8, guild_id=one))
    elsewhere = await strict.submit(GenerationRequest("a red circle", user_id=8, guild_id=two))
    assert elsewhere.job.status == JobStatus.QUEUED, "another server is not touched"

    moderation = Moderation(db, store, clock)
    await moderation.ban(55, 9, reason="spam", guild_id=two, in_server=True)
    with pytest.raises(UserBanned, match=r"in this server .* spam"):
        await strict.submit(GenerationRequest("a red circle", user_id=9, guild_id=two))
    await strict.submit(GenerationRequest("a red circle", user_id=9, guild_id=one))
    assert not (await strict.usage(9)).user.banned, "not a host-wide ban"
    await moderation.unban(55, 9, guild_id=two, in_server=True)
    await strict.submit(GenerationRequest("a blue circle", user_id=9, guild_id=two))
    async with db.uow() as uow:
        events = await uow.events.recent(target_user_id=9)
    assert [(e.kind, e.details.get("scope")) for e in reversed(events)] == [
        ("ban", "server"),
        ("unban", "server"),
    ]
    # Strikes outside any server count only there: two in server one and one in a DM are
    # not three.
    with pytest.raises(PromptBlocked) as refused:
        await strict.submit(GenerationRequest("gore", user_id=8))
    assert refused.value.strikes == 1 and refused.value.banned_until is None
    # A host admin's unban lifts every ban, the servers' too.
    await moderation.unban(None, 8)
    await strict.submit(GenerationRequest("a green circle", user_id=8, guild_id=one))
    await moderation.ban(55, 9, reason="spam", guild_id=two, in_server=True)
    await moderation.ban(56, 9, reason="spam again", guild_id=two, in_server=True)
    with pytest.raises(UserBanned, match="spam again"):  # the second ban replaced the first
        await strict.submit(GenerationRequest("a red circle", user_id=9, guild_id=two))
    await strict.submit(GenerationRequest("a red square", user_id=9, guild_id=one))
