"""Moderation through the local Discord: the prompt filter, the safety policies, /admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.admin import HOST_ONLY, NOT_ALLOWED
from tests.bot.conftest import bot_settings, running_bot
from tests.bot.test_imagine import NINE_BUTTONS
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.server import EPHEMERAL


class FixedScores:
    """A safety checker that finds the same thing in every image."""

    name = "fixed"

    def __init__(self, scores: dict[str, float]) -> None:
        self._scores = scores

    def scores(self, image: Image.Image) -> dict[str, float]:
        return dict(self._scores)


async def _answer(server: LocalDiscord, interaction: Any) -> str:
    return await server.wait_for(lambda: server.ephemeral_answer(interaction), what="an answer")


async def test_a_blocked_prompt_is_refused_privately_recorded_and_counted(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", blocked_terms="gore,nude")
    async with running_bot(settings, trained_engine) as running:
        asked = await server.invoke("imagine", server.alice, prompt="a n.u.d.3 red circle")
        answer = await _answer(server, asked)
        assert "does not allow" in answer and "Strike 1 of 3" in answer
        assert "nud" not in answer.lower()
        assert [kind for iid, kind, _body in server.callbacks if iid == asked.id] == [4]
        assert all(m["flags"] & EPHEMERAL for m in server.channel_messages())
        assert await running.runtime.service.recent() == []
        events = await running.runtime.moderation.events(target_user_id=server.alice.id)
        assert [(e.kind, e.details["term"]) for e in events] == [("prompt_blocked", "nude")]


@pytest.mark.parametrize("policy", ["spoiler", "withhold"])
async def test_flagged_images_are_spoilered_or_withheld_by_the_guild_policy(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any, policy: str
) -> None:
    server = local_discord
    settings = bot_settings(
        server,
        tmp_path / "data",
        guild_safety_policies={server.guild_id: policy},
        moderation_channel_id=server.channel_id,
    )
    checker = FixedScores({"BUTTOCKS_EXPOSED": 0.91})
    nsfw = server.add_channel(nsfw=True)  # elsewhere a flagged image is withheld whatever
    async with running_bot(settings, trained_engine, checker) as running:
        asked = await server.invoke("imagine", server.alice, channel_id=nsfw, prompt="a red circle")
        result = await server.wait_for(
            lambda: (m := server.original(asked)) and "safety check" in m["content"] and m,
            what="the result",
        )
        job = (await running.runtime.service.recent())[0]
        assert {image.review for image in job.images} == {"pending"}
        assert all(image.flags["safety"] == {"BUTTOCKS_EXPOSED": 0.91} for image in job.images)
        events = await running.runtime.moderation.events(target_user_id=server.alice.id)
        assert [e.kind for e in events] == ["image_flagged"] * 4
        if policy == "spoiler":
            assert [a["filename"] for a in result["attachments"]] == [
                f"SPOILER_imagine-{job.job.id}.png"
            ]
            assert sorted(server.buttons(result)) == sorted(NINE_BUTTONS)
        else:
            assert result["attachments"] == [] and result["components"] == []
            assert "held back for the moderators" in result["content"]
            told = await server.wait_for(
                lambda: [m for m in server.channel_messages() if "withheld" in m["content"]],
                what="the moderators' notice",
            )
            assert f"Job {job.job.id}" in told[0]["content"]
            assert told[0]["attachments"] == []


ADMIN_COMMANDS: list[tuple[str, dict[str, Any]]] = [
    ("logs", {}),
    ("job", {"id": 1}),
    ("ban", {"user": "bob", "reason": "spam", "duration": "1d"}),
    ("unban", {"user": "bob"}),
    ("quota", {"user": "bob", "queued_per_user": 2}),
    ("delete", {"job": 1}),
    ("flagged", {}),
]


async def test_only_moderators_may_use_admin_commands_and_buttons_and_each_action_is_recorded(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", admin_user_ids=[server.host.id])
    checker = FixedScores({"FEMALE_BREAST_EXPOSED": 0.8})
    nsfw = server.add_channel(nsfw=True)
    async with running_bot(settings, trained_engine, checker) as running:
        asked = await server.invoke("imagine", server.bob, channel_id=nsfw, prompt="a blue square")
        await server.wait_for_result(asked)

        def options(values: dict[str, Any]) -> dict[str, Any]:
            return {k: server.bob if v == "bob" else v for k, v in values.items()}

        server.show_to_everyone("admin")  # the bot's own checks are what stands
        for name, values in ADMIN_COMMANDS:
            refused = await server.invoke(f"admin {name}", server.alice, **options(values))
            assert await _answer(server, refused) == NOT_ALLOWED, name
        moderation = running.runtime.moderation
        assert await moderation.events(target_user_id=server.bob.id) == [
            e
            for e in await moderation.events(target_user_id=server.bob.id)
            if e.kind == "image_flagged"
        ], "a refused command changes nothing"

        # The review queue, as a moderator (by role) sees it, and its buttons.
        review = await server.invoke("admin flagged", server.admin)
        await _answer(server, review)  # after "thinking…", the list
        listing = server.original(review)
        assert listing["attachments"][0]["filename"].startswith("SPOILER_")
        for label in ("Approve 1", "Delete job 1", f"Ban {server.bob.id}"):
            pressed = await server.click(int(listing["id"]), label, server.alice)
            assert await _answer(server, pressed) == NOT_ALLOWED, label
        assert (await running.runtime.service.job(1)).job.status == "succeeded"

        approved = await server.click(int(listing["id"]), "Approve 1", server.admin)
        assert "approved" in await _answer(server, approved)
        for name, values in ADMIN_COMMANDS:
            # Quotas hold on every server: the host's admins set them, not a server's
            # Administrator (who bans in their server).
            host_wide = name == "quota"
            done = await server.invoke(f"admin {name}", server.owner, **options(values))
            said = await _answer(server, done)
            assert (said == HOST_ONLY) is host_wide and said != NOT_ALLOWED, name
            if host_wide:
                done = await server.invoke(f"admin {name}", server.host, **options(values))
                assert await _answer(server, done) not in (NOT_ALLOWED, HOST_ONLY), name
        assert (await running.runtime.service.job(1)).job.status == "deleted"
        # The moderator's answer does not wait on the removal: it runs in the background.
        await server.wait_for(
            lambda: asked.original_id in server.deleted, what="the result gone with the job"
        )
        assert not running.runtime.store.exists("images/1/1/1-0.png")

        actions = [
            (e.kind, e.actor_id)
            for e in reversed(await moderation.events(target_user_id=server.bob.id))
            if e.kind != "image_flagged"
        ]
        assert actions == [
            ("image_approved", server.admin.id),
            ("ban", server.owner.id),
            ("unban", server.owner.id),
            ("quota", server.host.id),
            ("delete", server.owner.id),
        ]


async def test_admin_logs_lists_filters_and_pages_the_jobs(
    local_discord: LocalDiscord, settings: Any
) -> None:
    server = local_discord
    async with running_bot(settings):  # no worker: the jobs wait, which is enough to list
        for i in range(12):
            user = server.alice if i % 3 else server.bob
            asked = await server.invoke("imagine", user, prompt=f"prompt number {i}")
            await server.wait_for(lambda a=asked: server.queued(a), what="the job queued")
        shown = await server.invoke("admin logs", server.admin)
        page = await server.wait_for(lambda: server.original(shown), what="the logs")
        fields = page["embeds"][0]["fields"]
        assert len(fields) == 10
        assert fields[0]["value"].endswith("prompt number 11")
        assert server.buttons(page) == ["Next ▶"]
        pressed = await server.click(int(page["id"]), "Next ▶", server.admin)
        await server.wait_for(lambda: pressed.callback_type, what="the page")
        second = server.messages[int(page["id"])]
        assert [f["value"].split(" · ")[-1] for f in second["embeds"][0]["fields"]] == [
            "prompt number 1",
            "prompt number 0",
        ]
        assert server.buttons(second) == ["◀ Previous"]

        bobs = await server.invoke("admin logs", server.admin, user=server.bob, since="1h")
        listing = await server.wait_for(lambda: server.original(bobs), what="bob's logs")
        assert len(listing["embeds"][0]["fields"]) == 4
        assert all(f"<@{server.bob.id}>" in f["value"] for f in listing["embeds"][0]["fields"])
        flagged = await server.invoke("admin logs", server.admin, flagged=True)
        empty = await server.wait_for(lambda: server.original(flagged), what="flagged logs")
        assert "No jobs match" in empty["embeds"][0]["description"]


class FixedScoresZero(FixedScores):
    """Built with no arguments, as IMAGINE_SAFETY_CHECKER=module:Class builds a host's own."""

    def __init__(self) -> None:
        super().__init__({})
