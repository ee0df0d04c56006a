"""Scaled out: one bot process and two worker processes on PostgreSQL, killed and restarted."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from bot.runtime import open_runtime
from tests.bot.conftest import bot_settings
from tests.bot.test_delivery import results_for
from tests.bot.test_imagine import png_of
from tests.bot.test_process import environment, start_bot, start_process
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.payloads import FakeUser, snowflake

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(900)]


async def test_two_workers_and_a_bot_deliver_twenty_jobs_once_in_fair_order_through_kills(
    local_discord: LocalDiscord, tmp_path: Path, postgres_url: str
) -> None:
    server = local_discord
    data = tmp_path / "data"
    shared = {"database_url": postgres_url, "lease_seconds": "3", "safety_checker": "off"}
    bot = await start_bot(server, data, "--no-worker", **shared)
    workers = [
        await start_process(
            data, environment(server, data, **shared), "worker", log=f"worker-{n}.log"
        )
        for n in range(2)
    ]
    carol = FakeUser(snowflake(), "carol")
    asked = []
    try:
        for i in range(10):
            asked.append(await server.invoke("imagine", server.alice, prompt=f"alice {i}", count=1))
        for i in range(5):
            asked.append(await server.invoke("imagine", server.bob, prompt=f"bob {i}", steps=30))
            asked.append(await server.invoke("imagine", carol, prompt=f"carol {i}", count=1))

        # kill -9 a worker in the middle of one of bob's (longer) jobs; the job goes to the
        # other worker.
        settings = bot_settings(server, data, database_url=postgres_url)
        async with open_runtime(settings) as runtime:
            bobs = {v.job.id for v in await runtime.service.recent(user_id=server.bob.id)}
            async with runtime.db.uow() as uow:
                while not any(w.current_job_id in bobs for w in await uow.workers.all()):
                    await asyncio.sleep(0.05)
                    await uow.rollback()
                busy = next(w for w in await uow.workers.all() if w.current_job_id in bobs)
        victim = next(p for p in workers if p.pid == busy.pid)
        victim.kill()
        await victim.wait()

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

    def starts(user: FakeUser) -> list:  # type: ignore[type-arg]
        return sorted(j.started_at for j in jobs.values() if j.user_id == user.id)

    # Fair share: bob and carol, who came later, did not wait behind all of alice's jobs.
    assert starts(server.bob)[0] < starts(server.alice)[5]
    assert starts(carol)[0] < starts(server.alice)[5]
