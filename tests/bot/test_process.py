"""``imagine-bot run`` as a host runs it: a real process killed and started again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bot.runtime import open_runtime
from tests.bot.conftest import bot_settings
from tests.bot.test_delivery import results_for
from tests.bot.test_imagine import png_of
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.server import TOKEN, Interaction


def environment(server: LocalDiscord, data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of an ``imagine-bot`` process on ``data_dir`` and the local Discord."""
    values = {
        **os.environ,
        "IMAGINE_DATA_DIR": str(data_dir),
        "IMAGINE_DISCORD_TOKEN": TOKEN,
        "IMAGINE_DISCORD_API_BASE": server.api_base,
        "IMAGINE_DISCORD_GATEWAY_URL": server.gateway_url,
        "IMAGINE_GUILD_IDS": json.dumps([server.guild_id]),
        "IMAGINE_LEASE_SECONDS": "3",
        "IMAGINE_POLL_INTERVAL": "0.2",
        "IMAGINE_PROGRESS_INTERVAL": "0.5",
        "IMAGINE_TORCH_THREADS": "1",
        "IMAGINE_LOG_LEVEL": "INFO",
        "HF_HUB_OFFLINE": "1",
        **{f"IMAGINE_{name.upper()}": value for name, value in settings.items()},
    }
    if "database_url" not in settings:
        values.pop("IMAGINE_DATABASE_URL", None)
    return values


async def start_process(
    data_dir: Path, env: dict[str, str], *args: str, log: str = "bot.log"
) -> asyncio.subprocess.Process:
    with (data_dir.parent / log).open("a") as handle:  # a pipe nobody reads could fill up
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", *args, env=env, stderr=handle
        )


async def start_bot(
    server: LocalDiscord, data_dir: Path, *args: str, **settings: str
) -> asyncio.subprocess.Process:
    identified = server.identifies
    process = await start_process(data_dir, environment(server, data_dir, **settings), "run", *args)
    await server.wait_for(lambda: server.identifies > identified, 120, "the bot to connect")
    await server.wait_for(lambda: "imagine" in server.commands, 30, "the commands")
    return process


async def result_after_restart(
    server: LocalDiscord, data_dir: Path, asked: Interaction
) -> dict[str, Any]:
    """Start the bot again on the same data; the request's result once it arrives."""
    process = await start_bot(server, data_dir)
    try:
        return await server.wait_for_result(asked, seconds=120)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 40)


def _log(data_dir: Path) -> str:
    return (data_dir.parent / "bot.log").read_text()


async def test_sigkill_mid_generation_then_restart_delivers_the_result_once(
    local_discord: LocalDiscord, tmp_path: Path
) -> None:
    server = local_discord
    data = tmp_path / "data"
    process = await start_bot(server, data)
    asked = await server.invoke("imagine", server.alice, prompt="a purple triangle", steps=50)
    await server.wait_for(
        lambda: any("step" in edit["content"] for _, edit in server.edits), 60, "progress"
    )
    process.kill()
    await process.wait()
    assert not server.original(asked)["components"], "killed before the result was sent"

    result = await result_after_restart(server, data, asked)
    job_id = json.loads(png_of(server, result).text["imagine-bot"])["job_id"]
    assert results_for(server, job_id) == [result]
    async with open_runtime(bot_settings(server, data)) as runtime:
        job = (await runtime.service.job(job_id)).job
    assert job.status == "succeeded"
    assert job.attempts == 2, "the killed attempt was taken over after its lease"


@pytest.mark.parametrize("grace", ["20", "0.5"])
async def test_sigterm_stops_within_30_seconds_and_loses_nothing(
    local_discord: LocalDiscord, tmp_path: Path, grace: str
) -> None:
    """With time to finish, the job finishes and is delivered before the process ends;
    without, it goes back to the queue and the next start delivers it."""
    server = local_discord
    data = tmp_path / "data"
    process = await start_bot(server, data, stop_grace_seconds=grace)
    asked = await server.invoke("imagine", server.alice, prompt="a black circle", steps=50)
    await server.wait_for(
        lambda: any("step" in edit["content"] for _, edit in server.edits), 60, "progress"
    )
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(process.wait(), 40)
    took = time.monotonic() - started
    log = _log(data)
    assert code == 0, log
    assert took < 30, f"stopped after {took:.1f} s"
    async with open_runtime(bot_settings(server, data)) as runtime:
        job = (await runtime.service.recent())[0].job
    if grace == "20":
        assert job.status == "succeeded", log
        assert server.original(asked)["components"], "delivered before the process ended"
        return
    assert (job.status, job.attempts) == ("queued", 0), log
    assert "released back to the queue" in log
    result = await result_after_restart(server, data, asked)
    assert results_for(server, job.id) == [result]
