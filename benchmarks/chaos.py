"""Chaos: the bot and two workers as real processes on PostgreSQL, while things go wrong.

A bot (`imagine-bot run --no-worker`) and two workers (`imagine-bot worker`) reach PostgreSQL
through the tests' fault proxy and keep their images in an S3 store (moto) behind a second
proxy; four members of the local Discord submit /imagine. A seeded schedule then drops the
database twice for 20 s, SIGKILLs a worker and the bot, fails the store for 10 s and hangs one
job (a safety check that never answers). A supervisor loop starts again whatever exits non-zero,
as systemd's Restart=on-failure would. Counted at the end:

- submitted: jobs whose row was committed; never_submitted: an /imagine sent while the bot was
  down (Discord tells the member the application did not respond) or refused because the
  database was away (the member is told);
- delivered_once: jobs whose result (or failure notice) is in Discord exactly once;
- lost: submitted and never ended; duplicated: a result in Discord more than once;
- stuck: not ended, or not delivered, 60 s after the last fault ended;
- failed_with_reason: ended as failed, with the reason on the row (told to the user);
- unrequested_exit_0: a process that exited 0 without being asked to stop;
- max_recovery_s: from the end of the last fault to the last job ended and delivered.

Goal: 0 lost, 0 duplicated, 0 stuck, 0 unrequested exit 0, recovery within 60 s.

    python benchmarks/chaos.py [--jobs 40] [--seed 1] [--json]

Needs PostgreSQL (IMAGINE_TEST_POSTGRES_DSN, default postgresql://postgres@127.0.0.1:5432/
postgres) and the dev extras (moto, s3fs); makes and drops its own database. Takes minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import re
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fakes

from tests.bot.test_process import environment
from tests.fakediscord.actions import LocalDiscord
from tests.fakediscord.payloads import FakeUser, snowflake
from tests.faultproxy import FaultProxy
from tests.postgres import admin, url

SETTLE = 60.0  # how long after the last fault everything must have ended and been delivered
RESULT = re.compile(r"imagine-(\d+)\.(?:png|webp)$")
FAILED = re.compile(r"job (\d+) (?:failed|was cancelled|was deleted)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass
class Supervised:
    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None
    stopping: bool = False
    exits: list[int] = dataclasses.field(default_factory=list)


class Supervisor:
    """Starts the processes and starts again whatever exits non-zero (Restart=on-failure)."""

    def __init__(self) -> None:
        self.units: dict[str, Supervised] = {}
        self.unrequested_exit_0 = 0
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self, unit: Supervised) -> None:
        self.units[unit.name] = unit
        await self._spawn(unit)
        self._watchers.append(asyncio.create_task(self._watch(unit)))

    async def _spawn(self, unit: Supervised) -> None:
        with unit.log.open("a") as handle:
            unit.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", *unit.args, env=unit.env, stderr=handle
            )

    async def _watch(self, unit: Supervised) -> None:
        while True:
            assert unit.process is not None
            code = await unit.process.wait()
            unit.exits.append(code)
            if unit.stopping:
                return
            if code == 0:
                self.unrequested_exit_0 += 1
                return  # Restart=on-failure leaves it down: that is the failure counted
            await asyncio.sleep(1.0)
            await self._spawn(unit)

    def kill(self, name: str) -> None:
        process = self.units[name].process
        if process is not None and process.returncode is None:
            process.kill()

    async def stop_all(self) -> None:
        for unit in self.units.values():
            unit.stopping = True
            if unit.process is not None and unit.process.returncode is None:
                unit.process.send_signal(signal.SIGTERM)
        for unit in self.units.values():
            if unit.process is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(unit.process.wait(), 40)
        for watcher in self._watchers:
            watcher.cancel()


@dataclasses.dataclass(frozen=True)
class Fault:
    at: float  # seconds after the first submission
    kind: str
    seconds: float = 0.0


def schedule(rng: random.Random) -> list[Fault]:
    """Two 20 s database outages, a worker and the bot killed, the store down 10 s and one
    hung job, in a seeded order with seeded gaps; no two outages of one thing overlap."""
    faults = [
        ("database", 20.0),
        ("kill-worker", 0.0),
        ("store", 10.0),
        ("database", 20.0),
        ("kill-bot", 0.0),
        ("hang", 0.0),
    ]
    rng.shuffle(faults)
    at, planned = 8.0, []
    for kind, seconds in faults:
        planned.append(Fault(round(at, 1), kind, seconds))
        at += seconds + rng.uniform(4.0, 12.0)
    return planned


async def _s3(proxy_port: int) -> dict[str, Any]:
    options = {
        "endpoint_url": f"http://127.0.0.1:{proxy_port}",
        "key": "chaos",
        "secret": "chaos",
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    import s3fs

    await asyncio.to_thread(s3fs.S3FileSystem(**options).mkdir, "imagine")
    return options


async def run(jobs: int, seed: int) -> dict[str, Any]:  # noqa: PLR0915 - one scenario, told in order
    from moto.server import ThreadedMotoServer
    from sqlalchemy import select

    from storage.db import Database
    from storage.models import Delivery, Job

    rng = random.Random(seed)
    name = f"imagine_chaos_{uuid.uuid4().hex[:10]}"
    await admin(f'CREATE DATABASE "{name}"')
    s3_port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    database_url = url(name)
    direct = Database(database_url)
    await direct.upgrade()
    supervisor = Supervisor()
    planned = schedule(rng)
    try:
        async with (
            LocalDiscord() as server,
            FaultProxy("127.0.0.1", 5432) as database_proxy,
            FaultProxy("127.0.0.1", s3_port) as store_proxy,
        ):
            server.response_deadline = 10.0  # two busy cores and a torch thread each: generous
            options = await _s3(store_proxy.port)
            hang_file = work / "hang-now"
            shared = {
                "database_url": database_proxy.url(database_url),
                "image_store": "s3://imagine/chaos",
                "image_store_options": json.dumps(options),
                "lease_seconds": "10",
                "reap_interval": "2",
                "hang_seconds": "20",
                "max_attempts": "4",
                "safety_checker": "tests.hanging:HangOnceChecker",
                "chaos_hang_file": str(hang_file),
                "queued_per_guild": "1000",
                "stop_grace_seconds": "5",
                "log_level": "INFO",
                "env_file": "",
            }
            data = work / "data"
            bot = Supervised(
                "bot", ("run", "--no-worker"), environment(server, data, **shared), work / "bot.log"
            )
            await supervisor.start(bot)
            await server.wait_for(lambda: "imagine" in server.commands, 120, "the bot")
            for number in (1, 2):
                await supervisor.start(
                    Supervised(
                        f"worker-{number}",
                        ("worker",),
                        environment(server, data, **shared),
                        work / f"worker-{number}.log",
                    )
                )
            users = [server.alice, server.bob] + [
                FakeUser(snowflake(), n) for n in ("carol", "dave")
            ]
            started = time.monotonic()
            fault_ends: list[float] = []

            async def submit() -> None:
                for number in range(jobs):
                    user = rng.choice(users)
                    with contextlib.suppress(Exception):
                        await server.invoke("imagine", user, prompt=f"a red circle {number}")
                    await asyncio.sleep(rng.uniform(1.0, 3.0))

            async def faults() -> None:
                for fault in planned:
                    await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
                    if fault.kind == "database":
                        database_proxy.outage(fault.seconds)
                    elif fault.kind == "store":
                        store_proxy.outage(fault.seconds)
                    elif fault.kind == "kill-worker":
                        supervisor.kill(rng.choice(["worker-1", "worker-2"]))
                    elif fault.kind == "kill-bot":
                        supervisor.kill("bot")
                    elif fault.kind == "hang":
                        hang_file.touch()
                    fault_ends.append(time.monotonic() + fault.seconds)

            await asyncio.gather(submit(), faults())
            last_fault = max(fault_ends)
            await asyncio.sleep(max(0.0, last_fault - time.monotonic()))

            async def state() -> tuple[dict[int, str], dict[int, bool], dict[int, str | None]]:
                async with direct.uow() as uow:
                    rows = (await uow.session.execute(select(Job.id, Job.status, Job.error))).all()
                    delivered = dict(
                        (
                            await uow.session.execute(
                                select(Delivery.job_id, Delivery.delivered_at.is_not(None))
                            )
                        ).all()
                    )
                return (
                    {row[0]: row[1] for row in rows},
                    {k: bool(v) for k, v in delivered.items()},
                    {row[0]: row[2] for row in rows},
                )

            recovered_at = None
            while time.monotonic() < last_fault + SETTLE:
                statuses, delivered, _ = await state()
                done = all(
                    s in ("succeeded", "failed", "cancelled") and delivered.get(i, True)
                    for i, s in statuses.items()
                )
                if done:
                    recovered_at = time.monotonic()
                    break
                await asyncio.sleep(1.0)
            statuses, delivered, errors = await state()
            results = _results(server)
            await supervisor.stop_all()
    finally:
        await direct.close()
        moto.stop()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ended = ("succeeded", "failed", "cancelled")
    return {
        "jobs_sent": jobs,
        "submitted": len(statuses),
        # Sent while the bot was down (Discord says the application did not respond) or
        # refused at once because the database was away (the user is told): never a row.
        "never_submitted": jobs - len(statuses),
        "delivered_once": sum(results.get(i, 0) == 1 for i in statuses),
        "lost": sum(s not in ended for s in statuses.values()),
        "duplicated": sum(results.get(i, 0) > 1 for i in statuses),
        "stuck": sum(s not in ended or not delivered.get(i, True) for i, s in statuses.items()),
        "failed_with_reason": sum(s == "failed" and bool(errors[i]) for i, s in statuses.items()),
        "failed_without_reason": sum(s == "failed" and not errors[i] for i, s in statuses.items()),
        "unrequested_exit_0": supervisor.unrequested_exit_0,
        "max_recovery_s": None if recovered_at is None else round(recovered_at - last_fault, 1),
        "exits": {unit.name: unit.exits for unit in supervisor.units.values()},
        "faults": [dataclasses.asdict(fault) for fault in planned],
        "logs": str(work),
    }


def _results(server: LocalDiscord) -> dict[int, int]:
    """How many messages in Discord carry each job's result or failure notice."""
    seen: dict[int, int] = {}
    for message in server.messages.values():
        ids = {int(m[1]) for a in message["attachments"] if (m := RESULT.search(a["filename"]))}
        if not ids:
            ids = {int(m) for m in FAILED.findall(message.get("content") or "")}
        for job_id in ids:
            seen[job_id] = seen.get(job_id, 0) + 1
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.jobs, args.seed))
    if args.json:
        print(json.dumps(result))
        return
    for key in (
        "jobs_sent", "submitted", "never_submitted", "delivered_once", "lost", "duplicated",
        "stuck", "failed_with_reason", "failed_without_reason", "unrequested_exit_0",
        "max_recovery_s",
    ):  # fmt: skip
        print(f"{key:<24} {result[key]}")
    print("exits", result["exits"])
    print("faults", [(f["at"], f["kind"]) for f in result["faults"]])
    print("logs in", result["logs"])


if __name__ == "__main__":
    main()
