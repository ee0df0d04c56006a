"""Who may do what, with two servers on one bot: each server's moderators act on their own
server's records only; host admins on everything; members on what their server shows.

alice and bob are members of the first server (its moderators: ``admin`` by role, ``owner`` as
Administrator); carol is a member of the second (``dave`` by role, ``erin`` as Administrator);
``host`` is listed in IMAGINE_ADMIN_USER_IDS.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.admin import HOST_ONLY, NOT_ALLOWED
from tests.bot.conftest import RunningBot, bot_settings, running_bot
from tests.bot.test_imagine import png_of
from tests.bot.test_moderation import FixedScores
from tests.fakediscord.actions import CommandHidden, LocalDiscord
from tests.fakediscord.payloads import FakeUser


def two_server_settings(server: LocalDiscord, tmp_path: Path, **overrides: Any):  # type: ignore[no-untyped-def]
    return bot_settings(
        server,
        tmp_path / "data",
        guild_ids=[server.guild_id, server.other_guild_id],
        admin_role_ids=[server.admin_role, server.other_admin_role],
        admin_user_ids=[server.host.id],
        **overrides,
    )


@pytest.fixture
async def two_servers(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> AsyncIterator[tuple[RunningBot, int, int]]:
    """The bot, alice's job in the first server and carol's in the second."""
    server = local_discord
    async with running_bot(two_server_settings(server, tmp_path), trained_engine) as running:
        jobs = []
        for user in (server.alice, server.carol):
            asked = await server.invoke("imagine", user, prompt=f"{user.name}'s circle", steps=8)
            result = await server.wait_for_result(asked)
            jobs.append(json.loads(png_of(server, result).text["imagine-bot"])["job_id"])
        yield running, jobs[0], jobs[1]


async def answer_to(server: LocalDiscord, who: FakeUser, command: str, /, **options: Any) -> str:
    asked = await server.invoke(command, who, **options)
    return await server.wait_for(lambda: server.ephemeral_answer(asked), what=f"/{command}")


async def _listed(server: LocalDiscord, who: FakeUser, /, **options: Any) -> set[int] | str:
    """The job ids /admin logs shows ``user``, or the refusal."""
    asked = await server.invoke("admin logs", who, **options)
    stored = await server.wait_for(
        lambda: (m := server.original(asked)) and (m["embeds"] or m["content"]) and m,
        what="/admin logs",
    )
    if not stored["embeds"]:
        return str(stored["content"])
    fields = stored["embeds"][0].get("fields", [])
    return {int(f["name"].split(" ")[1]) for f in fields}


async def test_each_server_sees_and_moderates_its_own_jobs_only(
    local_discord: LocalDiscord, two_servers: tuple[RunningBot, int, int]
) -> None:
    server = local_discord
    running, alices, carols = two_servers
    s = server

    # /job: the owner, members of the same server, its moderators, host admins.
    for user, sees in [
        (s.alice, True),
        (s.bob, True),
        (s.admin, True),
        (s.owner, True),
        (s.host, True),
        (s.carol, False),
        (s.dave, False),
        (s.erin, False),
    ]:
        text = await answer_to(server, user, "job", id=alices)
        assert (f"Job {alices}" in text) is sees, (user.name, text)
        if not sees:
            assert f"there is no job {alices}" in text, "as if it did not exist"

    # /admin job: that server's moderators and host admins; another server's are told nothing.
    for user, sees in [(s.admin, True), (s.owner, True), (s.host, True), (s.dave, False)]:
        text = await answer_to(server, user, "admin job", id=alices)
        assert (f"Job {alices}" in text) is sees, (user.name, text)
    assert await answer_to(server, s.erin, "admin job", id=alices) == f"there is no job {alices}"
    for member in (s.alice, s.bob, s.carol):
        with pytest.raises(CommandHidden):  # Discord does not offer it to them ...
            await server.invoke("admin job", member, id=alices)
    server.show_to_everyone("admin")  # ... unless a server's owner shows it to everyone
    for member in (s.alice, s.bob, s.carol):
        assert await answer_to(server, member, "admin job", id=alices) == NOT_ALLOWED

    # /admin logs: a server's moderators list their server's jobs; host admins every server's.
    assert await _listed(server, s.admin) == {alices}
    assert await _listed(server, s.dave) == {carols}
    assert await _listed(server, s.erin) == {carols}
    assert await _listed(server, s.host) == {alices, carols}
    refused = await _listed(server, s.erin, guild=str(server.guild_id))
    assert isinstance(refused, str) and "you moderate this server only" in refused

    # Quotas and weights are host-wide: host admins only. A server's moderators ban in their
    # server; host admins on every server.
    assert await answer_to(server, s.admin, "admin quota", user=s.bob, weight=100.0) == HOST_ONLY
    assert await answer_to(server, s.erin, "admin quota", user=s.erin, weight=100.0) == HOST_ONLY
    service = running.runtime.service
    assert (await service.usage(s.erin.id)).user.weight is None
    said = await answer_to(server, s.erin, "admin ban", user=s.alice, reason="spam")
    assert said.startswith(f"<@{s.alice.id}> is banned in this server")
    assert not (await service.usage(s.alice.id)).user.banned, "not on every server"
    said = await answer_to(server, s.dave, "admin ban", user=s.carol, reason="spam")
    assert "is banned in this server" in said
    refused = await answer_to(server, s.carol, "imagine", prompt="a red circle")
    assert "you are banned from generating images in this server" in refused
    assert "is banned on every server" in await answer_to(
        server, s.host, "admin ban", user=s.bob, reason="spam"
    )
    assert (await service.usage(s.bob.id)).user.banned

    # Another server's moderator cannot delete, nor ❌, nor reproduce a job.
    text = await answer_to(server, s.erin, "admin delete", job=alices)
    assert text == f"there is no job {alices}"
    delivery = await running.bot.outbox.get(alices)
    assert delivery is not None and delivery.result_message_id is not None
    await server.react(delivery.result_message_id, "❌", s.erin)
    assert await answer_to(server, s.dave, "reproduce", id=alices) == f"there is no job {alices}"
    # A host admin sees every job, but a job is made again only in its own server (its
    # bans, terms, safety policy and moderators are that server's).
    text = await answer_to(server, s.host, "reproduce", id=carols)
    assert f"job {carols} was made in another server" in text
    text = await answer_to(server, s.bob, "reproduce", id=alices)
    assert f"job {alices} is not yours to reproduce" in text
    assert (await service.job(alices)).job.status == "succeeded"
    assert delivery.result_message_id in server.messages

    # A member banned in the server renders nothing there, /reproduce included.
    assert "is banned in this server" in await answer_to(server, s.admin, "admin ban", user=s.alice)
    text = await answer_to(server, s.alice, "reproduce", id=alices)
    assert "you are banned from generating images in this server" in text
    # The server's own moderator can.
    assert "deleted" in await answer_to(server, s.admin, "admin delete", job=alices)
    assert (await service.job(alices)).job.status == "deleted"


async def test_the_review_queue_holds_each_servers_flagged_images_for_its_own_moderators(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = two_server_settings(server, tmp_path, safety_policy="spoiler")
    checker = FixedScores({"BUTTOCKS_EXPOSED": 0.91})
    # alice asks in an age-restricted channel: her flagged result is shown there, spoilered.
    channels = {server.alice.name: server.add_channel(nsfw=True)}
    async with running_bot(settings, trained_engine, checker) as running:
        jobs = {}
        for user in (server.alice, server.carol):
            asked = await server.invoke(
                "imagine",
                user,
                channel_id=channels.get(user.name),
                prompt="a circle",
                steps=8,
                count=1,
            )
            await server.wait_for(
                lambda a=asked: (m := server.original(a)) and "safety check" in m["content"],
                what="the flagged result",
            )
            jobs[user.name] = next(
                v.job.id
                for v in await running.runtime.service.recent()
                if v.job.interaction_id == asked.id
            )

        async def reviewed(user: FakeUser) -> set[int]:
            asked = await server.invoke("admin flagged", user)
            stored = await server.wait_for(
                lambda: (m := server.original(asked)) and not m["flags"] & 128 and m,
                what="/admin flagged",
            )
            return {int(a["filename"].split("_")[1].split("-")[0]) for a in stored["attachments"]}

        assert await reviewed(server.admin) == {jobs["alice"]}
        assert await reviewed(server.erin) == {jobs["carol"]}
        assert await reviewed(server.host) == {jobs["alice"], jobs["carol"]}
        # A flagged job is hidden from other members of its server, not from its moderators:
        # /job, ✉️ and the buttons on its (spoilered) result refuse them.
        text = await answer_to(server, server.bob, "job", id=jobs["alice"])
        assert f"job {jobs['alice']} is not shown to you" in text and "held for" in text
        delivery = await running.bot.outbox.get(jobs["alice"])
        assert delivery is not None and delivery.result_message_id is not None
        await server.react(delivery.result_message_id, "✉️", server.bob)
        pressed = await server.click(delivery.result_message_id, "U1", server.bob)
        text = await server.wait_for(lambda: server.ephemeral_answer(pressed), what="U1")
        assert "held for the moderators' review" in text
        assert server.dms(server.bob) == [], "no recipe of a held job by ✉️"
        assert f"Job {jobs['alice']}" in await answer_to(
            server, server.admin, "job", id=jobs["alice"]
        )
        # The server's own moderator approves it.
        review = await server.invoke("admin flagged", server.admin)
        stored = await server.wait_for(
            lambda: (m := server.original(review)) and m["components"] and m,
            what="the review",
        )
        approved = await server.click(int(stored["id"]), "Approve 1", server.admin)
        text = await server.wait_for(lambda: server.ephemeral_answer(approved), what="approval")
        assert text == f"Image 1 of job {jobs['alice']} approved."
        assert await reviewed(server.host) == {jobs["carol"]}


async def test_admin_is_hidden_from_members_by_default_and_never_offered_in_dms(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    registered = local_discord.commands["admin"]
    manage_messages = 1 << 13
    assert int(registered["default_member_permissions"]) == manage_messages
    assert registered.get("contexts") == [0] or registered.get("dm_permission") is False
    assert local_discord.commands["imagine"].get("default_member_permissions") is None


NONE = "there is no job"
SHOWN = "Job {job}"  # the job's report
PUBLIC = "public"  # queued: a public answer, no refusal

# (command, options) -> {who: (outcome on the first server's job, on the second's)}; who:
# bob (a member of the first server, not the owner), dave (the second server's moderator by
# role), erin (its Administrator), host (a host admin, acting from the first server).
TABLE: list[tuple[str, dict[str, Any], dict[str, tuple[str, str]]]] = [
    ("job", {}, {"bob": (SHOWN, NONE), "dave": (NONE, SHOWN), "erin": (NONE, SHOWN),
                 "host": (SHOWN, SHOWN)}),
    ("admin job", {}, {"bob": (NOT_ALLOWED, NOT_ALLOWED), "dave": (NONE, SHOWN),
                       "erin": (NONE, SHOWN), "host": (SHOWN, SHOWN)}),
    ("reproduce", {}, {"bob": ("not yours to reproduce", NONE), "dave": (NONE, PUBLIC),
                       "erin": (NONE, PUBLIC), "host": (PUBLIC, "made in another server")}),
    ("admin quota", {"weight": 2.0}, {"bob": (NOT_ALLOWED, NOT_ALLOWED),
                                      "dave": (HOST_ONLY, HOST_ONLY),
                                      "erin": (HOST_ONLY, HOST_ONLY),
                                      "host": ("weight 2", "weight 2")}),
    ("admin ban", {}, {"bob": (NOT_ALLOWED, NOT_ALLOWED), "dave": ("in this server",) * 2,
                       "host": ("on every server",) * 2}),
    ("admin unban", {}, {"bob": (NOT_ALLOWED, NOT_ALLOWED), "dave": ("in this server",) * 2,
                         "host": ("every ban is lifted",) * 2}),
    # Last: a deletion changes what the rows above would see.
    ("admin delete", {}, {"bob": (NOT_ALLOWED, NOT_ALLOWED), "dave": (NONE, "deleted"),
                          "host": ("deleted", "deleted")}),
]  # fmt: skip


async def test_every_command_by_every_kind_of_actor_against_each_servers_jobs(
    local_discord: LocalDiscord, two_servers: tuple[RunningBot, int, int]
) -> None:
    """The table of who may do what: a member, another server's moderator and Administrator,
    and a host admin, each against a job of each server."""
    server = local_discord
    running, alices, carols = two_servers
    server.show_to_everyone("admin")  # the bot's own checks are what stands
    who = {u.name: u for u in (server.bob, server.dave, server.erin, server.host)}
    owners = {alices: server.alice, carols: server.carol}
    for command, extra, expected in TABLE:
        for name, outcomes in expected.items():
            for job, outcome in zip((alices, carols), outcomes, strict=True):
                options = dict(extra)
                if command in ("admin quota", "admin ban", "admin unban"):
                    options["user"] = owners[job]
                elif command == "admin delete":
                    options["job"] = job
                else:
                    options["id"] = job
                asked = await server.invoke(command, who[name], **options)
                said = await server.wait_for(
                    lambda a=asked: (
                        server.ephemeral_answer(a)
                        or ((m := server.original(a)) and not m["flags"] & (64 | 128) and PUBLIC)
                    ),
                    what=f"/{command} by {name}",
                )
                case = (command, name, "first" if job == alices else "second", said)
                assert outcome.format(job=job) in said, case
                if outcome == NONE:
                    assert said == f"there is no job {job}", "as if it did not exist"
    service = running.runtime.service
    assert (await service.job(alices)).job.status == "deleted"
    assert (await service.job(carols)).job.status == "deleted"
