"""Through the strict local Discord: long prompts, files over the upload limit, the review of a
four-image job, paged queues, failures in plain words, and U/V from the tile they name."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.settings import Settings
from generation.embedded.world import Scene, draw
from generation.imaging import read_recipe
from tests.bot.conftest import RunningBot, bot_settings, running_bot, settled_delivery
from tests.bot.test_imagine import NINE_BUTTONS
from tests.bot.test_moderation import FixedScores
from tests.bot.test_openai import with_dall_e_2
from tests.fakediscord.actions import LocalDiscord
from tests.fakeopenai import FakeImagesAPI

WORDS = "a red circle on a blue background with [links](https://x.example) and **stars** "


def long_text(length: int) -> str:
    return (WORDS * (length // len(WORDS) + 1))[:length].strip()


def attachment(server: LocalDiscord, message: dict[str, Any], index: int = 0) -> bytes:
    return server.files[int(message["attachments"][index]["id"])][1]


async def _answer(server: LocalDiscord, interaction: Any) -> dict[str, Any]:
    """The ephemeral answer's message, once it came."""
    await server.wait_for(lambda: server.ephemeral_answer(interaction), what="the answer")
    return server.original(interaction) or next(
        m
        for m in server.messages.values()
        if (m.get("interaction_metadata") or {}).get("id") == str(interaction.id)
    )


