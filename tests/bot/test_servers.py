"""One bot, several servers: what one server does never stops the others."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.bot.conftest import bot_settings, running_bot
from tests.fakediscord.actions import LocalDiscord


async def test_a_server_that_refuses_the_command_sync_is_logged_and_the_rest_are_served(
    local_discord: LocalDiscord,
    tmp_path: Path,
    trained_engine: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = local_discord
    gone = 1_300_000_000_000_999_999  # a server the bot was removed from
    settings = bot_settings(server, tmp_path / "data", guild_ids=[gone, server.guild_id])
    with caplog.at_level(logging.ERROR, logger="bot.client"):
        async with running_bot(settings, trained_engine):
            assert server.synced == [server.guild_id]
            asked = await server.invoke("imagine", server.alice, prompt="a red circle", steps=8)
            result = await server.wait_for_result(asked)
            assert len(server.buttons(result)) == 9
    assert any(
        f"could not register the commands in server {gone} (403 50001" in r.getMessage()
        for r in caplog.records
    )
