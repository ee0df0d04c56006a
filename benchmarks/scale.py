"""How far the PostgreSQL queue scales with worker processes.

1. The queue's own ceiling: 1, 2, 4 and 8 worker processes, each the real Worker (claim in one
   transaction with the fair-share pick and FOR UPDATE SKIP LOCKED, lease, completion fenced on
   the lease, image rows, usage) on an engine that returns a blank 64×64 image at once. Prints
   jobs per second over all processes.
2. End to end with the embedded model: 1 and 2 `imagine-bot worker --burst` processes (one
   torch thread each) on 4-image jobs. Prints jobs per second.

Needs PostgreSQL (IMAGINE_TEST_POSTGRES_DSN, default postgresql://postgres@127.0.0.1:5432/
postgres); makes and drops its own databases.

    python benchmarks/scale.py [--jobs 400] [--e2e-jobs 8] [--processes 1,2,4,8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' PostgreSQL helpers

from tests.postgres import admin, url

NOOP = "noop"


async def _fresh_database(jobs: int, users: int, model: Any = None, count: int = 1) -> str:
    from generation.model_info import ModelInfo
    from generation.requests import GenerationRequest, Limits
    from generation.service import GenerationService
    from storage.db import Database

    name = f"imagine_scale_{uuid.uuid4().hex[:10]}"
    await admin(f'CREATE DATABASE "{name}"')
    db = Database(url(name))
    await db.upgrade()
    info = model or ModelInfo(
        model_id=NOOP,
        path=".",
        revision="0" * 12,
        native_width=64,
        native_height=64,
        default_steps=10,
        default_guidance=3.0,
        scheduler="DPMSolverMultistepScheduler",
        local=True,
    )
    service = GenerationService(db, info, Limits())
    for i in range(jobs):
        await service.submit(GenerationRequest(f"job {i}", user_id=1 + i % users, count=count))
    await db.close()
    return url(name)


class _NoopEngine:
    """Returns a blank image at once: what is left is the queue and the bookkeeping."""

    def __init__(self, model: str) -> None:
        from generation.engine import RuntimeInfo

        self.model: Any = None
        self.models = {model: None}
        self.runtime = RuntimeInfo("cpu", "cpu", "float32", 1, {})

    async def render_async(self, spec: Any, on_step: Any = None) -> list[Image.Image]:
        return [Image.new("RGB", (spec.width, spec.height)) for _ in spec.seeds]


def _noop_worker(url: str, data: str, model: str) -> None:
    from generation.events import EventBus
    from generation.worker import Worker, WorkerConfig
    from storage.db import Database
    from storage.image_store import ImageStore

    async def run() -> None:
        db = Database(url)
        config = WorkerConfig(poll_interval=0.05)
        worker = Worker(db, _NoopEngine(model), ImageStore(Path(data)), EventBus(), config)  # type: ignore[arg-type]
        await worker.run(burst=True)
        await db.close()

    asyncio.run(run())


async def queue_ceiling(jobs: int, processes: int) -> float:
    url = await _fresh_database(jobs, users=50)
    data = tempfile.mkdtemp(prefix="scale-")
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_noop_worker, args=(url, data, NOOP)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return await _rate(url, jobs)


async def _rate(url: str, jobs: int) -> float:
    """Jobs per second from the first claim to the last completion, by the database's clock:
    starting the processes (imports, loading the model) is not the queue's cost."""
    from sqlalchemy import func, select

    from storage.db import Database
    from storage.models import Job

    db = Database(url)
    async with db.uow() as uow:
        first, last, done = (
            await uow.session.execute(
                select(func.min(Job.started_at), func.max(Job.finished_at), func.count()).where(
                    Job.status == "succeeded"
                )
            )
        ).one()
    await db.close()
    await admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    if done != jobs:
        raise RuntimeError(f"{done} of {jobs} jobs succeeded")
    return float(jobs / (last - first).total_seconds())


async def end_to_end(jobs: int, processes: int) -> float:
    from generation.model_info import describe_model

    data = Path(tempfile.mkdtemp(prefix="scale-e2e-"))
    model = describe_model("embedded", data / "models")
    url = await _fresh_database(jobs, users=4, model=model, count=4)
    env = {
        **os.environ,
        "IMAGINE_DATABASE_URL": url,
        "IMAGINE_DATA_DIR": str(data),
        "IMAGINE_SAFETY_CHECKER": "off",
        "IMAGINE_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    running = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "worker", "--burst", env=env, stderr=subprocess.DEVNULL
        )
        for _ in range(processes)
    ]
    for process in running:
        await process.wait()
    return await _rate(url, jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--e2e-jobs", type=int, default=8)
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    result: dict[str, Any] = {"queue_jobs_per_second": {}, "end_to_end_jobs_per_second": {}}
    for count in counts:
        rate = asyncio.run(queue_ceiling(args.jobs, count))
        result["queue_jobs_per_second"][count] = round(rate, 1)
    for count in (1, 2):
        rate = asyncio.run(end_to_end(args.e2e_jobs, count))
        result["end_to_end_jobs_per_second"][count] = round(rate, 3)
    if args.json:
        print(json.dumps(result))
        return
    print("worker processes | queue ceiling (no-op engine), jobs/s")
    for count, rate in result["queue_jobs_per_second"].items():
        print(f"{count:>16} | {rate}")
    print("worker processes | end to end (embedded model, 4 images a job), jobs/s")
    for count, rate in result["end_to_end_jobs_per_second"].items():
        print(f"{count:>16} | {rate}")


if __name__ == "__main__":
    main()
