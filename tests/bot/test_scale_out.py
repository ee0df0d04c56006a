"""Scaled out: one bot process and two worker processes on PostgreSQL, killed and restarted."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from bot.runtime import open_runtime
from tests.bot.conftest import bot_settings
from tests.bot.test_delivery import results_for
from tests.bot.test_imagine import png_of
from tests.bot.test_process import environment, start_bot, start_process
from tests.fakediscord.actions import LocalDiscord

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(900)]


async def _busy_with(settings: Any, user_id: int, other_id: int) -> tuple[Any, int]:
    """The first worker seen running a job of ``user_id``, and how many of ``other_id``'s
    jobs were still waiting then."""
    async with open_runtime(settings) as runtime:
        while True:
            async with runtime.db.uow() as uow:
                for worker in await uow.workers.all():
                    if worker.state == "busy" and worker.current_job_id is not None:
                        job = await uow.jobs.get(worker.current_job_id)
                        if job is not None and job.user_id == user_id:
                            waiting = await uow.jobs.recent(user_id=other_id, status="queued")
                            return worker, len(waiting)
            await asyncio.sleep(0.02)


async def test_two_workers_and_a_bot_deliver_twenty_jobs_once_in_fair_order_through_kills(
    local_discord: LocalDiscord, tmp_path: Path, postgres_url: str
) -> None:
    server = local_discord
    data = tmp_path / "data"
    shared = {"database_url": postgres_url, "lease_seconds": "3", "safety_checker": "off"}
    bot = await start_bot(server, data, "--no-worker", **shared)
    workers: list[asyncio.subprocess.Process] = []
    carol = server.add_member("carol of the first server")
    settings = bot_settings(server, data, database_url=postgres_url)
    asked = []
    try:
        # kill -9 a worker in the middle of one of bob's (longer) jobs; the job goes to the
        # other worker. The watch starts before anything is queued, so it cannot miss one.
        async def kill_the_busy_worker() -> tuple[Any, int]:
            busy, alice_waiting = await _busy_with(settings, server.bob.id, server.alice.id)
            victim = next(p for p in workers if p.pid == busy.pid)
            victim.kill()
            await victim.wait()
            return busy, alice_waiting

        watch = asyncio.create_task(kill_the_busy_worker())
        for i in range(10):
            asked.append(await server.invoke("imagine", server.alice, prompt=f"alice {i}", count=1))
        for i in range(5):
            asked.append(await server.invoke("imagine", server.bob, prompt=f"bob {i}", steps=50))
            asked.append(await server.invoke("imagine", carol, prompt=f"carol {i}", count=1))
        for interaction in asked:  # all queued before any worker looks: the order is fair share's
            await server.wait_for(lambda i=interaction: server.queued(i), what="queued")
        workers += [
            await start_process(
                data, environment(server, data, **shared), "worker", log=f"worker-{n}.log"
            )
            for n in range(2)
        ]
        busy, alice_waiting = await asyncio.wait_for(watch, 120)

        # The bot goes away and comes back while the other worker carries on.
        bot.kill()
        await bot.wait()
        await asyncio.sleep(1)
        bot = await start_bot(server, data, "--no-worker", **shared)

        results = [await server.wait_for_result(a, seconds=240) for a in asked]
    finally:
        for process in [bot, *workers]:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in [bot, *workers]:
            await asyncio.wait_for(process.wait(), 60)

    assert any("step" in edit["content"] for _, edit in server.edits), "progress crossed over"
    job_ids = [json.loads(png_of(server, r).text["imagine-bot"])["job_id"] for r in results]
    assert len(set(job_ids)) == 20
    for job_id, result in zip(job_ids, results, strict=True):
        assert results_for(server, job_id) == [result], f"job {job_id} delivered once"
    async with open_runtime(settings) as runtime:
        jobs = {job_id: (await runtime.service.job(job_id)).job for job_id in job_ids}
    assert {job.status for job in jobs.values()} == {"succeeded"}
    retried = jobs[busy.current_job_id]  # type: ignore[index]
    assert retried.attempts == 2 and retried.lease_owner != busy.id

    # Fair share: bob and carol, who asked after alice's ten, did not wait behind them all.
    assert alice_waiting >= 5, "bob's first job ran while most of alice's still waited"
    carols = min(j.started_at for j in jobs.values() if j.user_id == carol.id)
    alices = sorted(j.started_at for j in jobs.values() if j.user_id == server.alice.id)
    assert carols < alices[5]  # type: ignore[operator]
