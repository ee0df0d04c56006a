"""Discord's rules and each server's own, through the local Discord: a flagged image only in
an age-restricted channel, never by DM; previews that follow; a server's settings; approving a
withheld image; ❌ on every message; a command Discord gave up on; threads and forum posts;
button jobs (no strike for a parent's prompt; every one from the bucket)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.admin import NOT_ALLOWED
from generation.access import HOST
from tests.bot.conftest import RunningBot, running_bot, settled_delivery, worker_for
from tests.bot.test_access import answer_to, two_server_settings
from tests.bot.test_imagine import png_of
from tests.bot.test_moderation import FixedScores
from tests.fakediscord.actions import CommandHidden, LocalDiscord

FLAG_ALL = {"BUTTOCKS_EXPOSED": 0.97}


async def _job_of(running: RunningBot, interaction: Any) -> int:
    for view in await running.runtime.service.recent(limit=100):
        if view.job.interaction_id == interaction.id:
            return view.job.id
    raise AssertionError(f"no job for interaction {interaction.id}")


async def _finished(server: LocalDiscord, running: RunningBot, asked: Any) -> dict[str, Any]:
    """The result message (the response, or a channel message) once the job is delivered."""
    delivery = await settled_delivery(running, await _wait_job(running, asked))
    assert delivery.state == "delivered", delivery
    return server.messages[delivery.result_message_id or asked.original_id]


async def _wait_job(running: RunningBot, asked: Any, seconds: float = 30.0) -> int:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            return await _job_of(running, asked)
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


def _previews(server: LocalDiscord, message_id: int | None) -> list[str]:
    """The names of preview files the message ever carried."""
    return [
        attachment["filename"]
        for edited, stored in server.edits
        if edited == message_id
        for attachment in stored["attachments"]
        if "preview" in attachment["filename"]
    ]


# policy × where it was asked → what the result shows: (spoilered image, withheld)
MATRIX = [
    ("spoiler", "plain", "withheld"),
    ("spoiler", "nsfw", "spoiler"),
    ("spoiler", "nsfw thread", "spoiler"),
    ("withhold", "plain", "withheld"),
    ("withhold", "nsfw", "withheld"),
    ("off", "plain", "clear"),
]


async def test_a_flagged_image_is_shown_only_in_an_age_restricted_channel_and_never_by_dm(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    nsfw = server.add_channel(nsfw=True)
    channels = {
        "plain": server.channel_id,
        "nsfw": nsfw,
        "nsfw thread": server.add_channel(kind="thread", parent_id=nsfw),
    }
    checker = FixedScores(FLAG_ALL)
    settings = two_server_settings(server, tmp_path, safety_policy="off")  # the server tightens it
    async with running_bot(settings, trained_engine, checker) as running:
        servers = running.runtime.service.servers
        for policy, where, shown in MATRIX:
            if policy == "off":
                await servers.update(server.guild_id, HOST, safety_policy="host")
            else:
                await servers.update(server.guild_id, HOST, safety_policy=policy)
            asked = await server.invoke(
                "imagine",
                server.alice,
                channel_id=channels[where],
                prompt="a circle",
                steps=4,
                count=1,
            )
            result = await _finished(server, running, asked)
            names = [a["filename"] for a in result["attachments"]]
            previews = _previews(server, asked.original_id)
            case = (policy, where, names, previews)
            if shown == "withheld":
                assert names == [] and result["components"] == [], case
                assert "held back for the moderators" in result["content"], case
                assert previews == [], case  # the check has not seen what a preview shows
            elif shown == "spoiler":
                assert len(names) == 1 and names[0].startswith("SPOILER_"), case
                assert all(p.startswith("SPOILER_") for p in previews), case
            else:
                assert len(names) == 1 and not names[0].startswith("SPOILER_"), case
                assert previews and not any(p.startswith("SPOILER_") for p in previews), case

        # The channel would not take it: a flagged result never goes by DM instead.
        await servers.update(server.guild_id, HOST, safety_policy="spoiler")
        asked = await server.invoke(
            "imagine", server.alice, channel_id=nsfw, prompt="a circle", steps=4, count=1
        )
        job = await _wait_job(running, asked)
        server.expire(asked)
        server.forbid(nsfw)
        delivery = await settled_delivery(running, job)
        assert delivery.state == "undeliverable"
        assert "never sent by direct message" in (delivery.last_error or "")
        assert server.dms(server.alice) == []


async def test_a_server_keeps_imagine_to_age_restricted_channels_and_edits_its_own_settings(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    nsfw = server.add_channel(nsfw=True)
    async with running_bot(two_server_settings(server, tmp_path), trained_engine) as running:
        said = await answer_to(server, server.admin, "admin settings", age_restricted_only=True)
        assert "only in age-restricted channels" in said
        refused = await answer_to(server, server.alice, "imagine", prompt="a circle", steps=4)
        assert "only in age-restricted channels" in refused and "Nothing was queued" in refused
        asked = await server.invoke(
            "imagine", server.alice, channel_id=nsfw, prompt="a circle", steps=4, count=1
        )
        await _finished(server, running, asked)
        # The other server is not touched.
        asked = await server.invoke("imagine", server.carol, prompt="a circle", steps=4, count=1)
        await _finished(server, running, asked)

        # Stricter than the host: yes. Looser: no (host admins may).
        said = await answer_to(server, server.admin, "admin settings", safety="withhold")
        assert "**Safety policy:** withhold (this server's" in said
        refused = await answer_to(server, server.admin, "admin settings", safety="off")
        assert "a server may keep it or choose a stricter one" in refused
        refused = await answer_to(server, server.host, "admin settings", safety="off")
        assert "a server may keep it or choose a stricter one" in refused, "host admins too"
        said = await answer_to(server, server.host, "admin settings", safety="host")
        assert "**Safety policy:** spoiler (the host's" in said
        refused = await answer_to(
            server, server.admin, "admin settings", quota="images_per_user_day", limit=10**6
        )
        assert "may not be above the host's" in refused
        said = await answer_to(
            server, server.admin, "admin settings", quota="queued_per_user", limit=1
        )
        assert "queued_per_user 1 (this server's)" in said

        # A term blocked here is blocked here only, and strikes here.
        said = await answer_to(server, server.admin, "admin settings", block="teapot, kettle*")
        assert "here, on top of the host's:** teapot, kettle\\*" in said
        refused = await answer_to(
            server, server.alice, "imagine", channel_id=nsfw, prompt="a Kettles stack"
        )
        assert "does not allow" in refused and "Strike 1 of 3" in refused
        asked = await server.invoke("imagine", server.carol, prompt="a teapot", steps=4, count=1)
        await _finished(server, running, asked)

        # Another server's moderator changes their own server only; members nothing.
        said = await answer_to(server, server.erin, "admin settings", safety="withhold")
        rules = await running.runtime.service.servers.rules(server.guild_id)
        other = await running.runtime.service.servers.rules(server.other_guild_id)
        assert rules.safety_policy == "spoiler" and other.safety_policy == "withhold"
        assert "teapot" in rules.blocked_terms and other.blocked_terms == ()
        with pytest.raises(CommandHidden):
            await server.invoke("admin settings", server.alice, safety="off")
        server.show_to_everyone("admin")
        assert await answer_to(server, server.alice, "admin settings", safety="host") == NOT_ALLOWED
        events = await running.runtime.moderation.events()
        changed = [(e.guild_id, e.actor_id) for e in events if e.kind == "settings"]
        admin, host, erin = server.admin.id, server.host.id, server.erin.id
        assert sorted(changed) == sorted(
            [(server.guild_id, who) for who in (admin, admin, host, admin, admin)]
            + [(server.other_guild_id, erin)]
        ), "each change on record; refused ones change nothing"


async def test_approving_a_withheld_image_delivers_it_and_tells_the_requester(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = two_server_settings(server, tmp_path, safety_policy="withhold")
    async with running_bot(settings, trained_engine, FixedScores(FLAG_ALL)) as running:
        asked = await server.invoke("imagine", server.alice, prompt="a circle", steps=4, count=1)
        withheld = await _finished(server, running, asked)
        assert withheld["attachments"] == []
        job = await _job_of(running, asked)
        server.expire(asked)  # approved after its token died: a new message, mentioning them
        review = await server.invoke("admin flagged", server.admin)
        stored = await server.wait_for(
            lambda: (m := server.original(review)) and m["components"] and m, what="the review"
        )
        await server.click(int(stored["id"]), "Approve 1", server.admin)
        shown = await server.wait_for(
            lambda: [
                m
                for m in server.channel_messages()
                if m["attachments"] and m["content"].startswith(f"<@{server.alice.id}>")
            ],
            what="the approved result",
        )
        assert len(shown) == 1
        message = shown[0]
        assert f"<@{server.alice.id}>" in message["content"]
        assert [m["id"] for m in message["mentions"]] == [str(server.alice.id)], message
        assert "a moderator reviewed and approved it" in message["content"]
        assert not message["attachments"][0]["filename"].startswith("SPOILER_")
        assert png_of(server, message).size[0] > 0
        delivery = await settled_delivery(running, job)
        assert delivery.result_message_id == int(message["id"]) and not delivery.withheld
        # The sweep sends nothing more.
        await asyncio.sleep(2 * settings.delivery_sweep_interval)
        assert [m for m in server.channel_messages() if m["content"].startswith("<@")] == [message]


async def test_cross_removes_every_message_of_a_job_and_cancels_one_still_waiting(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = two_server_settings(server, tmp_path, delivery_sweep_interval=0.2)
    async with running_bot(settings) as running:
        # Delivered late: the progress message says where, the result is a channel message.
        # (No worker until the token is dead: a fast job must not beat the test to it.)
        asked = await server.invoke("imagine", server.alice, prompt="a circle", steps=4, count=1)
        job = await _wait_job(running, asked)
        await server.wait_for(lambda: server.queued(asked), what="queued")
        server.expire(asked)
        await worker_for(running.runtime, settings, trained_engine).run(burst=True)
        delivery = await settled_delivery(running, job)
        assert delivery.delivered_via == "channel"
        original, result = asked.original_id, delivery.result_message_id
        assert original in server.messages and result in server.messages
        await server.react(result, "❌", server.alice)
        await server.wait_for(
            lambda: original not in server.messages and result not in server.messages,
            what="both messages gone",
        )
        assert (await running.runtime.service.job(job)).job.status == "deleted"

    # A job still waiting (no worker): ❌ on its message cancels it, and nothing is posted.
    async with running_bot(two_server_settings(server, tmp_path)) as running:
        asked = await server.invoke("imagine", server.bob, prompt="a square", steps=4, count=1)
        await server.wait_for(lambda: server.queued(asked), what="queued")
        job = await _job_of(running, asked)
        await server.react(asked.original_id, "❌", server.bob)
        await server.wait_for(lambda: asked.original_id not in server.messages, what="removed")
        view = await running.runtime.service.job(job)
        assert view.job.status == "cancelled"
        assert view.delivery is not None and view.delivery.state == "undeliverable"
        assert (await running.runtime.service.usage(server.bob.id)).images_today == 0


async def test_a_command_discord_gave_up_on_is_never_made_nor_charged(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    """Discord refuses the first answer (10062: it told the member the command failed): the
    request, written down before answering, is dropped, and no job is made or charged."""
    server = local_discord
    async with running_bot(two_server_settings(server, tmp_path), trained_engine) as running:
        server.response_deadline = 0.0  # every first answer comes too late: 10062
        asked = await server.invoke("imagine", server.alice, prompt="a circle", steps=4)
        await server.wait_for(
            lambda: any(f"/interactions/{asked.id}/" in call.path for call in server.calls),
            what="the answer Discord refuses",
        )
        for _ in range(50):  # the record goes once the refusal is back
            if not await running.bot.intent_log.pending():
                break
            await asyncio.sleep(0.1)
        assert await running.bot.intent_log.pending() == []
        await asyncio.sleep(0.5)
        assert await running.runtime.service.recent() == []
        assert (await running.runtime.service.usage(server.alice.id)).images_today == 0
        assert server.channel_messages() == []


async def test_threads_and_forum_posts_work_and_private_channels_keep_their_jobs(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    thread = server.add_channel(kind="thread")
    post = server.add_channel(kind="forum_post")
    private = server.add_channel(private=True)
    async with running_bot(two_server_settings(server, tmp_path), trained_engine) as running:
        jobs = {}
        for name, channel in (("thread", thread), ("post", post), ("private", private)):
            asked = await server.invoke(
                "imagine", server.alice, channel_id=channel, prompt="a circle", steps=4, count=1
            )
            if name == "post":  # late: a message in the post itself
                await server.wait_for(lambda a=asked: a.answered, what="the answer")
                server.expire(asked)
            message = await _finished(server, running, asked)
            assert int(message["channel_id"]) == channel, name
            jobs[name] = await _job_of(running, asked)
        # Members see jobs of channels everyone can see; a private channel's only its people.
        assert f"Job {jobs['thread']}" in await answer_to(
            server, server.bob, "job", id=jobs["thread"]
        )
        hidden = await answer_to(server, server.bob, "job", id=jobs["private"])
        assert f"job {jobs['private']} is not shown to you" in hidden
        assert f"Job {jobs['private']}" in await answer_to(
            server, server.alice, "job", id=jobs["private"]
        )
        assert f"Job {jobs['private']}" in await answer_to(
            server, server.admin, "job", id=jobs["private"]
        )


async def test_button_jobs_strike_nobody_for_a_parents_prompt_and_all_take_from_the_bucket(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = two_server_settings(server, tmp_path, bucket_size=1, bucket_refill_seconds=3600)
    async with running_bot(settings, trained_engine) as running:
        start = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(start, "PNG")
        asked = await server.invoke(
            "imagine",
            server.alice,
            prompt="a circle",
            steps=4,
            count=1,
            image=server.upload("start.png", start.getvalue()),
        )
        result = await _finished(server, running, asked)
        parent = json.loads(png_of(server, result).text["imagine-bot"])["job_id"]
        first = await server.click(int(result["id"]), "🔄", server.bob)
        await server.wait_for(lambda: first.original_id, what="the first reroll answered")
        second = await server.click(int(result["id"]), "🔄", server.bob)
        text = await server.wait_for(lambda: server.ephemeral_answer(second), what="refused")
        assert "too many button presses" in text, "an img2img reroll takes a token too"

        # The server blocks the parent's prompt since: bob's press is refused, not struck.
        await answer_to(server, server.admin, "admin settings", block="circle")
        pressed = await server.click(int(result["id"]), "U1", server.alice)
        text = await server.wait_for(lambda: server.ephemeral_answer(pressed), what="refused")
        assert f"job {parent}'s prompt is not allowed in this server any more" in text
        events = await running.runtime.moderation.events(target_user_id=server.alice.id)
        assert [e for e in events if e.kind == "prompt_blocked"] == []


async def test_a_button_pressed_in_a_dm_follows_the_dms_rules_not_its_parents_channel(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    nsfw = server.add_channel(nsfw=True)
    checker = FixedScores({})  # nothing flagged at first
    settings = two_server_settings(server, tmp_path, safety_policy="spoiler")
    async with running_bot(settings, trained_engine, checker) as running:
        asked = await server.invoke(
            "imagine", server.alice, channel_id=nsfw, prompt="a circle", steps=4, count=1
        )
        await server.wait_for(lambda: asked.answered, what="the answer")
        server.expire(asked)
        server.forbid(nsfw)  # the channel will not take it: it goes by DM, with its buttons
        delivery = await settled_delivery(running, await _wait_job(running, asked))
        assert delivery.delivered_via == "dm"
        checker._scores.update(FLAG_ALL)  # what the variation makes is flagged
        pressed = await server.click(delivery.result_message_id, "U1", server.alice)
        varied = await _finished(server, running, pressed)
        assert varied["attachments"] == [], "a flagged image never shows in a DM"
        assert "held back for the moderators" in varied["content"]
        assert _previews(server, pressed.original_id) == []
