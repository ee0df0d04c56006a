"""A waiting job's message keeps its place in line, edited as it changes, within a budget of
edits a second for all of them, through the local Discord."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from bot.places import EditBudget
from tests.bot.conftest import bot_settings, running_bot
from tests.fakediscord.actions import LocalDiscord

RATE = 20.0  # edits a second for the places of all waiting jobs


def test_the_budget_gives_its_rate_after_its_burst() -> None:
    now = [0.0]
    budget = EditBudget(10.0, burst=5.0, clock=lambda: now[0])
    assert sum(budget.take() for _ in range(20)) == 5  # the burst at once
    now[0] += 1.0
    assert sum(budget.take() for _ in range(20)) == 5  # a second refills 10, capped at 5
    now[0] += 0.25
    assert sum(budget.take() for _ in range(20)) == 2


async def test_two_hundred_waiting_jobs_are_told_their_place_within_the_edit_budget(
    local_discord: LocalDiscord, tmp_path: Path
) -> None:
    server = local_discord
    settings = bot_settings(
        server,
        tmp_path / "data",
        model="embedded-random",
        max_count=1,
        queued_per_user=500,
        queued_per_guild=500,
        place_interval=0.5,
        place_edits_per_second=RATE,
    )
    # No worker: every job waits.
    async with running_bot(settings) as running:
        asked = []
        for number in range(200):
            interaction = await server.invoke("imagine", server.alice, prompt=f"a circle {number}")
            asked.append(interaction)
            await server.wait_for(lambda i=interaction: server.queued(i), what="queued")
        last = server.original(asked[-1])
        assert last is not None and "200th in line" in last["content"]

        def place_edits(since: float) -> list[float]:
            return [
                call.at
                for call in server.calls
                if call.method == "PATCH"
                and call.path.startswith("/api/v10/webhooks/")
                and call.at >= since
                and "in line" in str((call.json or {}).get("content"))
            ]

        # Nothing changes while no job ends: no edit at all.
        quiet = server.calls[-1].at + 1e-6  # after the last acknowledgement's edit
        await asyncio.sleep(1.5)
        assert place_edits(quiet) == []

        # The first 100 go: the other 100 move up, and each is told, front first.
        service = running.runtime.service
        job_ids = [
            int(re.search(r"job (\d+)", server.original(i)["content"])[1])  # type: ignore[index]
            for i in asked
        ]
        start = server.calls[-1].at + 1e-6
        for job_id in job_ids[:100]:
            await service.cancel(job_id, server.alice.id)
        await server.wait_for(
            lambda: "100th in line" in server.original(asked[-1])["content"],
            seconds=60,
            what="the last job's new place",
        )
        assert "1st in line" in server.original(asked[100])["content"]
        edits = place_edits(start)
        assert len(edits) >= 100
        # Never more than the budget: its rate a second, after a first burst of as many.
        for at in edits:
            assert sum(at <= other < at + 1.0 for other in edits) <= 2 * RATE
        assert edits[-1] - edits[0] >= (100 - 2 * RATE) / RATE * 0.9
