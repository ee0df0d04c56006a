"""Bad options and bad attachments: an ephemeral answer naming the option, nothing queued."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from tests.bot.conftest import RunningBot
from tests.bot.test_imagine import png_of
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.server import EPHEMERAL


def png(size: tuple[int, int], colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_what_discord_never_sends_is_refused_by_the_local_discord_too(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    for options in ({"steps": 500}, {"count": 9}, {"seed": -1}, {"aspect": "5:1"}):
        with pytest.raises(AssertionError, match=r"is outside|is not one of"):
            await server.invoke("imagine", server.alice, prompt="a red circle", **options)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        # Within what Discord lets a member send (the option's range and choices; the local
        # Discord refuses the rest as Discord does), past what the host allows.
        ({"steps": 100}, "steps"),  # Discord's range is 1-150; the host's IMAGINE_MAX_STEPS 50
        ({"aspect": "16:9"}, "aspect"),  # the embedded model draws 64×64 only
        ({"strength": 0.5}, "strength"),
        ({"prompt": "   "}, "prompt"),
    ],
)
async def test_bad_options_are_refused_naming_the_option(
    local_discord: LocalDiscord, bot: RunningBot, options: dict[str, Any], named: str
) -> None:
    server = local_discord
    asked = await server.invoke("imagine", server.alice, **{"prompt": "a red circle", **options})
    answer = await server.wait_for(lambda: server.ephemeral_answer(asked), what="the refusal")
    assert answer.startswith(f"**{named}**"), answer
    assert "Nothing was queued" in answer
    assert await bot.runtime.service.recent() == []


@pytest.mark.parametrize(
    ("upload", "says"),
    [
        (("notes.txt", b"hello", "text/plain"), "PNG, JPEG or WebP"),
        (("big.png", png((64, 64)) + b"\0" * (600 * 1024), "image/png"), "at most 512 KiB"),
        (("huge.png", png((300, 300)), "image/png"), "at most 65,536 pixels"),
        (("broken.png", b"\x89PNG\r\n\x1a\n" + b"junk" * 10, "image/png"), "can be read"),
    ],
)
async def test_bad_attachments_are_refused_before_anything_is_queued(
    local_discord: LocalDiscord,
    bot: RunningBot,
    upload: tuple[str, bytes, str],
    says: str,
) -> None:
    server = local_discord
    bot.runtime.settings.max_upload_bytes = 512 * 1024
    bot.runtime.settings.max_upload_pixels = 256 * 256
    attachment = server.upload(*upload)
    asked = await server.invoke("imagine", server.alice, prompt="a red circle", image=attachment)
    answer = await server.wait_for(lambda: server.ephemeral_answer(asked), what="the refusal")
    assert answer.startswith("**image**"), answer
    assert says in answer
    assert await bot.runtime.service.recent() == []
    public = [m for m in server.channel_messages() if not m["flags"] & EPHEMERAL]
    assert public == [], "the public 'thinking…' answer was replaced by the ephemeral one"


async def test_an_attached_image_is_the_start_of_an_img2img_job(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    attachment = server.upload("start.png", png((96, 64), "yellow"))
    asked = await server.invoke(
        "imagine", server.alice, prompt="a yellow square", image=attachment, strength=0.5, seed=3
    )
    result = await server.wait_for_result(asked)
    recipe = json.loads(png_of(server, result).text["imagine-bot"])
    assert recipe["kind"] == "img2img"
    assert recipe["strength"] == 0.5
    assert recipe["init_image_sha256"]
    job = (await bot.runtime.service.job(recipe["job_id"])).job
    assert job.init_image_path is not None
    assert bot.runtime.store.exists(job.init_image_path)


def test_an_aspect_maps_to_the_native_area_or_an_apis_nearest_size() -> None:
    from generation.parameters import size_for

    assert size_for((1, 1), (64, 64)) == (64, 64)
    assert size_for((16, 9), (512, 512)) == (680, 384)
    dall_e_3 = ((1024, 1024), (1792, 1024), (1024, 1792))
    assert size_for((16, 9), (1024, 1024), dall_e_3) == (1792, 1024)
    assert size_for((2, 3), (1024, 1024), dall_e_3) == (1024, 1792)
    assert size_for((1, 1), (1024, 1024), dall_e_3) == (1024, 1024)
    dall_e_2 = ((256, 256), (512, 512), (1024, 1024))  # all square: the native area decides
    assert size_for((16, 9), (1024, 1024), dall_e_2) == (1024, 1024)
