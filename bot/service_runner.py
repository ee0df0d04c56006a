"""``imagine-bot run`` and ``worker``: long-running processes that stop cleanly on a signal and
exit non-zero whenever they end without being asked to, so their supervisor starts them again.

Exit codes: 0 asked to stop (SIGTERM, SIGINT); 1 a task the process cannot live without (the
Discord client, the worker) ended; 3 a render hung (its job was put back or failed first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any, NoReturn

import click

from bot.client import ImagineBot, point_at
from bot.runtime import open_runtime, settle_heap
from bot.settings import Settings
from generation.errors import GenerationError, RenderHung
from generation.worker import Worker

logger = logging.getLogger(__name__)

STOPPED, BROKE, HUNG = 0, 1, 3
# SIGTERM must end the process within 30 s: the job in hand gets IMAGINE_STOP_GRACE_SECONDS
# (at most 20) to finish, then it is released back to the queue (3 s at most), finished
# results get this long to go out, and threads (a render, a safety check) a last second; one
# that has not ended (it hung) is left behind: the process exits without it.
DRAIN_SECONDS = 3.0
THREADS_GRACE = 1.0


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; a second signal ends the process at once (the job
    in hand comes back when its lease runs out)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            logger.warning("asked again: exiting now")
            logging.shutdown()
            os._exit(STOPPED)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    return stop


async def stop_worker(worker: Worker, running: asyncio.Task[int], grace: float) -> None:
    """Stop claiming; the job in hand gets ``grace`` seconds to finish, then goes back to the
    queue at once (cancelling the render releases its lease)."""
    worker.stop()
    if running.done():  # it ended by itself (or failed: the caller logged that)
        return
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await asyncio.wait_for(asyncio.shield(running), grace)
        except TimeoutError:
            running.cancel()
            await running


def exit_code(task: asyncio.Task[Any], what: str) -> int:
    """What a task that ended unasked means for the process; logged."""
    if task.cancelled():
        logger.error("%s was cancelled", what)
        return BROKE
    error = task.exception()
    if isinstance(error, RenderHung):
        logger.error("%s: %s; exiting for a fresh start", what, error)
        return HUNG
    if error is not None:
        logger.error("%s stopped", what, exc_info=error)
    else:
        logger.error("%s ended without being asked to", what)
    return BROKE


async def run_bot(
    settings: Settings, *, with_worker: bool = True, guild_ready_timeout: float = 2.0
) -> int:
    """Migrate, load the model, connect to Discord and serve until SIGTERM or SIGINT; the exit
    code (non-zero when the bot or the worker ended by itself)."""
    assert settings.discord_token is not None
    point_at(settings.discord_api_base, settings.discord_gateway_url)
    stop = stop_on_signals()
    code = STOPPED
    # Pending migrations are applied first (once the database answers).
    async with open_runtime(settings, wait_for_database=True) as runtime:
        await runtime.start_relay()
        runtime.start_reaper()
        worker = await runtime.start_engine() if with_worker else None
        bot = ImagineBot(runtime, guild_ready_timeout=guild_ready_timeout)
        settle_heap()  # before it serves: the model (if here) and the client are loaded
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
                code = max(exit_code(task, f"the {name}") for name, task in tasks.items()
                           if task in done)  # fmt: skip
            logger.info("shutting down")
            if worker is not None:
                await stop_worker(worker, tasks["worker"], settings.stop_grace_seconds)
            if not bot.is_closed():
                await bot.deliveries.drain(DRAIN_SECONDS)
            await bot.close()
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
    return code


async def run_worker(settings: Settings, *, burst: bool = False) -> int:
    """A worker process: claims and makes jobs until SIGTERM (or, ``burst``, an empty queue)."""
    stop = stop_on_signals()
    async with open_runtime(settings, wait_for_database=True) as runtime:
        await runtime.start_relay()
        runtime.start_reaper()
        worker = await runtime.start_engine()
        settle_heap()  # the model is loaded: freeze it out of the collector's full passes
        running = asyncio.create_task(worker.run(burst=burst), name="worker")
        stopped = asyncio.create_task(stop.wait(), name="stop")
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if stop.is_set():
            await stop_worker(worker, running, settings.stop_grace_seconds)
        clean = running.done() and not running.cancelled() and running.exception() is None
        if clean:
            click.echo(f"worker ran {running.result()} jobs", err=True)
        hung = running.done() and not running.cancelled() and running.exception() is not None
        if (stop.is_set() and not hung) or (burst and clean):
            return STOPPED
        return exit_code(running, "the worker")


def serve(main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a long-running command's coroutine and exit with its code. A thread that cannot be
    joined (a render that hung) does not keep the process alive: it exits without it."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    code = BROKE
    try:
        code = loop.run_until_complete(main)
    except GenerationError as error:
        click.echo(f"Error: {error}", err=True)
    finally:
        _close(loop)
    end_process(code)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Close the loop without waiting for its threads (asyncio.run would wait for ever on a
    stuck one); end_process gives them a grace."""
    leftover = asyncio.all_tasks(loop)
    for task in leftover:
        task.cancel()
    if leftover:
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()  # shuts the default executor down without waiting


def end_process(code: int) -> NoReturn:
    """Exit with ``code``; without waiting for threads that are still busy after a grace."""
    deadline = time.monotonic() + THREADS_GRACE
    while (busy := _busy_threads()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if busy:
        logger.error("exiting without %d busy thread(s): %s", len(busy), [t.name for t in busy])
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _busy_threads() -> list[threading.Thread]:
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and t.is_alive() and not t.daemon]