async def test_a_1000_character_prompt_and_negative_arrive_whole_in_the_grid_and_the_recipe(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    prompt, negative = long_text(1000), "blurry " + long_text(990)
    asked = await server.invoke("imagine", server.alice, prompt=prompt, negative=negative, seed=3)
    grid = await server.wait_for_result(asked)
    assert sorted(server.buttons(grid)) == sorted(NINE_BUTTONS)
    job_id = read_recipe(attachment(server, grid))["job_id"]
    assert read_recipe(attachment(server, grid))["prompt"] == prompt

    await server.react(int(grid["id"]), "\u2709", server.bob)
    dm = (await server.wait_for(lambda: server.dms(server.bob), what="the recipe by DM"))[0]
    assert f"Job {job_id}" in dm["content"] and "recipe.txt" in dm["content"]
    recipe = attachment(server, dm).decode()
    assert f"prompt: {prompt}\n" in recipe and f"negative: {negative}\n" in recipe
    assert "seed: 3" in recipe

    details = await _answer(server, await server.invoke("job", server.bob, id=job_id))
    assert f"prompt: {prompt}\n" in attachment(server, details).decode()


async def test_a_grid_over_the_interactions_upload_limit_arrives_reduced_within_it(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    server.attachment_size_limit = 8 * 1024  # the embedded model's grids weigh about 20 KiB
    asked = await server.invoke("imagine", server.alice, prompt="a green square on white")
    grid = await server.wait_for_result(asked)
    file = grid["attachments"][0]
    assert file["filename"].endswith(".webp") and file["size"] <= 8 * 1024
    with Image.open(io.BytesIO(attachment(server, grid))) as image:
        image.load()
        assert image.format == "WEBP" and min(image.size) >= 16
    assert "Reduced to fit Discord's upload limit" in grid["content"]
    job = (await bot.runtime.service.recent())[0]
    full = bot.runtime.store.get(f"images/{job.job.id}/1/{job.job.id}-grid.png")
    assert len(full) > 8 * 1024, "the store keeps the full PNG"

    refused = await _answer(
        server, await server.invoke("job", server.alice, id=job.job.id, full=True)
    )
    assert "over Discord's 8,192-byte limit" in refused["content"]
    server.attachment_size_limit = 10 * 1024 * 1024
    sent = await _answer(server, await server.invoke("job", server.alice, id=job.job.id, full=True))
    assert attachment(server, sent) == full


@pytest.mark.parametrize("refused_below", [8 * 1024, 10])
async def test_a_file_discord_still_refuses_goes_smaller_and_at_last_without_a_file(
    local_discord: LocalDiscord, bot: RunningBot, refused_below: int
) -> None:
    """The interaction said 10 MiB, but Discord takes less by the time the result is ready
    (the server lost its boosts): smaller files, then the result without one, never lost."""
    server = local_discord
    asked = await server.invoke("imagine", server.alice, prompt="a red square on green")
    await server.wait_for(lambda: asked.original_id, what="the deferred answer")
    asked.attachment_size_limit = refused_below
    result = await server.wait_for(
        lambda: (m := server.original(asked)) and m["components"] and m,
        what="the result with its buttons",
    )
    refused = [c for c in server.calls if c.status == 413 and c.files[0][0].startswith("imagine-")]
    assert refused, "Discord refused the first file"
    if refused_below > 1000:
        assert 0 < result["attachments"][0]["size"] <= refused_below
        assert "Reduced to fit" in result["content"]
    else:
        assert result["attachments"] == []
        assert "could not be attached" in result["content"]
        assert len(refused) == 3, "three smaller files, then none"
    assert sorted(server.buttons(result)) == sorted(NINE_BUTTONS)
    delivery = await settled_delivery(bot, 1)
    assert delivery.delivered_at is not None


async def test_an_api_grid_and_upscale_over_64_kib_arrive_within_it_carrying_their_recipe(
    local_discord: LocalDiscord, api: FakeImagesAPI, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    api.detailed = True  # pictures of a megabyte or more, as real APIs return
    server.attachment_size_limit = 64 * 1024
    async with with_dall_e_2(server, api, tmp_path / "data", trained_engine) as running:
        asked = await server.invoke(
            "imagine", server.alice, prompt="a yellow circle", model="dall-e-2", count=4
        )
        grid = await server.wait_for_result(asked)
        pressed = await server.click(int(grid["id"]), "U1", server.alice)
        upscale = await server.wait_for_result(pressed)
        for message in (grid, upscale):
            assert message["attachments"][0]["size"] <= 64 * 1024
            data = attachment(server, message)
            recipe = read_recipe(data)
            stored = running.runtime.store.get(
                f"images/{recipe['job_id']}/1/{recipe['job_id']}-"
                + ("grid.png" if recipe["kind"] == "txt2img" else "0.png")
            )
            assert len(stored) > 64 * 1024
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == "WEBP"
                assert image.getexif()  # the infotext travels with the reduced file
        assert read_recipe(attachment(server, upscale))["width"] == 2048


async def test_the_review_of_a_four_image_flagged_job_renders_and_approves_each_image(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(
        server, tmp_path / "data", guild_safety_policies={server.guild_id: "withhold"}
    )
    checker = FixedScores({"FEMALE_BREAST_EXPOSED": 0.93})
    async with running_bot(settings, trained_engine, checker) as running:
        asked = await server.invoke("imagine", server.bob, prompt="a red circle", count=4)
        await server.wait_for(
            lambda: "held back" in ((server.original(asked) or {}).get("content") or ""),
            what="the withheld result",
        )
        review = await _answer(server, await server.invoke("admin flagged", server.admin))
        assert len(review["attachments"]) == 4
        assert server.buttons(review) == [
            "Approve 1",
            "Delete job 1",
            f"Ban {server.bob.id}",
            "Approve 2",
            "Approve 3",
            "Approve 4",
        ]
        for number in range(1, 5):
            pressed = await server.click(int(review["id"]), f"Approve {number}", server.admin)
            assert "approved" in (await _answer(server, pressed))["content"]
        job = await running.runtime.service.job(1)
        assert [image.review for image in job.images] == ["approved"] * 4


class DrawnGrid:
    """The real engine, except that a text-to-image grid is four drawn scenes of clearly
    different colours, so a derived job can be matched to the tile it started from."""

    SCENES = (
        Scene("red", "circle", "blue"),
        Scene("green", "square", "yellow"),
        Scene("white", "triangle", "black"),
        Scene("black", "circle", "white"),
    )

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def render_async(self, spec: Any, on_step: Any = None) -> list[Image.Image]:
        if spec.kind == "txt2img":
            return [draw(scene, random.Random(n)) for n, scene in enumerate(self.SCENES)]
        return await self._engine.render_async(spec, on_step)


def _tiles(image: Image.Image, grid: bool) -> list[np.ndarray]:
    """An upscale as one 64×64 picture; a variation's grid of four as its four tiles."""
    if not grid:
        return [np.asarray(image.resize((64, 64), Image.Resampling.BOX), float)]
    half = image.width // 2
    return [
        np.asarray(image.crop((x, y, x + half, y + half)).resize((64, 64)), float)
        for y in (0, half)
        for x in (0, half)
    ]


async def test_u_i_and_v_i_start_from_tile_i(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    tiles = [np.asarray(draw(s, random.Random(n)), float) for n, s in enumerate(DrawnGrid.SCENES)]
    # Eight presses in a row; variations at 0.5: at the default 0.6 a random variation seed
    # once fell under the 2× margin below (1.86× in CI); over 32 presses each, the closest
    # tile was at worst 2.99× nearer at 0.6 and 3.85× at 0.5.
    settings = bot_settings(server, tmp_path / "data", bucket_size=8, variation_strength=0.5)
    async with running_bot(settings, DrawnGrid(trained_engine)):
        asked = await server.invoke("imagine", server.alice, prompt="a shape", seed=5)
        grid = await server.wait_for_result(asked)
        for label in ("U", "V"):
            for number in range(1, 5):
                pressed = await server.click(int(grid["id"]), f"{label}{number}", server.alice)
                made = await server.wait_for_result(pressed)
                with Image.open(io.BytesIO(attachment(server, made))) as image:
                    made_tiles = _tiles(image.convert("RGB"), label == "V")
                distances = [
                    float(np.mean([((seen - tile) ** 2).mean() for seen in made_tiles]))
                    for tile in tiles
                ]
                closest = int(np.argmin(distances))
                assert closest == number - 1, (label, number, [round(d) for d in distances])
                others = sorted(distances)[1]
                assert distances[closest] * 2 < others, (label, number, distances)


async def test_the_queue_pages_through_many_jobs_with_a_cancel_button_for_each(
    local_discord: LocalDiscord, tmp_path: Path
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", queued_per_user=40, bucket_size=40)
    async with running_bot(settings) as running:  # no worker: everything waits
        for number in range(23):
            asked = await server.invoke(
                "imagine", server.alice, prompt=long_text(900) + f" {number}"
            )
            await server.wait_for(lambda a=asked: server.queued(a), what="the job queued")
        first = await _answer(server, await server.invoke("queue", server.alice))
        assert first["content"].startswith("Page 1 of 3 (23 jobs)")
        ids = sorted(view.job.id for view in await running.runtime.service.recent(limit=50))
        assert server.buttons(first) == [f"Cancel {i}" for i in ids[:10]] + ["Next ▶"]

        pressed = await server.click(int(first["id"]), "Next ▶", server.alice)
        await server.wait_for(lambda: pressed.callback_type, what="the next page")
        second = server.messages[int(first["id"])]
        assert second["content"].startswith("Page 2 of 3")
        assert server.buttons(second) == [f"Cancel {i}" for i in ids[10:20]] + [
            "◀ Previous",
            "Next ▶",
        ]
        pressed = await server.click(int(first["id"]), f"Cancel {ids[12]}", server.alice)
        assert "cancelled" in (await _answer(server, pressed))["content"]


class Exploding:
    """The real engine, except that it breaks on every job with a long internal error."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def render_async(self, spec: Any, on_step: Any = None) -> list[Image.Image]:
        raise RuntimeError("cuDNN failure in /opt/host/secret/kernels.cu line 7 " * 100)


async def test_a_failed_job_is_told_in_plain_words_and_moderators_see_the_error(
    local_discord: LocalDiscord, settings: Settings, trained_engine: Any
) -> None:
    server = local_discord
    async with running_bot(settings, Exploding(trained_engine)) as running:
        asked = await server.invoke("imagine", server.alice, prompt="a red circle")
        failed = await server.wait_for(
            lambda: (m := server.original(asked)) and "failed" in m["content"] and m,
            what="the failure",
        )
        job_id = (await running.runtime.service.recent())[0].job.id
        assert f"something went wrong on our side (job {job_id})" in failed["content"]
        assert "secret" not in failed["content"] and "cuDNN" not in failed["content"]
        report = await _answer(server, await server.invoke("admin job", server.admin, id=job_id))
        assert "cuDNN failure" in report["content"]
        whole = attachment(server, report).decode()
        assert "RuntimeError: cuDNN failure in /opt/host/secret/kernels.cu line 7" in whole


async def test_a_reduced_file_links_to_the_full_one_on_the_web_console_where_there_is_one(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    server.attachment_size_limit = 8 * 1024
    settings = bot_settings(
        server,
        tmp_path / "data",
        web_base_url="https://imagine.example/",
        web_client_secret="a-secret",
    )
    async with running_bot(settings, trained_engine) as running:
        grid = await server.wait_for_result(
            await server.invoke("imagine", server.alice, prompt="a green square on white")
        )
        job = (await running.runtime.service.recent())[0].job
    assert "Reduced to fit Discord's upload limit" in grid["content"]
    assert f"<https://imagine.example/jobs/{job.id}>" in grid["content"]
    assert "/job id:" not in grid["content"], "the console's page instead"
