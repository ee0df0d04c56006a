"""Samplers by name and the size caps' buttons, through the local Discord."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.bot.conftest import RunningBot, bot_settings, running_bot
from tests.bot.test_imagine import png_of
from tests.fakediscord.actions import LocalDiscord


async def test_imagine_with_a_sampler_records_it_and_the_png_names_it(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    asked = await server.invoke(
        "imagine", server.alice, prompt="a red circle", seed=3, sampler="DPM++ SDE"
    )
    grid = png_of(server, await server.wait_for_result(asked))
    recipe = json.loads(grid.text["imagine-bot"])
    assert (recipe["sampler"], recipe["scheduler"]) == ("DPM++ SDE", "DPMSolverSDEScheduler")
    assert recipe["scheduler_options"] == {"timestep_spacing": "linspace"}
    assert "Sampler: DPM++ SDE," in grid.text["parameters"]
    # Discord offers the list as choices: a name outside it never reaches the bot.
    with pytest.raises(AssertionError, match="is not one of"):
        await server.invoke("imagine", server.alice, prompt="a cat", sampler="DPM++ 3M")


async def test_a_sampler_the_model_cannot_take_is_refused_with_the_list(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    """The embedded model's cosine noise schedule repeats Karras steps in a multistep solver."""
    server = local_discord
    asked = await server.invoke(
        "imagine", server.alice, prompt="a red circle", sampler="DPM++ 2M Karras"
    )
    answer = await server.wait_for(
        lambda: server.ephemeral_answer(asked), what="the ephemeral refusal"
    )
    assert "DPM++ 2M Karras does not suit embedded's cosine noise schedule" in answer
    assert "DPM++ SDE Karras" in answer  # what to pick instead


async def test_buttons_show_only_what_the_size_caps_allow(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    """The embedded model draws 64×64: U1 makes 128 (twice native, by diffusion); under that
    upscale, Vary stays (128 is within diffusion's cap) and Upscale 2× is gone (256 is past
    the host's IMAGINE_UPSCALE_MAX_SIDE of 128)."""
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", upscale_max_side=128, max_count=1)
    async with running_bot(settings, trained_engine):
        asked = await server.invoke("imagine", server.alice, prompt="a red circle", seed=1)
        grid = await server.wait_for_result(asked)
        assert server.buttons(grid) == ["U1", "🔄", "V1"]
        pressed = await server.click(int(grid["id"]), "U1", server.alice)
        upscaled = await server.wait_for_result(pressed)
        assert png_of(server, upscaled).size == (128, 128)
        # (No Compare… either: this host makes one image a job, and a comparison two or more.)
        assert server.buttons(upscaled) == ["Vary (subtle)", "Vary (strong)"]
