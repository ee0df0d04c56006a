"""/imagine end to end: real discord.py, the local Discord, the embedded model."""

from __future__ import annotations

import io
import json

from PIL import Image

from tests.bot.conftest import RunningBot
from tests.fakediscord.actions import LocalDiscord

NINE_BUTTONS = ["U1", "U2", "U3", "U4", "🔄", "V1", "V2", "V3", "V4"]


def png_of(server: LocalDiscord, message: dict) -> Image.Image:
    attachment_id = int(message["attachments"][0]["id"])
    return Image.open(io.BytesIO(server.files[attachment_id][1]))


async def test_imagine_defers_shows_progress_and_ends_in_a_grid_with_nine_buttons(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    asked = await server.invoke(
        "imagine", server.alice, prompt="a red circle on a blue background", seed=7
    )
    result = await server.wait_for_result(asked)

    kinds = [kind for interaction_id, kind, _ in server.callbacks if interaction_id == asked.id]
    assert kinds == [5], "answered once, by deferring"
    texts = [
        edit["content"] for message_id, edit in server.edits if message_id == asked.original_id
    ]
    assert any("queued" in t or "starting" in t for t in texts), texts
    assert any("step" in t for t in texts), texts
    assert sorted(server.buttons(result)) == sorted(NINE_BUTTONS)
    rows = [
        [c.get("label") or c["emoji"]["name"] for c in row["components"]]
        for row in result["components"]
    ]
    assert rows == [["U1", "U2", "U3", "U4", "🔄"], ["V1", "V2", "V3", "V4"]]
    grid = png_of(server, result)
    assert grid.size == (128, 128)
    recipe = json.loads(grid.text["imagine-bot"])
    assert recipe["prompt"] == "a red circle on a blue background"
    assert recipe["seed"] == 7
    job = await bot.runtime.service.job(recipe["job_id"])
    assert job.job.status == "succeeded"
    assert job.job.interaction_id == asked.id
    assert len(job.images) == 4


async def _grid(server: LocalDiscord, user=None) -> tuple[dict, int]:
    asked = await server.invoke(
        "imagine", user or server.alice, prompt="a red circle on a blue background", seed=7
    )
    result = await server.wait_for_result(asked)
    return result, json.loads(png_of(server, result).text["imagine-bot"])["job_id"]


async def _press(
    server: LocalDiscord, bot: RunningBot, grid: dict, label: str
) -> tuple[dict, dict]:
    """Press a button; the answer's message and the job it made."""
    pressed = await server.click(int(grid["id"]), label, server.alice)
    answer = await server.wait_for_result(pressed)
    made = json.loads(png_of(server, answer).text["imagine-bot"])
    return answer, made


async def test_u2_v3_and_reroll_make_derived_jobs_answered_as_replies_to_the_grid(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    grid, job_id = await _grid(server)

    upscaled, up = await _press(server, bot, grid, "U2")
    assert (up["kind"], up["parent_job_id"], up["parent_image_index"]) == ("upscale", job_id, 1)
    assert png_of(server, upscaled).size == (128, 128)
    # The trained model draws 64×64 only: no edit, which would paint at the upscale's size;
    # a comparison remakes the 64×64 image it came from.
    assert server.buttons(upscaled) == ["Vary (subtle)", "Vary (strong)", "Upscale 2×", "Compare…"]

    varied, vary = await _press(server, bot, grid, "V3")
    assert (vary["kind"], vary["parent_job_id"], vary["parent_image_index"]) == (
        "variation",
        job_id,
        2,
    )
    rerolled, reroll = await _press(server, bot, grid, "🔄")
    assert (reroll["kind"], reroll["parent_job_id"]) == ("reroll", job_id)
    assert reroll["seed"] != 7

    for answer in (upscaled, varied, rerolled):
        assert answer["id"] != grid["id"], "a new message, never the grid edited in place"
        assert answer["message_reference"]["message_id"] == grid["id"]
    assert sorted(server.buttons(server.messages[int(grid["id"])])) == sorted(NINE_BUTTONS)
