"""Editing and exploring an image through the local Discord: Zoom Out, Make Square, Pan and
Vary (Region) under an upscale, --video's steps, and comparison grids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from generation.editing import Edit, region_boxes
from tests.bot.conftest import bot_settings, running_bot
from tests.bot.test_imagine import png_of
from tests.fakediscord.actions import LocalDiscord


async def test_zoom_out_and_pan_under_an_upscale_keep_the_upscales_pixels(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    # The random-weight model draws any size (the trained one draws 64×64 only, so its
    # upscales offer no edit: a Zoom Out keeps the size, which it cannot draw).
    settings = bot_settings(server, tmp_path / "data", model="embedded-random", max_count=1)
    async with running_bot(settings, engine):
        grid = await server.wait_for_result(
            await server.invoke("imagine", server.alice, prompt="a red circle", seed=5)
        )
        upscaled = await server.wait_for_result(
            await server.click(int(grid["id"]), "U1", server.alice)
        )
        assert server.buttons(upscaled) == [
            "Vary (subtle)",
            "Vary (strong)",
            "Vary (Region)",
            "Upscale 2×",
            "Zoom Out 2×",
            "Zoom Out 1.5×",
            "⬅️",
            "➡️",
            "⬆️",
            "⬇️",
        ], "no Make Square under a square image; no Compare… where a job makes one image"
        old = png_of(server, upscaled)
        assert old.size == (128, 128)
        parent = json.loads(old.text["imagine-bot"])["job_id"]
        before = np.asarray(old.convert("RGB"), dtype=np.int16)

        zoomed = await server.wait_for_result(
            await server.click(int(upscaled["id"]), "Zoom Out 2×", server.alice)
        )
        made = png_of(server, zoomed)
        recipe = json.loads(made.text["imagine-bot"])
        assert (recipe["kind"], recipe["parent_job_id"], made.size) == ("edit", parent, (128, 128))
        half = np.asarray(
            old.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS), dtype=np.int16
        )
        assert (np.asarray(made.convert("RGB"), dtype=np.int16)[32:96, 32:96] == half).all()

        panned = await server.wait_for_result(
            await server.click(int(upscaled["id"]), "➡️", server.alice)
        )
        made = png_of(server, panned)
        assert made.size == (192, 128)
        assert (np.asarray(made.convert("RGB"), dtype=np.int16)[:, :128] == before).all()


async def test_vary_region_picks_cells_on_a_numbered_guide_then_repaints_only_them(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", model="embedded-random", max_count=1)
    async with running_bot(settings, engine):
        grid = await server.wait_for_result(
            await server.invoke("imagine", server.alice, prompt="a red circle", seed=5)
        )
        upscaled = await server.wait_for_result(
            await server.click(int(grid["id"]), "U1", server.alice)
        )
        old = png_of(server, upscaled)
        parent = json.loads(old.text["imagine-bot"])["job_id"]

        pressed = await server.click(int(upscaled["id"]), "Vary (Region)", server.alice)
        picker = await server.wait_for(
            lambda: (m := server.original(pressed)) and m["components"] and m,
            what="the region picker",
        )
        assert picker["flags"] & 64, "the picker is the presser's alone"
        assert [a["filename"] for a in picker["attachments"]] == ["cells.png"]
        guide = png_of(server, picker)
        assert guide.size == (128, 128)  # at most 384 on its long side, never enlarged

        by_area = await server.choose(int(picker["id"]), "Or an area", ["Left half"], server.alice)
        form = await server.wait_for(lambda: by_area.modal, what="the region's form")
        assert form["title"] == "Vary (Region): left"

        chosen = await server.choose(
            int(picker["id"]),
            "Cells to paint anew (numbered on the image)",
            ["1 · top left", "2 · top centre"],
            server.alice,
        )
        await server.wait_for(lambda: chosen.modal, what="the region's form")
        assert server.modal_fields(chosen) == {
            "Prompt for the region": "a red circle",
            "Negative prompt": "",
        }
        sent = await server.submit_modal(chosen, {"Prompt for the region": "a blue square"})
        edited = await server.wait_for_result(sent)
        made = png_of(server, edited)
        recipe = json.loads(made.text["imagine-bot"])
        assert (recipe["kind"], recipe["parent_job_id"], recipe["prompt"]) == (
            "edit",
            parent,
            "a blue square",
        )
        assert recipe["edit"]["op"] == "region" and recipe["edit"]["cells"] == [1, 2]
        assert made.size == old.size
        mask = np.zeros((128, 128), dtype=bool)
        for left, top, right, bottom in region_boxes(Edit.region(cells=(1, 2)), 128, 128, 8):
            mask[top:bottom, left:right] = True
        new = np.asarray(made.convert("RGB"), dtype=np.int16)
        before = np.asarray(old.convert("RGB"), dtype=np.int16)
        assert (new[~mask] == before[~mask]).all(), "outside the cells, the parent's pixels"
        assert (new[mask] != before[mask]).any(), "inside them, painted anew"


async def test_video_under_a_grid_sends_its_steps_as_an_animated_webp_to_the_presser(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", model="embedded-random")
    async with running_bot(settings, engine):
        grid = await server.wait_for_result(
            await server.invoke(
                "imagine", server.alice, prompt="a red circle --video", seed=5, steps=3
            )
        )
        assert "Video" in server.buttons(grid)
        pressed = await server.click(int(grid["id"]), "Video", server.bob)  # any member
        answer = await server.wait_for(
            lambda: (m := server.original(pressed)) and m["attachments"] and m,
            what="the video",
        )
        assert answer["flags"] & 64, "to the presser alone"
        video = png_of(server, answer)
        assert (video.format, video.n_frames) == ("WEBP", 3)

        plain = await server.wait_for_result(
            await server.invoke("imagine", server.alice, prompt="a red circle", steps=2)
        )
        assert "Video" not in server.buttons(plain)


async def test_compare_makes_a_labelled_grid_whose_cells_are_the_single_runs_they_stand_for(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", model="embedded-random")
    async with running_bot(settings, engine):
        grid = await server.wait_for_result(
            await server.invoke("imagine", server.alice, prompt="a red circle", seed=5, steps=2)
        )
        upscaled = await server.wait_for_result(
            await server.click(int(grid["id"]), "U2", server.alice)
        )
        assert "Compare…" in server.buttons(upscaled)
        pressed = await server.click(int(upscaled["id"]), "Compare…", server.alice)
        picker = await server.wait_for(
            lambda: (m := server.original(pressed)) and m["components"] and m,
            what="the knob's picker",
        )
        assert picker["flags"] & 64
        chosen = await server.choose(
            int(picker["id"]), "What to compare", ["Guidance"], server.alice
        )
        await server.wait_for(lambda: chosen.modal, what="the values' form")
        assert server.modal_fields(chosen) == {"2 to 4 values, comma-separated": "3, 5, 7, 9"}
        sent = await server.submit_modal(chosen, {"2 to 4 values, comma-separated": "1, 2.5, 4, 6"})
        compared = await server.wait_for_result(sent)
        assert server.buttons(compared)[:5] == ["U1", "U2", "U3", "U4", "🔄"]
        labelled = np.asarray(png_of(server, compared).convert("RGB"), dtype=np.int16)

        job = json.loads(png_of(server, compared).text["imagine-bot"])["job_id"]
        # Each cell is the single run of image 2 (seed 6) at its guidance, and says so.
        for index, guidance in enumerate((1.0, 2.5, 4.0, 6.0)):
            single = await server.wait_for_result(
                await server.invoke(
                    "imagine",
                    server.alice,
                    prompt="a red circle",
                    seed=6,
                    steps=2,
                    guidance=guidance,
                    count=1,
                )
            )
            alone = np.asarray(png_of(server, single).convert("RGB"), dtype=np.int16)
            image = Image.open(tmp_path / "data" / "images" / str(job) / "1" / f"{job}-{index}.png")
            recipe = json.loads(image.text["imagine-bot"])
            assert (recipe["image_seed"], recipe["guidance"]) == (6, guidance)
            made = np.asarray(image.convert("RGB"), dtype=np.int16)
            assert (made == alone).all(), f"cell {index + 1} is the single run at {guidance}"
            # The grid shows it, with a band along its foot carrying its label.
            top, left = (index // 2) * 64, (index % 2) * 64
            assert (labelled[top : top + 48, left : left + 64] == made[:48]).all()
            assert (labelled[top + 56 : top + 64, left : left + 64] != made[56:]).any()

        # A cell's upscale starts from the cell's own recipe, not the grid's.
        upscale = await server.wait_for_result(
            await server.click(int(compared["id"]), "U3", server.alice)
        )
        recipe = json.loads(png_of(server, upscale).text["imagine-bot"])
        assert (recipe["parent_job_id"], recipe["parent_image_index"]) == (job, 2)
        assert (recipe["kind"], recipe["guidance"]) == ("upscale", 4.0)


async def test_compare_words_are_the_members_own_and_its_form_works_only_on_its_job(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(
        server, tmp_path / "data", model="embedded-random", max_count=2, blocked_terms="dragon"
    )
    async with running_bot(settings, engine) as running:
        grid = await server.wait_for_result(
            await server.invoke(
                "imagine", server.alice, prompt="a red circle --video", seed=5, steps=2
            )
        )
        upscaled = await server.wait_for_result(
            await server.click(int(grid["id"]), "U1", server.alice)
        )

        async def form(word: str, values: str) -> Any:
            pressed = await server.click(int(upscaled["id"]), "Compare…", server.alice)
            picker = await server.wait_for(
                lambda: (m := server.original(pressed)) and m["components"] and m,
                what="the knob's picker",
            )
            chosen = await server.choose(
                int(picker["id"]), "What to compare", ["A word of the prompt"], server.alice
            )
            await server.wait_for(lambda: chosen.modal, what="the values' form")
            return chosen, {
                "The word of the prompt to swap": word,
                "2 values, comma-separated": values,
            }

        # Words typed as values are the member's own: a blocked one is refused, and struck.
        opened, values = await form("red", "dragon, blue")
        sent = await server.submit_modal(opened, values)
        refused = await server.wait_for(lambda: server.ephemeral_answer(sent), what="refusal")
        assert "does not allow" in refused and "Strike 1 of 3" in refused

        # A value is text, backslashes and all; the form names at most max_count values.
        opened, values = await form("red", "blue\\, green")
        compared = await server.wait_for_result(await server.submit_modal(opened, values))
        recipe = json.loads(png_of(server, compared).text["imagine-bot"])
        cells = recipe["compare"]["cells"]
        assert [cell["prompt"] for cell in cells] == ["a blue\\ circle", "a green circle"]

        # A form whose custom id names another job than its picker's is refused.
        other = await server.wait_for_result(
            await server.invoke("imagine", server.bob, prompt="a blue square", seed=1)
        )
        bobs = json.loads(png_of(server, other).text["imagine-bot"])["job_id"]
        opened, values = await form("red", "blue, green")
        assert opened.modal is not None
        opened.modal["custom_id"] = f"imagine-compare-form:{bobs}:0:word"
        sent = await server.submit_modal(opened, values)
        refused = await server.wait_for(lambda: server.ephemeral_answer(sent), what="refusal")
        assert "from the job's own result" in refused

        # Each Video press reads a file: five at once, then one every 10 s.
        for _ in range(5):
            video = await server.click(int(grid["id"]), "Video", server.bob)
            await server.wait_for(
                lambda v=video: (m := server.original(v)) and m["attachments"], what="the video"
            )
        pressed = await server.click(int(grid["id"]), "Video", server.bob)
        said = await server.wait_for(lambda: server.ephemeral_answer(pressed), what="refusal")
        assert "You opened 5 images or videos just now" in said
        events = await running.runtime.moderation.events(target_user_id=server.alice.id)
        assert [e for e in events if e.kind == "prompt_blocked"], "the strike is on record"
