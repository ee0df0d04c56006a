"""Several models on one worker: swaps, throughput and fair-share lag with and without
grouping; the weights' bytes txt2img alone vs with img2img, inpainting and a LoRA; load time
cold and from CPU RAM.

Two presets on the embedded architecture with different weights (the trained model and the
random-weight one, each a folder of its own), four users each alternating between them, jobs
queued through the service and run by a real worker and engine whose budget holds one model
(so every change of model is a swap). Grouping on: the worker's default bound, two jobs;
off: bound 0, the fair order alone. The lag of a claimed job is its start
tag minus the lowest waiting start tag when it was claimed, in jobs (a 2×2 grid at the
model's defaults for a member of weight 1: what every job here is, and the bound's unit).

    python benchmarks/models.py [--jobs 100] [--json]

Goals: ≤ 5 swaps per 100 jobs with grouping; largest lag within the bound; unique parameter
bytes with img2img, inpainting and a LoRA ≤ 1.1 × txt2img alone (an upscaler's own weights
excluded). On the CPU the device is RAM, so a model "moved to CPU RAM" stays where it was and
its swap back costs nothing: that line means something on a GPU only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from generation.access import Actor
from generation.engine import (
    DiffusersEngine,
    LoadCounts,
    RenderSpec,
    parameter_bytes,
)
from generation.events import EventBus
from generation.loras import LoraCatalogue
from generation.model_info import ModelInfo, describe_model
from generation.presets import Preset, PresetBook
from generation.quotas import Quotas
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService, default_job_cost
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore

HOST = Actor(1, host=True)
USERS = 4
SHIPPED_LORA = Path(__file__).resolve().parents[1] / "generation/embedded/loras"


def _models(root: Path) -> tuple[ModelInfo, Path, Path]:
    """The host's model and two preset folders: the trained and the random-weight model."""
    models_dir = root / "models"
    trained = describe_model("embedded", models_dir)
    random = describe_model("embedded-random", models_dir)
    shapes, noise = models_dir / "shapes", models_dir / "noise"
    shutil.copytree(trained.path, shapes)
    shutil.copytree(random.path, noise)
    return trained, shapes, noise


async def run_queue(jobs: int, grouping: bool, threads: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="models-bench-"))
    host, shapes, noise = _models(root)
    db = Database(f"sqlite+aiosqlite:///{root / 'imagine.db'}")
    await db.upgrade()
    store = ImageStore(root / "images")
    presets = PresetBook(db, ttl=0)
    service = GenerationService(
        db,
        host,
        Limits(),  # each job a 2×2 grid at the model's defaults: the bound's unit
        quotas=Quotas(queued_per_user=jobs, queued_per_guild=jobs, images_per_user_day=jobs),
        store=store,
        presets=presets,
        models_dir=root / "models",
    )
    for name, folder in (("shapes", shapes), ("noise", noise)):
        await service.put_preset(HOST, Preset(name=name, source=str(folder)))
    names = ("shapes", "noise")
    for n in range(jobs):
        user, turn = n % USERS, n // USERS
        request = GenerationRequest(
            f"a red circle {n}", user_id=100 + user, seed=n, model=names[(user + turn) % 2]
        )
        await service.submit(request)
    engine = DiffusersEngine(host, device="cpu", dtype="float32", torch_threads=threads)
    engine.memory_budget = 0  # one model on the device: a change of model is a swap
    loads_before = engine.counts.cold
    config = WorkerConfig(poll_interval=0.05, group_bound=2.0 if grouping else 0.0)
    worker = Worker(
        db, engine, store, EventBus(), config, presets=presets, models_dir=root / "models"
    )
    started = time.perf_counter()
    done = await worker.run(burst=True)
    seconds = time.perf_counter() - started
    async with db.uow() as uow:
        rows = await uow.jobs.recent(limit=jobs)
    await db.close()
    claimed = sorted(
        (job for job in rows if job.started_at is not None), key=lambda job: job.started_at
    )
    lags, waiting = [], {job.id: job for job in claimed}
    for job in claimed:
        lowest = min(other.start_tag for other in waiting.values())
        lags.append((job.start_tag - lowest) / default_job_cost(host))
        del waiting[job.id]
    swaps = sum(1 for a, b in itertools.pairwise(claimed) if a.model_id != b.model_id)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "grouping": grouping,
        "jobs": done,
        "swaps_per_100": round(100 * swaps / max(1, done), 1),
        "loads": engine.counts.cold - loads_before + engine.counts.from_cpu,
        "jobs_per_s": round(done / seconds, 2),
        "max_lag_jobs": round(max(lags, default=0.0), 2),
        "bound_jobs": config.group_bound,
    }


