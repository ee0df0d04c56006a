"""Private mode, through the local Discord: a job answered to its owner alone (ephemeral, or
by DM once the token is gone, never a channel post), hidden from other members, its ✉️ and ❌
as buttons; a server may forbid or force it; its moderators still see everything."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from generation.access import Actor
from tests.bot.conftest import bot_settings, running_bot, worker_for
from tests.bot.test_imagine import png_of
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.payloads import FakeUser

EPHEMERAL = 64


def _settings(server: LocalDiscord, data: Path) -> Any:
    return bot_settings(server, data, model="embedded-random", max_count=1)


async def _private_on(server: LocalDiscord, user: FakeUser) -> None:
    shown = await server.invoke("settings", user)
    panel = await server.wait_for(lambda: server.original(shown), what="the settings")
    await server.click(int(panel["id"]), "Private mode: off", user)
    await server.wait_for(
        lambda: "Private mode: on" in server.buttons(server.messages[int(panel["id"])]),
        what="private mode on",
    )


def _public_mentions(server: LocalDiscord, text: str) -> list[dict[str, Any]]:
    """Messages anyone in a channel could see that carry ``text``."""
    return [
        m
        for m in server.messages.values()
        if int(m["channel_id"]) in server.channel_guilds
        and not m["flags"] & EPHEMERAL
        and text in json.dumps(m)
    ]


async def test_a_private_job_is_its_owners_alone_and_its_moderators(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    async with running_bot(_settings(server, tmp_path / "data"), engine) as running:
        await _private_on(server, server.alice)
        asked = await server.invoke("imagine", server.alice, prompt="a secret circle", seed=4)
        result = await server.wait_for_result(asked)
        assert result["flags"] & EPHEMERAL, "answered to alice alone"
        assert server.buttons(result) == ["U1", "🔄", "V1", "Recipe", "Delete"]
        job_id = json.loads(png_of(server, result).text["imagine-bot"])["job_id"]
        assert (await running.runtime.service.job(job_id)).job.private
        assert _public_mentions(server, "a secret circle") == []

        # Bob, of the same server, cannot see it; the server's moderator can.
        looked = await server.invoke("job", server.bob, id=job_id)
        said = await server.wait_for(lambda: server.ephemeral_answer(looked), what="refusal")
        assert f"job {job_id} is not shown to you" in said
        looked = await server.invoke("job", server.admin, id=job_id)
        said = await server.wait_for(lambda: server.ephemeral_answer(looked), what="details")
        assert "a secret circle" in said

        # ✉️ as a button: the recipe, to alice alone.
        pressed = await server.click(int(result["id"]), "Recipe", server.alice)
        recipe = await server.wait_for(lambda: server.ephemeral_answer(pressed), what="recipe")
        assert "a secret circle" in recipe and "4" in recipe

        # What alice makes from it is private too.
        varied = await server.click(int(result["id"]), "V1", server.alice)
        child = await server.wait_for_result(varied)
        assert child["flags"] & EPHEMERAL
        child_id = json.loads(png_of(server, child).text["imagine-bot"])["job_id"]
        assert (await running.runtime.service.job(child_id)).job.private

        # ❌ as a button: the job is deleted and its message goes.
        await server.click(int(result["id"]), "Delete", server.alice)
        await server.wait_for(lambda: int(result["id"]) in server.deleted, what="deleted")
        assert (await running.runtime.service.job(job_id)).job.status == "deleted"


async def test_a_private_result_goes_by_dm_once_the_token_is_gone_never_to_the_channel(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    settings = _settings(server, tmp_path / "data")
    async with running_bot(settings) as running:  # no worker yet: the job waits
        await _private_on(server, server.alice)
        asked = await server.invoke("imagine", server.alice, prompt="a hidden square", seed=5)
        await server.wait_for(lambda: server.queued(asked), what="queued")
        assert server.original(asked)["flags"] & EPHEMERAL
        server.expire(asked)  # 15 minutes pass
        worker = worker_for(running.runtime, settings, engine)
        working = asyncio.create_task(worker.run())
        try:
            sent = await server.wait_for(
                lambda: [m for m in server.dms(server.alice) if m["attachments"]],
                what="the result by DM",
            )
        finally:
            worker.stop()
            await working
        assert "Recipe" in server.buttons(sent[0])
        assert _public_mentions(server, "a hidden square") == []
        assert server.dms(server.bob) == []


async def test_a_server_may_force_or_forbid_private_mode(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any
) -> None:
    server = local_discord
    async with running_bot(_settings(server, tmp_path / "data"), engine):
        changed = await server.invoke("admin settings", server.admin, private_mode="force")
        said = await server.wait_for(lambda: server.ephemeral_answer(changed), what="settings")
        assert "Private mode:** always" in said
        # Bob never turned it on: here every job is private all the same.
        asked = await server.invoke("imagine", server.bob, prompt="a forced circle", seed=1)
        assert (await server.wait_for_result(asked))["flags"] & EPHEMERAL

        changed = await server.invoke("admin settings", server.admin, private_mode="forbid")
        await server.wait_for(lambda: server.ephemeral_answer(changed), what="settings")
        await _private_on(server, server.alice)
        asked = await server.invoke("imagine", server.alice, prompt="a public circle", seed=1)
        result = await server.wait_for_result(asked)
        assert not result["flags"] & EPHEMERAL and "Recipe" not in server.buttons(result)
        shown = await server.invoke("settings", server.alice)
        panel = await server.wait_for(lambda: server.original(shown), what="the settings")
        assert "does not allow private mode" in panel["content"]


async def test_a_job_made_private_after_a_public_answer_shows_nothing_there(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any, monkeypatch: Any
) -> None:
    server = local_discord
    async with running_bot(_settings(server, tmp_path / "data"), engine) as running:
        servers = running.runtime.service.servers

        async def slow_database(guild_id: int | None, wait: float = 0.5) -> Any:
            return servers.host_rules(guild_id)  # what a hint gives when the read is late

        monkeypatch.setattr(servers, "hint", slow_database)
        # The server forces private mode; the bot answers before it can read so.
        await servers.update(server.guild_id, Actor(user_id=None, host=True), private_mode="force")
        asked = await server.invoke("imagine", server.bob, prompt="a leaked circle", seed=2)
        # Its result follows the public answer, seen by bob alone.
        sent = await server.wait_for(
            lambda: [
                m
                for m in server.messages.values()
                if (m.get("interaction_metadata") or {}).get("id") == str(asked.id)
                and m["flags"] & EPHEMERAL
                and m["attachments"]
            ],
            what="the result as an ephemeral follow-up",
        )
        assert "Recipe" in server.buttons(sent[0])
        answer = server.original(asked)
        assert not answer["flags"] & EPHEMERAL and "is private" in answer["content"]
        assert _public_mentions(server, "a leaked circle") == []


async def test_settings_that_cannot_be_read_answer_the_job_privately_and_say_so(
    local_discord: LocalDiscord, tmp_path: Path, engine: Any, monkeypatch: Any
) -> None:
    server = local_discord
    async with running_bot(_settings(server, tmp_path / "data"), engine) as running:

        async def away(user_id: int) -> Any:
            raise TimeoutError  # the database does not answer in time

        monkeypatch.setattr(running.runtime.service, "preferences", away)
        asked = await server.invoke("imagine", server.alice, prompt="a careful circle", seed=2)
        result = await server.wait_for_result(asked)
        assert result["flags"] & EPHEMERAL
        notes = await server.wait_for(
            lambda: [
                m["content"]
                for m in server.messages.values()
                if (m.get("interaction_metadata") or {}).get("id") == str(asked.id)
                and "could not be read" in m["content"]
            ],
            what="the note",
        )
        assert "shown to you alone" in notes[0]
