"""/queue, /quota, /job and /reproduce, and the cancel buttons under /queue."""

from __future__ import annotations

import json

from bot.settings import Settings
from tests.bot.conftest import RunningBot, running_bot
from tests.bot.test_imagine import _grid, png_of
from tests.fakediscord.actions import LocalDiscord


async def _answer(server: LocalDiscord, interaction) -> str:  # type: ignore[no-untyped-def]
    return await server.wait_for(lambda: server.ephemeral_answer(interaction), what="the answer")


async def test_queue_lists_your_waiting_jobs_in_order_and_cancels_them(
    local_discord: LocalDiscord, settings: Settings
) -> None:
    server = local_discord
    async with running_bot(settings) as running:  # no worker: everything waits
        for prompt in ("a red circle", "a blue square"):
            asked = await server.invoke("imagine", server.alice, prompt=prompt)
            await server.wait_for(lambda a=asked: server.queued(a), what="the job queued")
        await server.invoke("imagine", server.bob, prompt="bob's green triangle")
        listing = await server.invoke("queue", server.alice)
        text = await _answer(server, listing)
        jobs = await running.runtime.service.recent()
        alices = sorted(j.job.id for j in jobs if j.job.user_id == server.alice.id)
        assert "1st in line" in text and "a red circle" in text
        assert "a blue square" in text and "bob" not in text
        answer = server.original(listing)
        assert server.buttons(answer) == [f"Cancel {job_id}" for job_id in alices]

        pressed = await server.click(int(answer["id"]), f"Cancel {alices[0]}", server.alice)
        assert "cancelled" in await _answer(server, pressed)
        assert (await running.runtime.service.job(alices[0])).job.status == "cancelled"

        stolen = await server.click(int(answer["id"]), f"Cancel {alices[1]}", server.bob)
        assert "not yours" in await _answer(server, stolen)
        assert (await running.runtime.service.job(alices[1])).job.status == "queued"


async def test_quota_shows_usage_limits_and_reset(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    await _grid(server)
    text = await _answer(server, await server.invoke("quota", server.alice))
    assert "images today: 4 of 400" in text
    assert "waiting or running: 0 of 16" in text
    assert "resets <t:" in text


async def test_job_shows_recipe_and_lineage_and_reproduce_matches_the_bytes(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    grid, job_id = await _grid(server)
    pressed = await server.click(int(grid["id"]), "U1", server.alice)
    upscale = json.loads(png_of(server, await server.wait_for_result(pressed)).text["imagine-bot"])

    text = await _answer(server, await server.invoke("job", server.bob, id=job_id))
    assert f"Job {job_id}" in text and "seed: 7" in text
    assert f"child: job {upscale['job_id']} (upscale, succeeded)" in text
    text = await _answer(server, await server.invoke("job", server.bob, id=upscale["job_id"]))
    assert f"parent: job {job_id}" in text

    text = await _answer(server, await server.invoke("reproduce", server.bob, id=job_id))
    assert text == f"job {job_id} is not yours to reproduce", "full renders: owner, moderators"
    # A queued job with the recipe, exactly: its result says whether the bits match (an
    # upscale's too, which starts from its parent's image).
    for original, count in ((job_id, 4), (upscale["job_id"], 1)):
        again = await server.invoke("reproduce", server.alice, id=original)
        result = await server.wait_for_result(again)
        verdict = f"Job {original}: identical ({count} of {count} images match bit for bit)"
        assert verdict in result["content"]
        made = json.loads(png_of(server, result).text["imagine-bot"])["job_id"]
        view, first = await bot.runtime.service.job(made), await bot.runtime.service.job(original)
        assert view.job.reproduces_job_id == original and view.job.seed == first.job.seed
        assert view.job.kind == first.job.kind and view.job.user_id == server.alice.id
    text = await _answer(server, await server.invoke("job", server.bob, id=999))
    assert "there is no job 999" in text
