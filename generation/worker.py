"""The worker loop: claim the next job, run it in a thread, record and announce the result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image
from sqlalchemy.exc import SQLAlchemyError

from generation.errors import RenderCancelled
from generation.events import (
    EventBus,
    JobCancelled,
    JobClaimed,
    JobFailed,
    JobProgress,
    JobSucceeded,
)
from generation.imaging import encode_png, make_grid, pixel_sha256
from generation.openai_engine import (
    CONTENT_REFUSED,
    ContentRefused,
    EngineBusy,
    EngineRefusedKey,
)
from generation.rendering import (
    attempt_prefix,
    grid_key,
    image_key,
    load_init_image,
    spec_for_job,
)
from generation.safety import SafetyChecker, SafetyPolicy
from storage.db import Database
from storage.image_store import ImageStore
from storage.models import EventKind, JobStatus, utcnow
from storage.records import JobRecord, Lease, NewImage

if TYPE_CHECKING:  # the engine module imports torch: seconds the bot-only process never needs
    from generation.engine import Engine, StepProgress

logger = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
# After an image API refused the host's key, claims pause this long.
KEY_RETRY_SECONDS = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    worker_id: str = dataclasses.field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:12]}")
    lease_seconds: float = 120.0
    poll_interval: float = 1.0
    preview_interval: float = 2.0
    # How often a running job renews its lease and looks for a cancel request.
    heartbeat_interval: float = 2.0
    # Write a finished job's files and completion while the next job renders. None: only on a
    # GPU. On the CPU the two fight over the same cores and the GIL: benchmarks/overhead.py
    # measured the overlap slower there.
    overlap_completion: bool | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Rendered:
    images: list[Image.Image]
    gpu_seconds: float


class _RunState:
    """Shared between the pipeline thread and the event loop while one job runs."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lease_lost = False
        self.last_step_at = time.monotonic()
        self.last_preview_at = 0.0
        self.done = 0.0  # fraction of the denoising steps finished


