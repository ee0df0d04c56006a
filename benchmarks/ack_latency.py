"""How fast /imagine is acknowledged while the GPU is busy.

Starts `imagine-bot run` (a real process, the embedded model, a SQLite file or a fresh
PostgreSQL database) against the local Discord from the tests, starts one long job, then sends
50 /imagine from 50 members at once while it generates. Each job is committed before its
acknowledgement goes out. Prints p50 / p99 / max of the time from INTERACTION_CREATE leaving
the local Discord to the bot's acknowledgement arriving back (goal: p99 < 250 ms), then kills
the bot at once and checks that every acknowledged request is in the database (its job, or
the record it is made from at the next start).

    python benchmarks/ack_latency.py [--requests 50] [--rounds 3] [--database sqlite|postgresql]
        [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' local Discord

from storage.db import Database
from tests.bot.test_process import start_bot
from tests.fakediscord.actions import LocalDiscord
from tests.postgres import admin, url


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(requests: int, rounds: int, database: str) -> dict[str, float | str]:
    latencies: list[float] = []
    name = f"imagine_ack_{uuid.uuid4().hex[:10]}"
    data = Path(tempfile.mkdtemp(prefix="ack-latency-")) / "data"
    database_url = f"sqlite+aiosqlite:///{data / 'imagine.db'}"
    if database == "postgresql":
        await admin(f'CREATE DATABASE "{name}"')
        database_url = url(name)
    async with LocalDiscord() as server:
        # Quotas would refuse some of 50 × rounds jobs from fresh users; refusals are answers
        # too, but the point is the path that commits a job.
        process = await start_bot(server, data, queued_per_guild="10000", database_url=database_url)
        asked_ids: list[int] = []
        try:
            for n in range(rounds):
                busy = await server.invoke("imagine", server.alice, prompt="a long job", steps=50)
                await server.wait_for(lambda b=busy: b.answered, 30, "the long job's answer")
                await server.wait_for(
                    lambda: any("step" in e["content"] for _, e in server.edits), 60, "progress"
                )
                users = [server.add_member(f"member-{n}-{i}") for i in range(requests)]
                asked = await asyncio.gather(
                    *(
                        server.invoke("imagine", user, prompt=f"a red circle {i}")
                        for i, user in enumerate(users)
                    )
                )
                await server.wait_for(
                    lambda a=asked: all(i.answered for i in a), 60, "every acknowledgement"
                )
                latencies += [1000 * (i.answered - i.created) for i in asked]  # type: ignore[operator]
                asked_ids += [i.id for i in asked]
                server.edits.clear()
        finally:
            process.kill()  # at once: every acknowledged request must be stored already
            await process.wait()
    db = Database(database_url)
    try:
        async with db.uow() as uow:
            written = {intent.interaction_id for intent in await uow.intents.pending(100_000)}
            missing = [
                i
                for i in asked_ids
                if i not in written and await uow.jobs.by_interaction(i) is None
            ]
    finally:
        await db.close()
        if database == "postgresql":
            await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if missing:
        raise SystemExit(f"{len(missing)} acknowledged requests have no job: {missing[:5]}")
    return {
        "database": database,
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.rounds, args.database))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['requests']} /imagine acknowledged while a job generates ({args.database}):")
    print(f"  p50 {result['p50_ms']} ms   p99 {result['p99_ms']} ms   max {result['max_ms']} ms")


if __name__ == "__main__":
    main()
