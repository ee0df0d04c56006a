"""/settings (a member's own defaults) and remix mode, through the local Discord."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from generation.access import Actor
from generation.preferences import Preferences
from generation.presets import Preset
from tests.bot.conftest import bot_settings, running_bot
from tests.bot.test_imagine import png_of
from tests.fakediscord.actions import LocalDiscord


def _recipe(server: LocalDiscord, result: dict[str, Any]) -> dict[str, Any]:
    return json.loads(png_of(server, result).text["imagine-bot"])


def _rows(message: dict[str, Any]) -> list[list[str]]:
    """Each row's components: a select by its placeholder, a button by its label."""
    return [
        [item.get("placeholder") or item.get("label") or "" for item in row["components"]]
        for row in message["components"]
    ]


async def test_settings_are_the_defaults_of_the_next_jobs_until_reset(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    # The random-weight model draws any size (the trained one draws 64×64 only).
    settings = bot_settings(server, tmp_path / "data", model="embedded-random", max_count=1)
    async with running_bot(settings, engine) as running:
        shown = await server.invoke("settings", server.alice)
        panel = await server.wait_for(lambda: server.original(shown), what="the settings")
        assert panel["flags"] & 64, "settings are shown to the member alone"
        assert _rows(panel) == [
            ["Model"],
            ["Aspect"],
            ["Sampler"],
            ["Remix mode: off", "Private mode: off", "Steps & guidance…", "Reset settings"],
        ]
        panel_id = int(panel["id"])

        await server.choose(panel_id, "Aspect", ["16:9"], server.alice)
        await server.wait_for(lambda: "**Aspect:** 16:9" in server.messages[panel_id]["content"])
        await server.choose(panel_id, "Sampler", ["Euler a"], server.alice)
        await server.wait_for(lambda: "Euler a" in server.messages[panel_id]["content"])
        opened = await server.click(panel_id, "Steps & guidance…", server.alice)
        await server.wait_for(lambda: opened.modal, what="the steps form")
        fields = server.modal_fields(opened)
        assert list(fields.values()) == ["", ""]  # nothing set yet: the model's own
        steps_label, guidance_label = list(fields)
        await server.submit_modal(opened, {steps_label: "3", guidance_label: "4.5"})
        await server.wait_for(lambda: "**Steps:** 3" in server.messages[panel_id]["content"])
        assert "**Guidance:** 4.5" in server.messages[panel_id]["content"]
        stored = await running.runtime.service.preferences(server.alice.id)
        assert (stored.aspect, stored.sampler, stored.steps, stored.guidance) == (
            "16:9",
            "Euler a",
            3,
            4.5,
        )

        # The next job takes them; bob's takes none of alice's.
        asked = await server.invoke("imagine", server.alice, prompt="a red circle", seed=1)
        made = _recipe(server, await server.wait_for_result(asked))
        assert (made["steps"], made["guidance"], made["sampler"]) == (3, 4.5, "Euler a")
        assert made["width"] * 9 == made["height"] * 16 or made["width"] > made["height"]
        by_bob = await server.invoke("imagine", server.bob, prompt="a red circle", seed=1)
        bobs = _recipe(server, await server.wait_for_result(by_bob))
        assert bobs["steps"] != 3 and bobs["width"] == bobs["height"]

        # The command's options and the prompt's parameters win over the settings.
        asked = await server.invoke(
            "imagine", server.alice, prompt="a red circle --ar 1:1", seed=1, steps=2
        )
        made = _recipe(server, await server.wait_for_result(asked))
        assert (made["steps"], made["guidance"]) == (2, 4.5)
        assert made["width"] == made["height"]

        # A bad number in the form is refused, naming it; nothing changes.
        opened = await server.click(panel_id, "Steps & guidance…", server.alice)
        await server.wait_for(lambda: opened.modal, what="the steps form")
        assert list(server.modal_fields(opened).values()) == ["3", "4.5"]
        sent = await server.submit_modal(opened, {steps_label: "lots"})
        refused = await server.wait_for(lambda: server.ephemeral_answer(sent), what="refusal")
        assert "steps" in refused and "whole number" in refused
        assert (await running.runtime.service.preferences(server.alice.id)).steps == 3

        await server.click(panel_id, "Reset settings", server.alice)
        await server.wait_for(
            lambda: "**Steps:** the model's own" in server.messages[panel_id]["content"]
        )
        asked = await server.invoke("imagine", server.alice, prompt="a red circle", seed=1)
        made = _recipe(server, await server.wait_for_result(asked))
        assert made["steps"] == bobs["steps"] and made["width"] == made["height"]


async def test_a_default_model_another_server_offers_is_not_used_here_and_the_member_is_told(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", model="embedded-random", max_count=1)
    async with running_bot(settings, engine) as running:
        service = running.runtime.service
        # A preset only the other server may use, saved as alice's default (as if she had
        # picked it there, where it was offered).
        host = Actor(user_id=0, guild_id=None, host=True)
        only_there = Preset(
            name="shapes", source="embedded-random", guild_ids=(server.other_guild_id,)
        )
        await service.put_preset(host, only_there)
        prefs = await service.preferences(server.alice.id)
        await service.set_preferences(server.alice.id, prefs.changed(50, model="shapes"))
        asked = await server.invoke("imagine", server.alice, prompt="a red circle", seed=1)
        made = _recipe(server, await server.wait_for_result(asked))
        assert made.get("preset") != "shapes"
        said = await server.wait_for(lambda: server.ephemeral_answer(asked), what="the note")
        assert "Your default model **shapes** is not offered here" in said


async def test_remix_mode_opens_the_prompt_before_a_variation_and_the_job_records_the_edit(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", model="embedded-random", max_count=1)
    async with running_bot(settings, engine) as running:
        asked = await server.invoke(
            "imagine", server.alice, prompt="a red circle", negative="green", seed=3
        )
        grid = await server.wait_for_result(asked)
        parent = _recipe(server, grid)

        shown = await server.invoke("settings", server.alice)
        panel = await server.wait_for(lambda: server.original(shown), what="the settings")
        await server.click(int(panel["id"]), "Remix mode: off", server.alice)
        await server.wait_for(
            lambda: "Remix mode: on" in server.buttons(server.messages[int(panel["id"])])
        )

        pressed = await server.click(int(grid["id"]), "V1", server.alice)
        await server.wait_for(lambda: pressed.modal, what="the remix form")
        assert server.modal_fields(pressed) == {
            "Prompt": "a red circle",
            "Negative prompt": "green",
        }
        sent = await server.submit_modal(
            pressed, {"Prompt": "a blue circle --no red", "Negative prompt": "yellow"}
        )
        child = _recipe(server, await server.wait_for_result(sent))
        assert child["kind"] == "variation" and child["parent_job_id"] == parent["job_id"]
        assert (child["prompt"], child["negative_prompt"]) == ("a blue circle", "yellow, red")
        stored = (await running.runtime.service.job(child["job_id"])).job
        assert stored.raw_prompt == "a blue circle --no red"

        # A remix cannot make another picture: --ar is refused, naming it; nothing is queued.
        again = await server.click(int(grid["id"]), "🔄", server.alice)
        await server.wait_for(lambda: again.modal, what="the remix form")
        sent = await server.submit_modal(again, {"Prompt": "a blue circle --ar 2:1"})
        refused = await server.wait_for(lambda: server.ephemeral_answer(sent), what="refusal")
        assert "--ar cannot change in a remix" in refused

        # Bob (remix off) varies straight away; alice's form is hers alone.
        by_bob = await server.click(int(grid["id"]), "V1", server.bob)
        assert by_bob.modal is None
        made = _recipe(server, await server.wait_for_result(by_bob))
        assert made["prompt"] == "a red circle"


async def test_show_posts_a_result_again_with_working_buttons_for_whoever_may_see_it(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    private = server.add_channel(private=True)
    nsfw = server.add_channel(nsfw=True)
    settings = bot_settings(
        server,
        tmp_path / "data",
        model="embedded-random",
        max_count=1,
        guild_ids=[server.guild_id, server.other_guild_id],
    )
    async with running_bot(settings, engine):
        grid = await server.wait_for_result(
            await server.invoke("imagine", server.alice, prompt="a red circle", seed=2)
        )
        job_id = _recipe(server, grid)["job_id"]

        # Bob, a member of the server, shows alice's public job: a post of its own, in public,
        # whose buttons work for him.
        shown = await server.invoke("show", server.bob, id=job_id)
        post = await server.wait_for_result(shown)
        assert not post["flags"] & 64 and int(post["id"]) != int(grid["id"])
        assert post["attachments"] and "U1" in server.buttons(post)
        upscaled = await server.wait_for_result(
            await server.click(int(post["id"]), "U1", server.bob)
        )
        made = _recipe(server, upscaled)
        assert (made["kind"], made["parent_job_id"]) == ("upscale", job_id)
        # ✉️ on the post sends bob the recipe.
        await server.react(int(post["id"]), "✉️", server.bob)
        await server.wait_for(lambda: server.dms(server.bob), what="the recipe by DM")

        # Carol, of another server, cannot (it is as if there were no such job).
        refused = await server.invoke("show", server.carol, id=job_id)
        said = await server.wait_for(lambda: server.ephemeral_answer(refused), what="refusal")
        assert "no job" in said.lower() or "not found" in said.lower()

        # A job made in a private channel: its owner may show it, bob may not.
        hidden = await server.wait_for_result(
            await server.invoke("imagine", server.alice, channel_id=private, prompt="a square")
        )
        hidden_id = _recipe(server, hidden)["job_id"]
        refused = await server.invoke("show", server.bob, id=hidden_id)
        said = await server.wait_for(lambda: server.ephemeral_answer(refused), what="refusal")
        assert f"job {hidden_id} is not shown to you" in said
        await server.wait_for_result(await server.invoke("show", server.alice, id=hidden_id))

        # A job of an age-restricted channel is shown only in one.
        adult = await server.wait_for_result(
            await server.invoke("imagine", server.alice, channel_id=nsfw, prompt="a circle")
        )
        adult_id = _recipe(server, adult)["job_id"]
        refused = await server.invoke("show", server.alice, id=adult_id)
        said = await server.wait_for(lambda: server.ephemeral_answer(refused), what="refusal")
        assert "age-restricted channel: show it in one" in said

        # ❌ by alice on her grid takes the post with it.
        await server.react(int(grid["id"]), "❌", server.alice)
        await server.wait_for(
            lambda: int(post["id"]) in server.deleted, what="the shown post deleted"
        )


async def test_a_remix_text_is_the_members_own_and_the_form_works_only_on_its_job(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(
        server, tmp_path / "data", model="embedded-random", max_count=1, blocked_terms="dragon"
    )
    async with running_bot(settings, engine) as running:
        service = running.runtime.service
        await service.set_preferences(server.alice.id, Preferences(remix=True))
        first = await server.wait_for_result(
            await server.invoke("imagine", server.alice, prompt="a red circle", seed=1)
        )
        second = await server.wait_for_result(
            await server.invoke("imagine", server.bob, prompt="a blue square", seed=1)
        )
        bobs = _recipe(server, second)["job_id"]

        # A blocked word typed in the form is the member's own: refused, and struck.
        opened = await server.click(int(first["id"]), "V1", server.alice)
        await server.wait_for(lambda: opened.modal, what="the remix form")
        sent = await server.submit_modal(opened, {"Prompt": "a red dragon"})
        refused = await server.wait_for(lambda: server.ephemeral_answer(sent), what="refusal")
        assert "does not allow" in refused and "Strike 1 of 3" in refused
        events = await running.runtime.moderation.events(target_user_id=server.alice.id)
        assert [e for e in events if e.kind == "prompt_blocked"]

        # A form whose custom id names another job than the message it came from is refused.
        opened = await server.click(int(first["id"]), "V1", server.alice)
        await server.wait_for(lambda: opened.modal, what="the remix form")
        assert opened.modal is not None
        opened.modal["custom_id"] = f"imagine-remix:v:{bobs}:0"
        sent = await server.submit_modal(opened, {"Prompt": "a green square"})
        refused = await server.wait_for(lambda: server.ephemeral_answer(sent), what="refusal")
        assert "from the job's own result" in refused


async def test_whoever_showed_a_result_may_take_their_post_back_and_shows_are_limited(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", model="embedded-random", max_count=1)
    async with running_bot(settings, engine) as running:
        grid = await server.wait_for_result(
            await server.invoke("imagine", server.alice, prompt="a red circle", seed=2)
        )
        job_id = _recipe(server, grid)["job_id"]
        post = await server.wait_for_result(await server.invoke("show", server.bob, id=job_id))
        await server.react(int(post["id"]), "❌", server.bob)
        await server.wait_for(lambda: int(post["id"]) in server.deleted, what="the post gone")
        assert (await running.runtime.service.job(job_id)).job.status == "succeeded"
        assert int(grid["id"]) not in server.deleted, "alice's own result stays"
        for _ in range(2):
            await server.wait_for_result(await server.invoke("show", server.bob, id=job_id))
        refused = await server.invoke("show", server.bob, id=job_id)
        said = await server.wait_for(lambda: server.ephemeral_answer(refused), what="refusal")
        assert "You showed 3 results just now" in said