class Worker:
    """Runs jobs one at a time on one engine; ``burst`` drains the queue and returns."""

    def __init__(
        self,
        db: Database,
        engine: Engine,
        store: ImageStore,
        events: EventBus,
        config: WorkerConfig | None = None,
        *,
        clock: Clock = utcnow,
        checker: SafetyChecker | None = None,
        safety: SafetyPolicy | None = None,
    ) -> None:
        self.db = db
        self.checker = checker
        self.safety = safety or SafetyPolicy()
        self.engine = engine
        self.store = store
        self.events = events
        self.config = config or WorkerConfig()
        self.clock = clock
        self._stopping = asyncio.Event()
        self._resume_at = 0.0  # an image API's retry-after: no claim before then

    @property
    def _overlap(self) -> bool:
        if self.config.overlap_completion is None:
            return self.engine.runtime.device_kind != "cpu"
        return self.config.overlap_completion

    @property
    def _checker_name(self) -> str:
        return self.checker.name if self.checker else "none"

    @property
    def worker_id(self) -> str:
        return self.config.worker_id

    def stop(self) -> None:
        """Stop claiming; the job in hand finishes first."""
        self._stopping.set()

    async def run(self, *, burst: bool = False) -> int:
        """Claim and run jobs until stopped (or, in burst mode, until the queue is empty).

        On a GPU a finished job's PNGs and completion are written while the next job renders,
        so the device never waits on disk or database; at most one completion is in flight.
        """
        done = 0
        finishing: asyncio.Task[JobStatus | None] | None = None
        await self._announce()
        logger.info("worker %s started", self.worker_id)
        try:
            while not self._stopping.is_set():
                if (wait := self._resume_at - time.monotonic()) > 0:
                    await self._pause(wait)
                    continue
                try:
                    claimed = await self.claim()
                except (SQLAlchemyError, OSError):
                    if burst:
                        raise
                    # The database went away for a moment: the queue is still there, wait and retry.
                    logger.exception("worker %s could not claim; retrying", self.worker_id)
                    await self._pause()
                    continue
                if claimed is None:
                    if finishing is not None:
                        await finishing
                        finishing = None
                    if burst:
                        break
                    await self._pause()
                    continue
                job, lease = claimed
                self.events.publish(JobClaimed(job.id, self.worker_id, lease.attempt))
                outcome = await self._render(job, lease)
                if finishing is not None:
                    await finishing
                    finishing = None
                if isinstance(outcome, _Rendered):
                    finishing = asyncio.create_task(
                        self._complete(job, lease, outcome), name=f"complete-{job.id}"
                    )
                    if not self._overlap:
                        await finishing
                        finishing = None
                done += 1
        finally:
            if finishing is not None:
                await finishing
            await self._beat("stopped", None)
        logger.info("worker %s stopped after %d jobs", self.worker_id, done)
        return done

    async def _pause(self, seconds: float | None = None) -> None:
        """Wait one poll interval (or ``seconds``), or less if asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._stopping.wait(), self.config.poll_interval if seconds is None else seconds
            )

    async def _api_trouble(
        self, job: JobRecord, lease: Lease, trouble: Exception
    ) -> JobStatus | None:
        """An image API said no: slow down (429), the host's key is wrong, or the request
        broke its content policy. Only the last is the job's fault."""
        if isinstance(trouble, ContentRefused):
            return await self._refused(job, lease, trouble)
        if isinstance(trouble, EngineBusy):
            logger.warning("job %s: %s; back to the queue", job.id, trouble)
            pause = trouble.retry_after
        else:
            # No job is to blame: they wait in the queue while the host fixes the key.
            logger.error("job %s: %s; the job goes back to the queue", job.id, trouble)
            pause = KEY_RETRY_SECONDS
        await self._release(job, lease)
        self._resume_at = time.monotonic() + pause
        return None

    async def _refused(
        self, job: JobRecord, lease: Lease, refused: ContentRefused
    ) -> JobStatus | None:
        """The image API refused the request: the job fails, and a moderation event keeps the
        API's reason (the user is told without it)."""
        async with self.db.uow() as uow:
            ended = await uow.queue.finish(
                lease,
                JobStatus.FAILED,
                self.clock(),
                unrun=1.0,
                error=f"{CONTENT_REFUSED}: {refused.reason}",
            )
            if ended:
                await uow.events.add(
                    kind=EventKind.CONTENT_REFUSED,
                    actor_id=None,
                    guild_id=job.guild_id,
                    target_user_id=job.user_id,
                    job_id=job.id,
                    reason=refused.reason,
                    details={"model": job.model_id, "prompt": job.prompt},
                    created_at=self.clock(),
                )
                await uow.commit()
        if not ended:
            return None
        self.events.publish(JobFailed(job.id, CONTENT_REFUSED))
        return JobStatus.FAILED

    async def claim(self) -> tuple[JobRecord, Lease] | None:
        """The next job for one of this engine's models, with a lease; the worker's row says
        what it is doing in the same transaction."""
        async with self.db.uow() as uow:
            now = self.clock()
            claimed = await uow.queue.claim(
                self.worker_id, self.config.lease_seconds, now, model_ids=list(self.engine.models)
            )
            job_id = claimed[0].id if claimed else None
            await uow.workers.beat(self.worker_id, "busy" if claimed else "idle", job_id, now)
            await uow.commit()
        return claimed

    async def _announce(self) -> None:
        """Say who this worker is (id, host, device, models) where `imagine-bot workers` looks."""
        try:
            async with self.db.uow() as uow:
                await uow.workers.announce(
                    self.worker_id,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    device=self.engine.runtime.device,
                    models=list(self.engine.models),
                    now=self.clock(),
                )
                await uow.commit()
        except (SQLAlchemyError, OSError):
            logger.exception("worker %s could not announce itself", self.worker_id)

    async def _beat(self, state: str, job_id: int | None) -> None:
        try:
            async with self.db.uow() as uow:
                await uow.workers.beat(self.worker_id, state, job_id, self.clock())
                await uow.commit()
        except (SQLAlchemyError, OSError):
            logger.exception("worker %s could not record its state", self.worker_id)

    async def run_once(self) -> bool:
        """Claim one job and run it; False when nothing was waiting."""
        claimed = await self.claim()
        if claimed is None:
            return False
        job, lease = claimed
        self.events.publish(JobClaimed(job.id, self.worker_id, lease.attempt))
        await self.execute(job, lease)
        return True

    async def execute(self, job: JobRecord, lease: Lease) -> JobStatus | None:
        """Run a claimed job to its end; None when the lease was lost and nothing was recorded."""
        outcome = await self._render(job, lease)
        if isinstance(outcome, _Rendered):
            return await self._complete(job, lease, outcome)
        return outcome

    async def _render(self, job: JobRecord, lease: Lease) -> _Rendered | JobStatus | None:
        """Run the pipeline; a cancel or failure is recorded here, a success is left to complete."""
        state = _RunState()
        loop = asyncio.get_running_loop()

        def on_step(progress: StepProgress) -> None:  # runs in the pipeline thread
            if state.stop.is_set():
                raise RenderCancelled
            now = time.monotonic()
            state.last_step_at = now
            state.done = progress.step / max(1, progress.total)
            preview = None
            if now - state.last_preview_at >= self.config.preview_interval:
                state.last_preview_at = now
                preview = _png(progress.preview())
            event = JobProgress(job.id, progress.step, progress.total, preview)
            loop.call_soon_threadsafe(self.events.publish, event)

        heartbeat = asyncio.create_task(self._heartbeat(lease, state), name=f"heartbeat-{job.id}")
        started = time.perf_counter()
        try:
            init_image = await load_init_image(self.db, self.store, job)
            spec = spec_for_job(job, init_image)
            images = await self.engine.render_async(spec, on_step)
        except asyncio.CancelledError:
            # Shutting down mid-job: the pipeline thread stops at its next step, and the job
            # goes back to the queue at once instead of waiting out its lease.
            state.stop.set()
            await asyncio.shield(self._release(job, lease))
            raise
        except RenderCancelled:
            if state.lease_lost:
                logger.warning("job %s: lost its lease mid-run; another worker owns it", job.id)
                return None
            return await self._end(
                job, lease, JobStatus.CANCELLED, "cancelled on request", 1 - state.done
            )
        except (EngineBusy, EngineRefusedKey, ContentRefused) as trouble:
            return await self._api_trouble(job, lease, trouble)
        except Exception as error:
            logger.exception("job %s failed", job.id)
            reason = f"{type(error).__name__}: {error}"
            return await self._end(job, lease, JobStatus.FAILED, reason, 1.0)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        return _Rendered(images, time.perf_counter() - started)

    async def _heartbeat(self, lease: Lease, state: _RunState) -> None:
        """Renew the lease while steps keep coming; stop the render if it was lost or cancelled.

        A render that stops making steps stops renewing, so its lease runs out and the job
        goes back to the queue.
        """
        interval = min(self.config.lease_seconds / 3, self.config.heartbeat_interval)
        renewed_at = time.monotonic()
        while not state.stop.is_set():
            await asyncio.sleep(interval)
            if state.last_step_at <= renewed_at:
                continue
            async with self.db.uow() as uow:
                now = self.clock()
                renewal = await uow.queue.renew(lease, self.config.lease_seconds, now)
                await uow.workers.beat(self.worker_id, "busy", lease.job_id, now)
                await uow.commit()
            renewed_at = time.monotonic()
            if not renewal.held:
                state.lease_lost = True
                state.stop.set()
            elif renewal.cancel_requested:
                state.stop.set()

    async def _release(self, job: JobRecord, lease: Lease) -> None:
        try:
            async with self.db.uow() as uow:
                released = await uow.queue.release(lease)
                await uow.commit()
        except (SQLAlchemyError, OSError):
            logger.exception("job %s: could not release it; it returns after its lease", job.id)
            return
        if released:
            logger.info("job %s: released back to the queue", job.id)

    async def _end(
        self, job: JobRecord, lease: Lease, status: JobStatus, error: str, unrun: float
    ) -> JobStatus | None:
        """Record a cancel or failure; the ``unrun`` part of its cost goes back to the user."""
        async with self.db.uow() as uow:
            ended = await uow.queue.finish(lease, status, self.clock(), unrun=unrun, error=error)
            await uow.commit()
        if not ended:
            logger.warning("job %s: lease lost before it could be marked %s", job.id, status)
            return None
        event = JobCancelled(job.id) if status is JobStatus.CANCELLED else JobFailed(job.id, error)
        self.events.publish(event)
        return status

    async def _complete(
        self, job: JobRecord, lease: Lease, rendered: _Rendered
    ) -> JobStatus | None:
        images, gpu_seconds = rendered.images, rendered.gpu_seconds
        runtime_for = getattr(self.engine, "runtime_for", None)
        runtime = runtime_for(job.model_id) if runtime_for else self.engine.runtime
        ran = dataclasses.replace(
            job,
            dtype=runtime.dtype,
            device_kind=runtime.device_kind,
            torch_threads=runtime.torch_threads,
            library_versions=runtime.library_versions,
        )
        new_images = await asyncio.to_thread(self._write_files, ran, lease.attempt, images)
        now = self.clock()
        async with self.db.uow() as uow:
            completed = await uow.queue.finish(
                lease,
                JobStatus.SUCCEEDED,
                now,
                dtype=ran.dtype,
                device_kind=ran.device_kind,
                torch_threads=ran.torch_threads,
                library_versions=ran.library_versions,
                engine_details=images[0].info.get("engine_details", {}) if images else {},
                gpu_seconds=gpu_seconds,
                error=None,
            )
            if completed:
                await uow.images.add_many(job.id, new_images)
                for image in new_images:
                    if image.flagged:
                        await uow.events.add(
                            kind=EventKind.IMAGE_FLAGGED,
                            actor_id=None,
                            guild_id=job.guild_id,
                            target_user_id=job.user_id,
                            job_id=job.id,
                            reason=f"flagged by the safety check ({self._checker_name})",
                            details={"index": image.index, "scores": image.scores},
                            created_at=now,
                        )
                await uow.usage.charge(
                    job.user_id,
                    now.date(),
                    images=len(new_images),
                    cost=job.cost,
                    gpu_seconds=gpu_seconds,
                )
                await uow.commit()
        if not completed:
            # Fenced out: another worker owns the job now. Our files are ours alone; remove them.
            logger.warning("job %s: completion refused, the lease was lost; discarding", job.id)
            self.store.delete_tree(attempt_prefix(job.id, lease.attempt))
            return None
        self.events.publish(JobSucceeded(job.id))
        logger.info("job %s done in %.2f s", job.id, gpu_seconds)
        return JobStatus.SUCCEEDED

    def _write_files(
        self, job: JobRecord, attempt: int, images: list[Image.Image]
    ) -> list[NewImage]:
        model = self.engine.models.get(job.model_id)
        name = model.name if model else job.model_id
        check = self.checker is not None and self.safety.for_guild(job.guild_id) != "off"
        written = []
        for index, image in enumerate(images):
            scores = self.checker.scores(image) if check and self.checker else {}
            key = self.store.put(
                image_key(job.id, attempt, index), encode_png(image, job, index, name)
            )
            written.append(
                NewImage(
                    index=index,
                    seed=job.seed + index,
                    sha256=pixel_sha256(image),
                    path=key,
                    width=image.width,
                    height=image.height,
                    scores=scores,
                    flagged=self.safety.flagged(scores),
                )
            )
        self.store.put(grid_key(job.id, attempt), encode_png(make_grid(images), job, None, name))
        return written


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
