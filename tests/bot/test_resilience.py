"""Processes as a host runs them, through faults: a database outage mid-job, a render that
hangs, a bot that cannot log in, SIGTERM with a hung thread. Exit codes tell the supervisor."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from bot.messages import AWAY
from bot.runtime import open_runtime
from bot.service_runner import BROKE, HUNG, STOPPED
from generation.requests import GenerationRequest
from tests.bot.conftest import bot_settings, running_bot
from tests.bot.test_delivery import results_for
from tests.bot.test_imagine import png_of
from tests.bot.test_process import environment, start_bot, start_process
from tests.fakediscord.actions import LocalDiscord
from tests.faultproxy import FaultProxy

HANGING = "tests.hanging:HangingChecker"


def _log(data: Path, name: str) -> str:
    return (data.parent / name).read_text()


@pytest.mark.postgres
async def test_run_rides_out_a_database_outage_mid_job_and_delivers_it_once(
    local_discord: LocalDiscord, tmp_path: Path, postgres_url: str
) -> None:
    server = local_discord
    data = tmp_path / "data"
    async with FaultProxy("127.0.0.1", 5432) as proxy:
        url = proxy.url(postgres_url)
        process = await start_bot(server, data, database_url=url, lease_seconds="10")
        try:
            asked = await server.invoke("imagine", server.alice, prompt="a red square", steps=50)
            await server.wait_for(
                lambda: any("step" in e["content"] for _, e in server.edits), 60, "progress"
            )
            proxy.outage(4)
            result = await server.wait_for_result(asked, seconds=120)
            assert process.returncode is None, "the process lived through it"
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 40)
    log = _log(data, "bot.log")
    assert code == STOPPED, log
    assert proxy.refused > 0, "the outage did meet the process"
    job_id = __import__("json").loads(png_of(server, result).text["imagine-bot"])["job_id"]
    assert results_for(server, job_id) == [result]
    async with open_runtime(bot_settings(server, data, database_url=postgres_url)) as runtime:
        job = (await runtime.service.job(job_id)).job
    assert (job.status, job.attempts) == ("succeeded", 1), log


async def test_a_bot_that_cannot_log_in_exits_non_zero(
    local_discord: LocalDiscord, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = environment(local_discord, data, discord_token="not-the-token")
    process = await start_process(data, env, "run", "--no-worker")
    code = await asyncio.wait_for(process.wait(), 120)
    assert code == BROKE, _log(data, "bot.log")


async def _queue(data: Path, server: LocalDiscord, prompt: str, **settings: object) -> int:
    async with open_runtime(bot_settings(server, data, **settings)) as runtime:
        request = GenerationRequest(prompt, user_id=server.alice.id, steps=2)
        return (await runtime.service.submit(request)).job.id


async def _job(data: Path, server: LocalDiscord, job_id: int):  # type: ignore[no-untyped-def]
    async with open_runtime(bot_settings(server, data)) as runtime:
        return (await runtime.service.job(job_id)).job


async def test_a_worker_whose_job_hangs_exits_3_and_the_job_ends_after_its_attempts(
    local_discord: LocalDiscord, tmp_path: Path
) -> None:
    server = local_discord
    data = tmp_path / "data"
    hung = await _queue(data, server, "a blue circle", max_attempts=2)
    env = environment(server, data, safety_checker=HANGING, hang_seconds="2")
    for attempt in (1, 2):  # a supervisor starts it again after each exit
        started = time.monotonic()
        process = await start_process(data, env, "worker", log="worker.log")
        code = await asyncio.wait_for(process.wait(), 90)
        assert code == HUNG, _log(data, "worker.log")
        assert time.monotonic() - started < 60
        job = await _job(data, server, hung)
        assert job.attempts == attempt
    assert (job.status, job.error) == (
        "failed",
        "it hung: no progress for 2 s, with no attempt left",
    )

    # The next job runs: a fresh start, on a checker that answers.
    after = await _queue(data, server, "a green square")
    env = environment(server, data, safety_checker="off")
    process = await start_process(data, env, "worker", "--burst", log="worker.log")
    assert await asyncio.wait_for(process.wait(), 120) == STOPPED
    assert (await _job(data, server, after)).status == "succeeded"


async def test_sigterm_ends_a_worker_within_30_s_though_its_job_hangs(
    local_discord: LocalDiscord, tmp_path: Path
) -> None:
    server = local_discord
    data = tmp_path / "data"
    job_id = await _queue(data, server, "a white triangle")
    env = environment(
        server, data, safety_checker=HANGING, hang_seconds="600", stop_grace_seconds="1"
    )
    process = await start_process(data, env, "worker", log="worker.log")
    deadline = time.monotonic() + 90
    while (await _job(data, server, job_id)).status != "running":
        assert time.monotonic() < deadline, _log(data, "worker.log")
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # into the hung safety check
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(process.wait(), 40)
    log = _log(data, "worker.log")
    assert code == STOPPED, log
    assert time.monotonic() - started < 30
    job = await _job(data, server, job_id)
    assert (job.status, job.attempts, job.runs) == ("queued", 0, 1), log


@pytest.mark.postgres
async def test_a_worker_started_while_the_database_is_away_waits_for_it(
    local_discord: LocalDiscord, tmp_path: Path, postgres_url: str
) -> None:
    """A supervisor restarting a process that exits at once would soon give up on it
    (systemd: five starts in ten seconds); it waits for the database instead."""
    server = local_discord
    data = tmp_path / "data"
    async with FaultProxy("127.0.0.1", 5432) as proxy:
        url = proxy.url(postgres_url)
        job_id = await _queue(data, server, "a purple square", database_url=postgres_url)
        proxy.refuse(6)
        env = environment(server, data, database_url=url)
        process = await start_process(data, env, "worker", "--burst", log="worker.log")
        code = await asyncio.wait_for(process.wait(), 120)
    log = _log(data, "worker.log")
    assert code == STOPPED, log
    assert "reaching the database failed" in log
    async with open_runtime(bot_settings(server, data, database_url=postgres_url)) as runtime:
        assert (await runtime.service.job(job_id)).job.status == "succeeded"


@pytest.mark.postgres
async def test_a_request_while_the_database_is_away_is_told_so_and_the_next_works(
    local_discord: LocalDiscord, tmp_path: Path, postgres_url: str
) -> None:
    server = local_discord
    async with FaultProxy("127.0.0.1", 5432) as proxy:
        settings = bot_settings(server, tmp_path / "data", database_url=proxy.url(postgres_url))
        async with running_bot(settings):
            proxy.outage(4)
            asked = await server.invoke("imagine", server.alice, prompt="a red circle")
            answer = await server.wait_for(lambda: server.ephemeral_answer(asked), 60, "the answer")
            assert answer == AWAY
            await asyncio.sleep(4.5)
            again = await server.invoke("imagine", server.alice, prompt="a red circle")
            await server.wait_for(lambda: server.queued(again), 60, "the job queued")
