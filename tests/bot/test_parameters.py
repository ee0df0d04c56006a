"""Midjourney's parameters typed in /imagine's prompt, through the local Discord."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.bot.conftest import bot_settings, running_bot
from tests.bot.test_imagine import png_of
from tests.fakediscord.actions import LocalDiscord


async def test_parameters_in_the_prompt_make_the_job_and_an_option_wins_and_says_so(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    # The random-weight model draws any size (the trained one draws 64×64 only).
    settings = bot_settings(server, tmp_path / "data", model="embedded-random", max_count=1)
    async with running_bot(settings, engine):
        asked = await server.invoke(
            "imagine", server.alice, prompt="a red circle --ar 2:1 --no blue --seed 9", seed=5
        )
        recipe = json.loads(png_of(server, await server.wait_for_result(asked)).text["imagine-bot"])
        assert (recipe["prompt"], recipe["negative_prompt"]) == ("a red circle", "blue")
        assert (recipe["seed"], recipe["width"], recipe["height"]) == (5, 128, 64)
        said = await server.wait_for(lambda: server.ephemeral_answer(asked), what="the note")
        assert "instead of --seed in the prompt" in said

        unknown = await server.invoke("imagine", server.alice, prompt="a cat --chaos 50")
        refused = await server.wait_for(lambda: server.ephemeral_answer(unknown), what="refusal")
        assert "--chaos is not a parameter here" in refused and "--ar (aspect ratio" in refused
        assert "Nothing was queued" in refused
