"""The bot against the local Discord: the real discord.py client, in this process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
import yarl

from bot.client import ImagineBot, point_at
from bot.runtime import Runtime, open_runtime, settle_heap
from bot.settings import Settings
from generation.model_info import ModelInfo
from generation.worker import Worker
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.server import TOKEN
from tests.fakeopenai import FakeImagesAPI

# asyncio reports a callback that held the event loop longer than this (a warning in the log)
SLOW_CALLBACK = 0.01
# ... and a bot test fails on a callback that kept the loop's thread busy longer than this:
# Discord's heartbeats, answers and every other member's command wait on the loop meanwhile.
# Measured in the thread's CPU time, so a machine busy with other work (CI's other tests, the
# render thread holding the GIL) does not count against the code that was merely waiting.
TOO_SLOW = 0.1


@pytest.fixture(autouse=True)
async def loop_never_held(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Every bot test runs with asyncio's slow-callback report at 10 ms, and fails if one
    callback of the bot (or its worker) spent more than 100 ms of CPU on the loop's thread.
    The fixtures' set-up (migrating, loading a model, before the bot serves), the test's own
    steps and the local Discord's request handlers are not the bot's, and are not counted."""
    loop = asyncio.get_running_loop()
    held: list[tuple[float, str]] = []
    run = asyncio.events.Handle._run

    collecting: list[float] = [0.0, 0.0]  # GC time in the current callback, start of a pass

    def on_gc(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            collecting[1] = time.thread_time()
        else:
            collecting[0] += time.thread_time() - collecting[1]

    gc.callbacks.append(on_gc)

    def timed(handle: asyncio.events.Handle) -> None:
        collecting[0] = 0.0
        start = time.thread_time()
        run(handle)
        spent = time.thread_time() - start
        if spent > TOO_SLOW:
            owner = getattr(getattr(handle, "_callback", None), "__self__", None)
            what = repr(owner if isinstance(owner, asyncio.Task) else handle)
            theirs = ("_asyncgen_fixture", "web_protocol", "coro=<test_")
            if not any(mark in what for mark in theirs):
                held.append(
                    (spent, f"{collecting[0]:.3f} s of it collecting garbage: {what[:400]}")
                )

    monkeypatch.setattr(asyncio.events.Handle, "_run", timed)
    debug, threshold = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK
    try:
        yield
    finally:
        loop.set_debug(debug)
        loop.slow_callback_duration = threshold
        gc.callbacks.remove(on_gc)
    held.sort(reverse=True)
    assert not held, f"a callback held the event loop above {TOO_SLOW * 1000:.0f} ms: {held[:3]}"


@pytest.fixture
async def local_discord() -> AsyncIterator[LocalDiscord]:
    """The local Discord; a test that made the bot call a route it lacks fails here."""
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with LocalDiscord() as server:
        yield server
    discord.http.Route.BASE = old_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway
    assert server.unknown == [], f"the bot called routes the local Discord lacks: {server.unknown}"


def bot_settings(server: LocalDiscord, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "model": "embedded",
        "discord_token": TOKEN,
        "discord_api_base": server.api_base,
        "discord_gateway_url": server.gateway_url,
        "guild_ids": [server.guild_id],
        "admin_role_ids": [server.admin_role],
        "progress_interval": 0.2,
        "poll_interval": 0.1,
        "lease_seconds": 30.0,
        "safety_checker": "off",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclasses.dataclass
class RunningBot:
    bot: ImagineBot
    runtime: Runtime
    worker: Worker | None


def worker_for(
    runtime: Runtime, settings: Settings, engine: Any, checker: Any | None = None
) -> Worker:
    """The worker ``imagine-bot run`` builds, on ``engine``."""
    return Worker(
        runtime.db,
        engine,
        runtime.store,
        runtime.events,
        settings.worker_config(),
        checker=checker,
        servers=runtime.service.servers,
        presets=runtime.service.presets,
        models_dir=settings.models_dir,
    )


@contextlib.asynccontextmanager
async def running_bot(
    settings: Settings, engine: Any | None = None, checker: Any | None = None
) -> AsyncIterator[RunningBot]:
    """The bot connected to the local Discord, with a worker on ``engine`` if one is given."""
    point_at(settings.discord_api_base, settings.discord_gateway_url)
    async with open_runtime(settings) as runtime:
        worker = None
        if engine is not None:
            runtime.engine = engine
            worker = worker_for(runtime, settings, engine, checker)
        bot = ImagineBot(runtime, guild_ready_timeout=0.05)
        settle_heap()  # as `imagine-bot run` does before it serves
        tasks = [asyncio.create_task(bot.start(TOKEN))]
        if worker is not None:
            tasks.append(asyncio.create_task(worker.run()))
        try:
            await asyncio.wait_for(bot.wait_until_ready(), 30)
            yield RunningBot(bot, runtime, worker)
        finally:
            if worker is not None:
                worker.stop()
                await asyncio.wait_for(tasks[1], 60)
            await bot.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            gc.unfreeze()  # this bot's objects may go now
            runtime.engine = None  # the session's engine outlives this bot


async def settled_delivery(running: RunningBot, job_id: int, seconds: float = 60.0) -> Any:
    """A job's delivery row once it is no longer pending: it is marked just after Discord
    answered, so a test that saw the message must wait for the row."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        delivery = await running.bot.outbox.get(job_id)
        assert delivery is not None, f"job {job_id} has no delivery row"
        if delivery.state != "pending":
            return delivery
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id}'s delivery still pending after {seconds:g} s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def api() -> AsyncIterator[FakeImagesAPI]:
    """The local image API (OpenAI's images endpoints)."""
    async with FakeImagesAPI() as server:
        yield server


@pytest.fixture
def settings(local_discord: LocalDiscord, tmp_path: Path) -> Settings:
    return bot_settings(local_discord, tmp_path / "data")


@pytest.fixture
async def bot(
    settings: Settings, trained_engine: Any, trained_model: ModelInfo
) -> AsyncIterator[RunningBot]:
    async with running_bot(settings, trained_engine) as running:
        yield running


__all__ = ["RunningBot", "bot_settings", "running_bot", "settled_delivery", "yarl"]