def weights_and_loads(steps: int) -> dict[str, Any]:
    """Unique parameter bytes per set of pipelines; cold and from-CPU load times."""
    from diffusers import AutoPipelineForInpainting

    root = Path(tempfile.mkdtemp(prefix="models-bench-"))
    host, _shapes, noise = _models(root)
    other = describe_model(str(noise), root / "models")
    catalogue = LoraCatalogue(SHIPPED_LORA, root / "hashes.json")
    engine = DiffusersEngine(
        host, device="cpu", dtype="float32", torch_threads=1, loras=catalogue, memory_budget=0
    )
    alone = parameter_bytes(engine.txt2img)
    inpaint = AutoPipelineForInpainting.from_pipe(engine.txt2img)
    shared = parameter_bytes(engine.txt2img, engine.img2img, inpaint)
    lora = catalogue.find("triangles")
    spec = RenderSpec("a red circle", "", (1,), steps, 5.0, 64, 64, host.scheduler)
    engine.render(RenderSpec(**{**_fields(spec), "loras": (("triangles", lora.sha256, 1.0),)}))
    with_lora = parameter_bytes(engine.txt2img, engine.img2img, inpaint)
    engine.offer([other])
    engine.cpu_budget = 4 * alone
    engine.counts = LoadCounts()
    for model_id in (other.model_id, host.model_id, other.model_id, host.model_id):
        engine.render(RenderSpec(**{**_fields(spec), "model_id": model_id}))
    counts = engine.counts
    shutil.rmtree(root, ignore_errors=True)
    return {
        "txt2img_bytes": alone,
        "with_img2img_inpaint_bytes": shared,
        "with_lora_bytes": with_lora,
        "ratio": round(with_lora / alone, 4),
        "cold_load_s": round(counts.cold_seconds / max(1, counts.cold), 3),
        "from_cpu_s": round(counts.from_cpu_seconds / max(1, counts.from_cpu), 4),
        "device": engine.runtime.device,
    }


def _fields(spec: RenderSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = [await run_queue(args.jobs, grouping, args.threads) for grouping in (True, False)]
    weights = weights_and_loads(2)
    if args.json:
        print(json.dumps({"queue": runs, "weights": weights}, indent=2))
        return
    print(f"{args.jobs} jobs, 4 users alternating two models, one model on the device at a time")
    print(f"{'grouping':>9} {'swaps/100':>9} {'jobs/s':>7} {'max lag':>8} {'bound':>6}")
    for run in runs:
        print(
            f"{'on' if run['grouping'] else 'off':>9} {run['swaps_per_100']:>9} "
            f"{run['jobs_per_s']:>7} {run['max_lag_jobs']:>8} {run['bound_jobs']:>6}"
        )
    w = weights
    print(
        f"parameter bytes: txt2img {w['txt2img_bytes']:,}; + img2img + inpainting "
        f"{w['with_img2img_inpaint_bytes']:,}; + a LoRA {w['with_lora_bytes']:,} "
        f"({w['ratio']}×)"
    )
    print(f"load on {w['device']}: cold {w['cold_load_s']} s, from CPU RAM {w['from_cpu_s']} s")


if __name__ == "__main__":
    asyncio.run(main())
