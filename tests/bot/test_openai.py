"""/imagine on an image API through the local Discord: the model option, buttons, refusals."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from generation.openai_engine import EngineSet, OpenAIEngine
from tests.bot.conftest import RunningBot, bot_settings, running_bot
from tests.bot.test_imagine import NINE_BUTTONS, png_of
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.server import EPHEMERAL
from tests.fakeopenai import FakeImagesAPI


def with_dall_e_2(
    server: LocalDiscord, api: FakeImagesAPI, data_dir: Path, trained_engine: Any
) -> contextlib.AbstractAsyncContextManager[RunningBot]:
    """The bot with both engines: the embedded model and DALL-E 2 behind the fake API."""
    settings = bot_settings(
        server,
        data_dir,
        engine="both",
        openai_api_key="sk-test",
        openai_base_url=api.base_url,
        openai_model="dall-e-2",
    )
    engines = EngineSet(
        trained_engine, OpenAIEngine(["dall-e-2"], api_key="sk-test", base_url=api.base_url)
    )
    return running_bot(settings, engines)


async def test_imagine_with_model_dall_e_2_gives_a_grid_whose_buttons_work(
    local_discord: LocalDiscord, api: FakeImagesAPI, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    async with with_dall_e_2(server, api, tmp_path / "data", trained_engine) as running:
        offered = await server.suggestions("imagine", server.alice, "model", "")
        assert [c["value"] for c in offered] == ["embedded", "dall-e-2"]

        asked = await server.invoke(
            "imagine", server.alice, prompt="a yellow circle", model="dall-e-2", count=4
        )
        grid = await server.wait_for_result(asked)
        recipe = json.loads(png_of(server, grid).text["imagine-bot"])
        assert recipe["model_id"] == "openai:dall-e-2" and recipe["width"] == 1024
        assert sorted(server.buttons(grid)) == sorted(NINE_BUTTONS)
        assert [r.path for r in api.requests] == ["/v1/images/generations"]

        made = {}
        for label in ("U1", "V2", "🔄"):
            pressed = await server.click(int(grid["id"]), label, server.alice)
            answer = await server.wait_for_result(pressed)
            made[label] = json.loads(png_of(server, answer).text["imagine-bot"])
        assert made["U1"]["width"] == 2048 and made["U1"]["kind"] == "upscale"
        assert made["V2"]["model_id"] == "openai:dall-e-2"
        assert [r.path for r in api.requests] == [
            "/v1/images/generations",
            "/v1/images/variations",  # V2; U1 made no call
            "/v1/images/generations",  # 🔄
        ]
        # Under the local upscale, Vary goes back to a size the API makes.
        upscaled = next(m for m in server.messages.values() if "Vary (subtle)" in server.buttons(m))
        pressed = await server.click(int(upscaled["id"]), "Vary (subtle)", server.alice)
        subtle = json.loads(
            png_of(server, await server.wait_for_result(pressed)).text["imagine-bot"]
        )
        assert (subtle["width"], subtle["height"], subtle["count"]) == (1024, 1024, 1)

        # A refused prompt: only its author hears, and the refusal is on record.
        api.refuse_content()
        refused = await server.invoke("imagine", server.bob, prompt="something", model="dall-e-2")
        answer = await server.wait_for(
            lambda: server.ephemeral_answer(refused), what="the private refusal"
        )
        assert "refused" in answer and "content policy" in answer
        assert refused.original_id in server.deleted, "the public 'thinking…' answer is gone"
        assert not [
            m
            for m in server.channel_messages()
            if "refused" in m["content"] and not m["flags"] & EPHEMERAL
        ]
        events = await running.runtime.moderation.events(target_user_id=server.bob.id)
        assert [e.kind for e in events] == ["content_refused"]
