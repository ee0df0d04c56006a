"""Delivery: exactly once, through 429s, dropped gateways and dead interaction tokens."""

from __future__ import annotations

import json

import pytest

from tests.bot.conftest import RunningBot, settled_delivery
from tests.bot.test_imagine import png_of
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.server import Interaction


def results_for(server: LocalDiscord, job_id: int) -> list[dict]:
    """Messages (anywhere) that carry job ``job_id``'s finished images."""
    return [
        m
        for m in server.messages.values()
        if any(a["filename"] == f"imagine-{job_id}.png" for a in m["attachments"])
    ]


async def _deferred(server: LocalDiscord, asked: Interaction) -> None:
    await server.wait_for(lambda: asked.original_id, what="the deferred response")


@pytest.mark.parametrize("how", ["expired", "refused", "original deleted"])
async def test_a_result_whose_token_died_is_posted_to_the_channel_as_a_reply_where_it_can(
    local_discord: LocalDiscord, bot: RunningBot, how: str
) -> None:
    server = local_discord
    asked = await server.invoke("imagine", server.alice, prompt="a green square", steps=40)
    await _deferred(server, asked)
    original = asked.original_id
    if how == "original deleted":
        server.messages.pop(original)
    else:
        server.expire(asked, refused=how == "refused")

    posted = await server.wait_for(
        lambda: [
            m for m in server.channel_messages() if m["attachments"] and "webhook_id" not in m
        ],
        what="the channel post",
    )
    assert len(posted) == 1
    message = posted[0]
    if how == "original deleted":  # nothing to reply to: Discord makes it a plain message
        assert message["type"] == 0 and "message_reference" not in message
    else:
        assert message["message_reference"]["message_id"] == str(original)
    assert f"<@{server.alice.id}>" in message["content"]
    assert [m["id"] for m in message["mentions"]] == [str(server.alice.id)], "pings the asker"
    job_id = json.loads(png_of(server, message).text["imagine-bot"])["job_id"]
    assert len(server.buttons(message)) == 9
    assert results_for(server, job_id) == [message]
    delivery = await settled_delivery(bot, job_id)
    assert (delivery.result_message_id, delivery.delivered_via) == (int(message["id"]), "channel")


async def test_429s_a_502_and_a_dropped_gateway_mid_job_still_deliver_exactly_once(
    local_discord: LocalDiscord, bot: RunningBot
) -> None:
    server = local_discord
    server.inject("PATCH", r"^/api/v10/webhooks/.*/messages/", 429, times=4, retry_after=0.3)
    server.inject("PATCH", r"^/api/v10/webhooks/.*/messages/", 502, times=1)
    first = await server.invoke("imagine", server.alice, prompt="a blue circle", steps=30)
    await _deferred(server, first)
    await server.drop_gateway()
    # Sent while the bot is away: replayed when it resumes, not lost.
    second = await server.invoke("imagine", server.bob, prompt="a white square on black")

    results = [await server.wait_for_result(i) for i in (first, second)]
    await server.wait_for(lambda: server.resumes, what="the resume")
    assert server.identifies == 1, "the session was resumed, not identified again"
    assert sum(call.status == 429 for call in server.calls) == 4
    assert sum(call.status == 502 for call in server.calls) == 1
    for result in results:
        job_id = json.loads(png_of(server, result).text["imagine-bot"])["job_id"]
        assert results_for(server, job_id) == [result]
        assert (await bot.runtime.service.job(job_id)).job.status == "succeeded"
    assert not [m for m in server.channel_messages() if m.get("message_reference")]
