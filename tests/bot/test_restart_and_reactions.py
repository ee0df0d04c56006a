"""Buttons after a restart, ✉️ and ❌ reactions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bot.settings import Settings
from tests.bot.conftest import RunningBot, running_bot
from tests.bot.test_imagine import _grid, png_of
from tests.fakediscord.actions import LocalDiscord


async def test_buttons_work_after_the_bot_restarts(
    local_discord: LocalDiscord, settings: Settings, trained_engine: Any
) -> None:
    server = local_discord
    async with running_bot(settings, trained_engine):
        grid, job_id = await _grid(server)
    assert server.identifies == 1

    async with running_bot(settings, trained_engine):
        pressed = await server.click(int(grid["id"]), "V1", server.alice)
        answer = await server.wait_for_result(pressed)
    made = json.loads(png_of(server, answer).text["imagine-bot"])
    assert (made["kind"], made["parent_job_id"], made["parent_image_index"]) == (
        "variation",
        job_id,
        0,
    )
    assert server.identifies == 2


async def test_envelope_sends_the_recipe_to_the_reacting_user_only(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    grid, job_id = await _grid(server)
    await server.react(int(grid["id"]), "\u2709\ufe0f", server.bob)  # with the variation selector
    dm = (await server.wait_for(lambda: server.dms(server.bob), what="bob's DM"))[0]
    assert f"Job {job_id}" in dm["content"]
    assert "prompt: a red circle on a blue background" in dm["content"]
    assert "seed: 7" in dm["content"]
    assert "steps: 10" in dm["content"]
    assert "64×64" in dm["content"]
    assert server.dms(server.alice) == []


async def test_cross_from_someone_else_does_nothing_from_the_requester_deletes(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    grid, job_id = await _grid(server)
    message_id = int(grid["id"])

    await server.react(message_id, "❌", server.bob)
    await server.react(message_id, "\u2709", server.bob)  # a later reaction that is handled
    await server.wait_for(lambda: server.dms(server.bob), what="the DM after the ❌")
    assert message_id in server.messages
    assert (await bot.runtime.service.job(job_id)).job.status == "succeeded"

    await server.react(message_id, "❌", server.alice)
    await server.wait_for(lambda: message_id in server.deleted, what="the deletion")
    assert (await bot.runtime.service.job(job_id)).job.status == "deleted"


async def test_an_admin_may_delete_anyones_result(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    grid, job_id = await _grid(server)
    await server.react(int(grid["id"]), "❌", server.admin)
    await server.wait_for(lambda: int(grid["id"]) in server.deleted, what="the deletion")
    assert (await bot.runtime.service.job(job_id)).job.status == "deleted"


async def test_a_request_answered_just_before_a_crash_is_made_at_the_next_start(
    local_discord: LocalDiscord, settings: Settings, trained_engine: Any
) -> None:
    """The bot answers "thinking…" and dies before the job is stored: the request was written
    down before the answer, so the next start makes and delivers it, once."""
    server = local_discord
    stuck = asyncio.Event()
    async with running_bot(settings) as first:
        service = first.runtime.service
        original_submit = service.submit

        async def never(*args: Any, **kwargs: Any) -> Any:
            stuck.set()
            await asyncio.Event().wait()  # the process "dies" here

        service.submit = never  # type: ignore[method-assign]
        asked = await server.invoke("imagine", server.alice, prompt="a red circle on blue")
        await server.wait_for(lambda: asked.answered, what="the answer")
        await asyncio.wait_for(stuck.wait(), 10)
        assert await first.runtime.service.recent() == []
        service.submit = original_submit  # type: ignore[method-assign]
    async with running_bot(settings, trained_engine) as second:
        result = await server.wait_for_result(asked)
        jobs = await second.runtime.service.recent()
        assert [view.job.interaction_id for view in jobs] == [asked.id]
        assert await second.bot.intent_log.pending() == []
    assert result["attachments"]
    assert len([c for c in server.callbacks if c[0] == asked.id]) == 1  # answered once
