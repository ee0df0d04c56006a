"""How fast /imagine is acknowledged while the GPU is busy.

Starts `imagine-bot run` (a real process, the embedded model, a SQLite file) against the local
Discord from the tests, starts one long job, then sends 50 /imagine from 50 members at once
while it generates. Prints p50 / p99 / max of the time from INTERACTION_CREATE leaving the
local Discord to the bot's acknowledgement arriving back (goal: p99 < 250 ms).

    python benchmarks/ack_latency.py [--requests 50] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' local Discord

from tests.bot.test_process import start_bot
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.payloads import FakeUser, snowflake


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(requests: int, rounds: int) -> dict[str, float]:
    latencies: list[float] = []
    async with LocalDiscord() as server:
        data = Path(tempfile.mkdtemp(prefix="ack-latency-")) / "data"
        # Quotas would refuse some of 50 × rounds jobs from fresh users; refusals are answers
        # too, but the point is the path that commits a job.
        process = await start_bot(server, data, queued_per_guild="10000")
        try:
            for _ in range(rounds):
                busy = await server.invoke("imagine", server.alice, prompt="a long job", steps=50)
                await server.wait_for(lambda b=busy: b.answered, 30, "the long job's answer")
                await server.wait_for(
                    lambda: any("step" in e["content"] for _, e in server.edits), 60, "progress"
                )
                users = [FakeUser(snowflake(), f"member-{i}") for i in range(requests)]
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
                server.edits.clear()
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 60)
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.rounds))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['requests']} /imagine acknowledged while a job generates:")
    print(f"  p50 {result['p50_ms']} ms   p99 {result['p99_ms']} ms   max {result['max_ms']} ms")


if __name__ == "__main__":
    main()
