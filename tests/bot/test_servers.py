"""One bot, several servers: what one server does never stops the others."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from bot.messages import NOT_SERVED
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


async def test_a_server_the_host_did_not_list_gets_one_line_and_nothing_is_done(
    local_discord: LocalDiscord,
    tmp_path: Path,
    trained_engine: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", guild_ids=[server.guild_id])
    with caplog.at_level(logging.WARNING, logger="bot.client"):
        async with running_bot(settings, trained_engine) as running:
            asked = await server.invoke("imagine", server.carol, prompt="a red circle")
            text = await server.wait_for(lambda: server.ephemeral_answer(asked), what="refusal")
            assert text == NOT_SERVED
            for command in ("queue", "quota"):
                asked = await server.invoke(command, server.erin)
                text = await server.wait_for(lambda a=asked: server.ephemeral_answer(a))
                assert text == NOT_SERVED
            assert await running.runtime.service.recent() == []
            # The listed server is served as ever.
            mine = await server.invoke("imagine", server.alice, prompt="a red circle", steps=8)
            await server.wait_for_result(mine)
    assert any(
        f"ignored an interaction from server {server.other_guild_id}" in r.getMessage()
        for r in caplog.records
    )


async def test_open_to_all_servers_registers_global_commands_and_serves_any_server(
    local_discord: LocalDiscord, tmp_path: Path, trained_engine: Any
) -> None:
    server = local_discord
    settings = bot_settings(server, tmp_path / "data", guild_ids=[], open_to_all_servers=True)
    async with running_bot(settings, trained_engine):
        assert server.synced == [None], "global commands, once"
        asked = await server.invoke("imagine", server.carol, prompt="a red circle", steps=8)
        await server.wait_for_result(asked)


def test_run_refuses_to_start_serving_no_server(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bot.cli import main

    env = {"IMAGINE_DATA_DIR": str(tmp_path), "IMAGINE_DISCORD_TOKEN": "x"}
    result = CliRunner().invoke(main, ["run"], env=env)
    assert result.exit_code == 1
    assert "IMAGINE_GUILD_IDS" in result.output and "IMAGINE_OPEN_TO_ALL_SERVERS" in result.output
