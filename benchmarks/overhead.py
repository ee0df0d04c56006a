"""What the service costs on top of the pipeline: the same jobs, with and without it.

Runs N jobs through the full path (service.submit → jobs table → worker claim with lease and
heartbeat → pipeline → PNG encoding with metadata → image store → fenced completion) and as a
bare loop of the same pipeline calls on the same loaded engine. The service runs twice: with a
finished job's PNGs and completion written while the next job renders (the default), and
strictly one after the other. Each round runs the three in a rotated order; the figures are
medians over rounds, and each ratio is the median of per-round ratios (service / bare; goal
≥ 0.97 on a GPU), which cancels most of the drift of a shared machine.

    python benchmarks/overhead.py --jobs 20 --rounds 3
    IMAGINE_MODEL=stabilityai/sd-turbo python benchmarks/overhead.py --steps 4 --guidance 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from generation.engine import DiffusersEngine, RenderSpec
from generation.events import EventBus
from generation.model_info import describe_model
from generation.requests import GenerationRequest, Limits
from generation.service import GenerationService
from generation.worker import Worker, WorkerConfig
from storage.db import Database
from storage.image_store import ImageStore


def bare_loop(engine: DiffusersEngine, specs: list[RenderSpec]) -> float:
    started = time.perf_counter()
    for spec in specs:
        engine.render(spec)
    return time.perf_counter() - started


async def through_service(
    engine: DiffusersEngine,
    requests: list[GenerationRequest],
    database_url: str,
    data: Path,
    *,
    overlap: bool,
) -> float:
    db = Database(database_url)
    await db.upgrade()
    try:
        limits = Limits(max_width=4096, max_height=4096, max_steps=1000)
        service = GenerationService(db, engine.model, limits)
        config = WorkerConfig(overlap_completion=overlap)
        worker = Worker(db, engine, ImageStore(data), EventBus(), config)
        started = time.perf_counter()
        for request in requests:
            await service.submit(request)
        done = await worker.run(burst=True)
        elapsed = time.perf_counter() - started
        assert done == len(requests), f"the worker ran {done} of {len(requests)} jobs"
        return elapsed
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("IMAGINE_MODEL", "embedded"))
    parser.add_argument("--device", default=os.environ.get("IMAGINE_DEVICE", "auto"))
    parser.add_argument("--dtype", default=os.environ.get("IMAGINE_DTYPE", "auto"))
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("IMAGINE_TORCH_THREADS", "1"))
    )
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--database-url", default=None, help="default: a SQLite file per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="imagine-bench-"))
    model = describe_model(args.model, scratch / "models")
    engine = DiffusersEngine(
        model, device=args.device, dtype=args.dtype, torch_threads=args.threads
    )
    requests = [
        GenerationRequest(
            prompt="a red circle on a blue background",
            user_id=1 + i % 3,
            seed=1000 + i,
            steps=args.steps,
            guidance=args.guidance,
            count=args.count,
            width=args.width,
            height=args.height,
        )
        for i in range(args.jobs)
    ]
    steps = args.steps or model.default_steps
    guidance = model.default_guidance if args.guidance is None else args.guidance
    width, height = args.width or model.native_width, args.height or model.native_height
    specs = [
        RenderSpec(
            request.prompt,
            "",
            tuple(request.seed + i for i in range(args.count)),  # type: ignore[operator]
            steps,
            guidance,
            width,
            height,
            model.scheduler,
        )
        for request in requests
    ]
    engine.render(specs[0])  # warm-up: first-call allocations and kernel selection

    times: dict[str, list[float]] = {"bare": [], "overlapped": [], "serial": []}
    runs = {
        "bare": lambda r: bare_loop(engine, specs),
        "overlapped": lambda r: asyncio.run(
            through_service(engine, requests, url(r, "o"), scratch / f"o{r}", overlap=True)
        ),
        "serial": lambda r: asyncio.run(
            through_service(engine, requests, url(r, "s"), scratch / f"s{r}", overlap=False)
        ),
    }

    def url(round_index: int, mode: str) -> str:
        return args.database_url or f"sqlite+aiosqlite:///{scratch / f'{mode}{round_index}.db'}"

    order = list(runs)
    for round_index in range(args.rounds):
        rotated = order[round_index % 3 :] + order[: round_index % 3]
        for mode in rotated:
            times[mode].append(runs[mode](round_index))

    def ratio(mode: str) -> float:
        return statistics.median(b / s for b, s in zip(times["bare"], times[mode], strict=True))

    images = args.jobs * args.count
    result = {
        "model": model.model_id,
        "device": engine.runtime.device,
        "dtype": engine.runtime.dtype,
        "torch_threads": engine.runtime.torch_threads,
        "jobs": args.jobs,
        "images_per_job": args.count,
        "steps": steps,
        "size": f"{width}x{height}",
        "rounds": args.rounds,
        **{f"{mode}_jobs_per_s": args.jobs / statistics.median(t) for mode, t in times.items()},
        **{f"{mode}_images_per_s": images / statistics.median(t) for mode, t in times.items()},
        "ratio": ratio("overlapped"),
        "ratio_serial": ratio("serial"),
        "seconds": times,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"model {result['model']} on {result['device']} ({result['dtype']}, "
        f"{result['torch_threads']} thread(s)), {args.jobs} jobs × {args.count} images, "
        f"{steps} steps, {width}x{height}, medians of {args.rounds} rounds"
    )
    for mode, label in [
        ("bare", "bare pipeline loop"),
        ("overlapped", "service"),
        ("serial", "service, serial"),
    ]:
        print(
            f"{label:<20}: {result[f'{mode}_jobs_per_s']:8.3f} jobs/s "
            f"({result[f'{mode}_images_per_s']:.2f} images/s)"
        )
    print(f"ratio service/bare         : {result['ratio']:.3f}")
    print(f"ratio service, serial/bare : {result['ratio_serial']:.3f}")


if __name__ == "__main__":
    main()
