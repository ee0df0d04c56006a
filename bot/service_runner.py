"""``imagine-bot run``: the bot and its worker in one process, stopped cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from bot.client import ImagineBot, point_at
from bot.runtime import open_runtime
from bot.settings import Settings
from generation.worker import Worker

logger = logging.getLogger(__name__)

# SIGTERM must end the process within 30 s: the job in hand gets IMAGINE_STOP_GRACE_SECONDS
# to finish (then it is released back to the queue), and finished results this long to go out.
DRAIN_SECONDS = 5.0


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def stop_worker(worker: Worker, running: asyncio.Task[int], grace: float) -> None:
    """Stop claiming; the job in hand gets ``grace`` seconds to finish, then goes back to the
    queue at once (cancelling the render releases its lease)."""
    worker.stop()
    if running.done():  # it ended by itself (or failed: run_bot logged that)
        return
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await asyncio.wait_for(asyncio.shield(running), grace)
        except TimeoutError:
            running.cancel()
            await running


async def run_bot(
    settings: Settings, *, with_worker: bool = True, guild_ready_timeout: float = 2.0
) -> None:
    """Migrate, load the model, connect to Discord and serve until SIGTERM or SIGINT."""
    assert settings.discord_token is not None
    point_at(settings.discord_api_base, settings.discord_gateway_url)
    stop = stop_on_signals()
    async with open_runtime(settings) as runtime:  # applies pending migrations first
        await runtime.start_relay()
        worker = await runtime.start_engine() if with_worker else None
        bot = ImagineBot(runtime, guild_ready_timeout=guild_ready_timeout)
        async with bot:
            tasks: dict[str, asyncio.Task[Any]] = {
                "bot": asyncio.create_task(
                    bot.start(settings.discord_token.get_secret_value()), name="bot"
                ),
                "stop": asyncio.create_task(stop.wait(), name="stop"),
            }
            if worker is not None:
                tasks["worker"] = asyncio.create_task(worker.run(), name="worker")
            done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            if tasks["stop"] not in done:
                for task in done:
                    if task.exception() is not None:
                        logger.error("%s stopped", task.get_name(), exc_info=task.exception())
            logger.info("shutting down")
            if worker is not None:
                await stop_worker(worker, tasks["worker"], settings.stop_grace_seconds)
            if not bot.is_closed():
                await bot.deliveries.drain(DRAIN_SECONDS)
            await bot.close()
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
