"""Deliveries through Discord's faults: outages of any length, channels that close, DMs that
are closed too. Every result ends delivered once or recorded undeliverable, never dropped.

Backoff and sweep timings are shortened with settings; the outages are as long as the issue
that asked for them says (60 s, 40 s), since their length is what broke before.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import update

from bot.cli_support import job_json
from bot.settings import Settings
from storage.models import Delivery, DeliveryState, EventKind
from storage.records import DeliveryRecord
from tests.bot.conftest import (
    RunningBot,
    bot_settings,
    running_bot,
    settled_delivery,
    worker_for,
)
from tests.bot.test_delivery import results_for
from tests.bot.test_imagine import png_of
from tests.bot.test_moderation import FixedScores
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.server import Interaction

T = TypeVar("T")


def _quick(server: LocalDiscord, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "delivery_retry_base": 0.5,
        "delivery_retry_cap": 4.0,
        "delivery_sweep_interval": 0.2,
        **overrides,
    }
    return bot_settings(server, tmp_path / "data", **values)


async def _until(
    check: Callable[[], Awaitable[T | None]], seconds: float = 60.0, what: str = "a condition"
) -> T:
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        await asyncio.sleep(0.1)


async def _job_id(running: RunningBot, asked: Interaction) -> int:
    async def made() -> int | None:
        for view in await running.runtime.service.recent(limit=50):
            if view.job.interaction_id == asked.id:
                return view.job.id
        return None

    return await _until(made, what="the job")


async def _ended(running: RunningBot, job_id: int) -> bool:
    return (await running.runtime.service.job(job_id)).job.is_terminal


async def _delivery(running: RunningBot, job_id: int) -> DeliveryRecord:
    delivery = await running.bot.outbox.get(job_id)
    assert delivery is not None
    return delivery


async def _asked(server: LocalDiscord, user: Any, prompt: str, **options: Any) -> Interaction:
    asked = await server.invoke("imagine", user, prompt=prompt, **options)
    await server.wait_for(lambda: server.queued(asked), what="the job queued")
    return asked


def _answer(server: LocalDiscord, asked: Interaction) -> str:
    stored = server.original(asked)
    assert stored is not None
    return str(stored["content"])


async def _asked_long_ago(server: LocalDiscord, running: RunningBot, asked: Interaction) -> None:
    """As if the job had waited 20 minutes in line: its interaction's token has expired, so
    its result goes to the channel as a reply (a route where discord.py does not retry a
    503 itself: each try is quick, and the bot's own backoff is what spaces them)."""
    job_id = await _job_id(running, asked)
    asked_at = (await _delivery(running, job_id)).interaction_at
    async with running.runtime.db.uow() as uow:
        await uow.session.execute(
            update(Delivery)
            .where(Delivery.job_id == job_id)
            .values(interaction_at=asked_at - dt.timedelta(minutes=20))
        )
        await uow.commit()
    server.expire(asked)


def _posted(server: LocalDiscord, job_id: int) -> list[dict[str, Any]]:
    return [m for m in results_for(server, job_id) if "webhook_id" not in m]


async def test_a_60_s_outage_during_a_job_ends_with_its_result_delivered_once(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    async with running_bot(_quick(server, tmp_path), trained_engine) as running:
        asked = await _asked(server, server.alice, "a red circle", steps=20)
        job_id = await _job_id(running, asked)
        await _asked_long_ago(server, running, asked)
        server.outage(60)
        began = time.monotonic()
        await _until(lambda: _ended(running, job_id), what="the job to end")
        tried = await _until(
            lambda: _tried(running, job_id, 3), what="three failed tries, on the row"
        )
        assert tried.state == DeliveryState.PENDING and "503" in (tried.last_error or "")
        assert tried.next_try_at is not None

        posted = await server.wait_for(lambda: _posted(server, job_id), seconds=90)
        waited = time.monotonic() - began
        assert waited >= 59, "nothing got through while Discord answered 503"
        assert waited <= 60 + 4 + 3, "tried again within the backoff's cap of the outage's end"
        delivered = await settled_delivery(running, job_id)  # marked just after Discord's answer
        await asyncio.sleep(1.0)
        assert results_for(server, job_id) == posted and len(posted) == 1, "delivered once"
        assert (delivered.state, delivered.delivered_via) == ("delivered", "channel")
        # Backoff, not a hammer: 0.5 s doubling to 4 s (with jitter) over 60 s.
        assert 12 <= delivered.attempts <= 40, delivered.attempts


async def _tried(running: RunningBot, job_id: int, times: int) -> DeliveryRecord | None:
    delivery = await _delivery(running, job_id)
    return delivery if delivery.attempts >= times else None


async def test_a_40_s_outage_during_five_jobs_ends_with_all_five_delivered_once(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = _quick(server, tmp_path)
    async with running_bot(settings) as running:
        users = [server.alice, server.bob, server.alice, server.bob, server.alice]
        # The worker starts with the outage: all five end in it, however slow the machine is
        # at asking them.
        asked = [
            await _asked(server, user, f"a blue square {n}", steps=20)
            for n, user in enumerate(users)
        ]
        job_ids = [await _job_id(running, a) for a in asked]
        # Two answer their command (discord.py retries a webhook's 503 for ~25 s: one try);
        # three waited long, and go to the channel (a 503 ends the try at once).
        for late in asked[2:]:
            await _asked_long_ago(server, running, late)
        server.outage(40)
        began = time.monotonic()
        worker = worker_for(running.runtime, settings, trained_engine)
        working = asyncio.create_task(worker.run())

        async def all_ended() -> bool:
            return all([await _ended(running, job_id) for job_id in job_ids])

        await _until(all_ended, what="the five jobs to end")
        assert time.monotonic() - began < 40, "they ended during the outage"
        worker.stop()
        await working
        results = [await server.wait_for_result(a, seconds=80) for a in asked[:2]]
        for job_id in job_ids[2:]:
            posted = await server.wait_for(lambda j=job_id: _posted(server, j), seconds=80)
            results.append(posted[0])
        assert time.monotonic() - began >= 39
        settled = [await settled_delivery(running, job_id) for job_id in job_ids]
        await asyncio.sleep(1.0)
        for job_id, result, delivered in zip(job_ids, results, settled, strict=True):
            assert results_for(server, job_id) == [result], "each once"
            assert json.loads(png_of(server, result).text["imagine-bot"])["job_id"] == job_id
            assert delivered.state == DeliveryState.DELIVERED and delivered.attempts >= 1


async def test_a_channel_that_lost_send_messages_sends_the_result_by_dm(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    async with running_bot(_quick(server, tmp_path), trained_engine) as running:
        asked = await _asked(server, server.alice, "a green circle", steps=30)
        job_id = await _job_id(running, asked)
        server.expire(asked)  # the answer can no longer carry it: a channel post is next
        server.forbid(server.channel_id)

        dm = await server.wait_for(lambda: server.dms(server.alice), what="the DM")
        assert len(dm) == 1 and dm[0]["attachments"] and len(server.buttons(dm[0])) == 9
        assert "channel you asked in would not take it" in dm[0]["content"]
        assert json.loads(png_of(server, dm[0]).text["imagine-bot"])["job_id"] == job_id
        assert results_for(server, job_id) == dm, "once, and not in the channel"
        delivery = await settled_delivery(running, job_id)
        assert (delivery.state, delivery.delivered_via) == ("delivered", "dm")
        assert delivery.result_message_id == int(dm[0]["id"])
        # The stale progress message says where the result went.
        await server.wait_for(
            lambda: "sent to you by direct message" in _answer(server, asked),
            what="the progress message replaced",
        )
        assert not server.original(asked)["attachments"]  # type: ignore[index]
        # Its buttons work there (DM commands are off; the bot's own DM buttons are not).
        pressed = await server.click(int(dm[0]["id"]), "U1", server.alice)
        upscaled = await server.wait_for_result(pressed)
        assert upscaled["attachments"] and int(upscaled["channel_id"]) in server.dm_channels


async def test_a_deleted_channel_sends_the_result_by_dm(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    async with running_bot(_quick(server, tmp_path), trained_engine) as running:
        asked = await _asked(server, server.bob, "a white square", steps=30)
        job_id = await _job_id(running, asked)
        server.delete_channel(server.channel_id)  # the response goes with it

        dm = await server.wait_for(lambda: server.dms(server.bob), what="the DM")
        assert len(dm) == 1 and results_for(server, job_id) == dm
        delivery = await settled_delivery(running, job_id)
        assert (delivery.state, delivery.delivered_via) == ("delivered", "dm")
        await asyncio.sleep(1.0)
        assert len(server.dms(server.bob)) == 1, "and only once"


async def test_dms_closed_too_leaves_it_undeliverable_recorded_and_shown_everywhere(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    moderators = server.channel_id  # the moderation channel is the one the bot lost
    settings = _quick(server, tmp_path, moderation_channel_id=moderators)
    async with running_bot(settings, trained_engine) as running:
        asked = await _asked(server, server.alice, "a yellow circle", steps=30)
        job_id = await _job_id(running, asked)
        server.expire(asked)
        server.forbid(server.channel_id)
        server.close_dms(server.alice)

        delivery = await settled_delivery(running, job_id)
        assert delivery.state == DeliveryState.UNDELIVERABLE
        reason = delivery.last_error or ""
        assert "the bot may not post in the channel (Discord 403/50013)" in reason
        assert "takes no direct messages from the server's members (Discord 403/50007)" in reason
        assert results_for(server, job_id) == []
        events = await running.runtime.moderation.events(target_user_id=server.alice.id)
        assert [(e.kind, e.job_id, e.reason) for e in events] == [
            (EventKind.DELIVERY_FAILED, job_id, reason)
        ]
        await asyncio.sleep(1.0)
        assert (await _delivery(running, job_id)).attempts == 1, "not tried again and again"

        # /job (an interaction's answer needs no channel permission) and /admin job say so.
        shown = await server.invoke("job", server.alice, id=job_id)
        text = await server.wait_for(lambda: server.ephemeral_answer(shown), what="/job")
        assert "result: could not be delivered: " in text and "403/50007" in text
        shown = await server.invoke("job", server.bob, id=job_id)
        text = await server.wait_for(lambda: server.ephemeral_answer(shown), what="bob's /job")
        assert "result:" not in text, "where a result went is its owner's business"
        shown = await server.invoke("admin job", server.admin, id=job_id)
        text = await server.wait_for(lambda: server.ephemeral_answer(shown), what="/admin job")
        assert "result: could not be delivered: " in text
        row = job_json(running.runtime, await running.runtime.service.job(job_id))
        assert row["delivery"]["state"] == "undeliverable"
        assert row["delivery"]["last_error"] == reason


async def test_a_flagged_image_is_never_sent_by_dm(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = _quick(server, tmp_path, guild_safety_policies={server.guild_id: "spoiler"})
    checker = FixedScores({"BUTTOCKS_EXPOSED": 0.91})
    async with running_bot(settings, trained_engine, checker) as running:
        asked = await _asked(server, server.alice, "a red square", steps=30)
        job_id = await _job_id(running, asked)
        server.expire(asked)
        server.forbid(server.channel_id)

        delivery = await settled_delivery(running, job_id)
        assert delivery.state == DeliveryState.UNDELIVERABLE
        assert "a flagged image is never sent by direct message" in (delivery.last_error or "")
        assert server.dms(server.alice) == []


async def test_a_restart_in_the_middle_of_a_backoff_picks_up_where_it_was(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = _quick(server, tmp_path, delivery_retry_base=4.0, delivery_retry_cap=16.0)
    async with running_bot(settings, trained_engine) as running:
        asked = await _asked(server, server.alice, "a black circle", steps=20)
        job_id = await _job_id(running, asked)
        await _asked_long_ago(server, running, asked)
        # Long enough for two tries: the second (2-4 s after the first) may wait up to 5 s
        # for a progress edit in flight to give up.
        server.outage(15)
        await _until(lambda: _tried(running, job_id, 2), what="two failed tries")
    stopped = await _reopened_delivery(settings, job_id)
    assert stopped.state == DeliveryState.PENDING and stopped.attempts >= 2
    assert stopped.next_try_at is not None
    await asyncio.sleep(max(0.0, server.outage_until - time.monotonic()))

    async with running_bot(settings, trained_engine) as again:
        posted = await server.wait_for(lambda: _posted(server, job_id), seconds=60)
        delivered = await settled_delivery(again, job_id)
        assert delivered.delivered_at is not None
        assert delivered.delivered_at >= stopped.next_try_at, "its recorded backoff was kept"
        assert delivered.attempts == stopped.attempts, "the first try after it went out"
        await asyncio.sleep(0.5)
        assert results_for(server, job_id) == posted and len(posted) == 1


async def _reopened_delivery(settings: Settings, job_id: int) -> DeliveryRecord:
    from storage.db import Database

    db = Database(settings.database_url)
    try:
        async with db.uow() as uow:
            delivery = await uow.deliveries.get(job_id)
    finally:
        await db.close()
    assert delivery is not None
    return delivery
